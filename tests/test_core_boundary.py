"""The core is sans-I/O: its modules import no database, socket or clock module and open no
files; it runs with no database and no filesystem (the in-memory store, no files port)."""
import ast
import pathlib

from simx import auth, protocol
from simx.config import RunqConfig
from runq.core.coordinator import Coordinator
from runq.core.recovery import Start
from runq.store import MemoryStore

CORE = pathlib.Path(__file__).resolve().parent.parent / "runq" / "core"
FORBIDDEN = {"dataset", "sqlalchemy", "sqlite3", "socket", "selectors", "time", "os", "pathlib", "shutil",
             "subprocess", "threading", "io"}


def imported(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 2:   # runq's shell, from inside the core
            names |= {f"runq.{node.module or a.name}" for a in node.names}
    return names


def calls_open(path: pathlib.Path) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
               for n in ast.walk(ast.parse(path.read_text())))


def test_core_modules_import_no_io_and_open_no_files():
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) > 10
    for path in modules:
        bad = imported(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {bad}"
        shell = {m for m in imported(path) if m.startswith("runq.") and m != "runq.views"}
        assert not shell, f"{path.name} imports runq's shell: {shell}"
        assert not calls_open(path), f"{path.name} opens a file"


def test_no_core_module_is_over_400_lines():
    for path in CORE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


class World:
    """The coordinator with no database and no filesystem, driven by hand."""

    def __init__(self):
        self.store = MemoryStore()
        self.start = Start(instance="i")
        self.now = 100.0
        self.coord = Coordinator(self.store, self.start, RunqConfig(heartbeat_interval=10, lease=30, grace=60),
                                 now=self.now, files=None)
        self.out = []

    def say(self, conn, mtype, **fields):
        out = self.coord.handle(conn, protocol.message(mtype, **fields), self.now)
        self.out += out
        return out

    def open(self, conn, role):
        self.coord.connected(conn, "127.0.0.1", self.now)
        challenge = self.say(conn, "Hello", version=protocol.VERSION, role=role, nonce=auth.new_nonce())[0][1]
        assert self.say(conn, "Auth", proof=None) == []
        return challenge

    def hello(self, conn, back=None):
        """A worker registers (WorkerReady) or, with back=(accepted, assignment), comes back
        proving its identity and claiming that run."""
        challenge = self.open(conn, "worker")
        traits = dict(host="h", pid=1, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0)
        if back is None:
            return self.say(conn, "WorkerReady", **traits)[0][1]
        accepted, a = back
        wid = accepted["worker_id"]
        return self.say(conn, "WorkerReconnect", worker_id=wid,
                        proof=auth.reconnect_proof(accepted["key"], wid, challenge["nonce"]),
                        batch_id=a["batch_id"], batch_index=a["batch_index"], attempt=a["attempt"], **traits)[0][1]

    def assignments(self, conn):
        return [m for c, m in self.out if c == conn and m and m["type"] == "RunqAssignRun"]

    def finish(self, conn, wid, a):
        out = self.say(conn, "WorkerFinishedRun", worker_id=wid, batch_id=a["batch_id"],
                       batch_index=a["batch_index"], attempt=a["attempt"], data={"n": a["batch_index"]})
        assert [m["type"] for _, m in out][0] == "RunqAck" and out[0][1]["accepted"]


def test_a_batch_from_submit_to_done_with_a_worker_death_and_a_reconnect_on_memory():
    w = World()
    w.open("client", "client")
    reply = w.say("client", "StartBatch", name="b", group="", user="", engine="dummy", n_runs=4, param={})[-1][1]
    assert reply["message"] == "batch started" and reply["batch"]["n_waiting"] == 4
    w1, w2 = w.hello("w1"), w.hello("w2")
    a1, a2 = w.assignments("w1")[-1], w.assignments("w2")[-1]
    # w1 dies holding its run; w2's connection drops and it comes back in time, keeping its run
    w.coord.disconnected("w1", w.now)
    w.coord.disconnected("w2", w.now)
    w.now += 5
    assert w.hello("w2b", back=(w2, a2))["keep_run"] is True
    finished = set()

    def finish_all():
        while todo := [a for a in [a2] + w.assignments("w2b") if (a["batch_index"], a["attempt"]) not in finished]:
            finished.add((todo[0]["batch_index"], todo[0]["attempt"]))
            w.finish("w2b", w2["worker_id"], todo[0])
    finish_all()                                   # its run and the two never started
    assert len(finished) == 3 and 1 in w.coord.batches
    w.now += 61                                    # w1 is past its grace: its run goes back, to w2b
    w.out += w.coord.tick(w.now)
    finish_all()
    assert not w.coord.batches, "the batch ended"
    assert len(finished) == 4
    w.store.commit()
    row = w.store.batch_row(1)
    assert (row["state"], row["n_finished"], row["n_waiting"], row["n_running"]) == ("done", 4, 0, 0)
    assert [a["outcome"] for a in w.store.attempt_rows(1, a1["batch_index"])] == ["lost", "finished"]
    assert not any(m is not None and m["type"] == "RunqError" for _, m in w.out)


def test_runq_logs_no_line_per_run_at_info_and_a_summary_each_period(caplog):
    import logging
    w = World()
    w.open("client", "client")
    w.say("client", "StartBatch", name="b", group="", user="", engine="dummy", n_runs=3, param={})
    accepted = w.hello("w1")
    caplog.set_level(logging.INFO, logger="runq")
    caplog.clear()
    for _ in range(3):
        w.finish("w1", accepted["worker_id"], w.assignments("w1")[-1])
    w.now += 30
    w.out += w.coord.tick(w.now)
    per_run = [r for r in caplog.records if r.levelno >= logging.INFO and "run" in r.getMessage()
               and "batch 1 done" not in r.getMessage()]
    assert per_run == [], [r.getMessage() for r in per_run]
    w.now += 31                                     # the period (60 s) is over
    w.out += w.coord.tick(w.now)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runs ended")]
    assert lines == ["runs ended in the last 61s, engine dummy: 3 finished, 0 failed; 0 requeued; "
                     "0 batches active, 1 workers connected"]
    w.now += 60
    w.out += w.coord.tick(w.now)                    # nothing ended since: no line
    assert len([r for r in caplog.records if r.getMessage().startswith("runs ended")]) == 1


def test_no_module_of_the_programs_is_over_400_lines():
    """runq, runweb, worker and ops: one noun per module, each well under ~400 lines."""
    root = pathlib.Path(__file__).resolve().parent.parent
    long = {str(p.relative_to(root)): n for package in ("runq", "runweb", "worker", "ops")
            for p in (root / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}, long
