"""The coordinator driven without sockets, a database or files: messages in at time `now`,
an Output back.  The scenarios run on the in-memory store (runq/store/memory.py); the SQL
backends are proved once by tests/test_store_contract.py."""
import pytest

from simx import auth, protocol
from simx.config import BatchDefaults, RunqConfig
from runq import startup
from runq.core.errors import RunqError
from runq.queries import Facts, Queries
from runq.store import MemoryStore, SqlStore

CFG = RunqConfig(heartbeat_interval=10, lease=30, grace=60)
MEMORY = None   # Harness(MEMORY): the in-memory store


class Harness:
    """A coordinator over a store (memory, or SQL for a URL), its reads answered inline as the
    reader would, after each turn's commit."""

    def __init__(self, url=MEMORY, now=1000.0, cfg=CFG, files_dir=None, **kwargs):
        # no database and no filesystem unless the test asks for them: files in memory too
        files_dir = "memory" if files_dir is None and url is None else files_dir
        self.url, self.now, self.cfg, self.files_dir, self.kwargs = url, now, cfg, files_dir, kwargs
        self.store = MemoryStore() if url is None else SqlStore(url)
        self._build()
        self.sent = []
        self.keys = {}        # worker id -> key runq gave it
        self.opened = {}      # conn -> runq's RunqChallenge

    def _build(self):
        self.coord = startup.coordinator(self.store, self.cfg, self.kwargs.get("batch_defaults", BatchDefaults()),
                                         now=self.now, files_dir=self.files_dir,
                                         **{k: v for k, v in self.kwargs.items() if k != "batch_defaults"})

    def open(self, conn, role="worker", secret=None):
        """Connect and authenticate `conn` (Hello, RunqChallenge, Auth); runq's challenge."""
        self._run(self.coord.connected(conn, "127.0.0.1", self.now))
        nonce = auth.new_nonce()
        out = self.send(conn, "Hello", version=protocol.VERSION, role=role, nonce=nonce)
        challenge = out[0][1]
        assert challenge["type"] == "RunqChallenge", out
        proof = auth.peer_proof(secret, role, challenge["nonce"], nonce) if secret else None
        assert self.send(conn, "Auth", proof=proof) == []
        self.opened[conn] = challenge
        return challenge

    def heartbeat(self, conn, wid, *held):
        """A heartbeat having seen every assignment so far, computing the runs `held` (assignments)."""
        seq = max([m["seq"] for m in self.to(conn, "RunqAssignRun")] or [0])
        runs = [[a["batch_id"], a["batch_index"], a["attempt"]] for a in held]
        return self.send(conn, "WorkerHeartbeat", worker_id=wid, seq=seq, runs=runs)

    def _run(self, out):
        """Commit, as the shell does after a turn; then the reads, answered from committed rows."""
        pending = self.store.pending()
        self.store.commit()
        if pending:
            self.coord.committed(0.0, self.store.take_purged())
        out = list(out) + [(conn, self.read(msg)) for conn, msg in out.reads]
        self.sent += out
        return out

    def read(self, msg):
        if getattr(self, "_queries_of", None) is not self.coord:   # a test may build its own coordinator
            self._queries_of = self.coord
            self.queries = Queries(self.store.reader(), Facts(self.coord.presence), files=self.coord.files)
        try:
            return self.queries.handle(msg, self.now)
        except RunqError as exc:
            return protocol.reply("error", exc.code, str(exc))

    def request(self, mtype, **fields):
        if "client" not in self.opened:
            self.open("client", "client")
        out = self._run(self.coord.handle("client", protocol.message(mtype, **fields), self.now))
        assert out[-1][0] == "client"
        return out[-1][1]

    def worker(self, conn, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0):
        self.open(conn)
        out = self.send(conn, "WorkerReady", host="h-" + conn, pid=1, group=group, user=user, engine=engine,
                        cost=cost, speed=speed, priority=priority)
        assert out[0][1]["type"] == "RunqAcceptWorker"
        self.keys[out[0][1]["worker_id"]] = out[0][1]["key"]
        return out[0][1]["worker_id"]

    def reconnect(self, conn, wid, claim=None, proof=None):
        """A worker back on a new connection, claiming the run of `claim` (an assignment) or none."""
        challenge = self.open(conn)
        run = {k: claim[k] for k in ("batch_id", "batch_index", "attempt")} if claim else {}
        if proof is None and wid in self.keys:
            proof = auth.reconnect_proof(self.keys[wid], wid, challenge["nonce"])
        out = self.send(conn, "WorkerReconnect", worker_id=wid, host="h", pid=1, group="", user="", engine="dummy",
                        cost=1.0, speed=1.0, priority=0.0, proof=proof, **run)
        assert out[0][1]["type"] == "RunqAcceptWorker"
        if out[0][1]["key"] is not None:
            self.keys[out[0][1]["worker_id"]] = out[0][1]["key"]
        return out[0][1]

    def send(self, conn, mtype, **fields):
        return self._run(self.coord.handle(conn, protocol.message(mtype, **fields), self.now))

    def to(self, conn, mtype=None):
        return [m for c, m in self.sent if c == conn and m is not None and (mtype is None or m["type"] == mtype)]

    def assigned(self, conn):
        return self.to(conn, "RunqAssignRun")

    def report(self, conn, wid, assign, mtype="WorkerFinishedRun", **extra):
        key = {k: assign[k] for k in ("batch_id", "batch_index", "attempt")}
        if mtype == "WorkerFinishedRun":
            extra.setdefault("data", "ok")
        if mtype == "WorkerFailedRun":
            extra.setdefault("message", "boom")
        return self.send(conn, mtype, worker_id=wid, **key, **extra)

    def tick(self, dt):
        self.now += dt
        return self._run(self.coord.tick(self.now))

    def batch(self, batch_id=1):
        return self.request("BatchStatus", batch_id=batch_id)

    def restart(self):
        """runq dies (everything committed so far survives, the rest is lost) and starts again."""
        self.store.commit()
        if isinstance(self.store, SqlStore):
            self.store.db.close()
            self.store = SqlStore(self.url)
        self._build()
        self.opened.clear()

    def close(self):
        if isinstance(self.store, SqlStore):
            self.store.db.close()


@pytest.fixture
def h():
    return Harness(MEMORY)


def start(h, n_runs=3, **fields):
    fields.setdefault("engine", "dummy")
    fields.setdefault("param", {"step_count": 0})
    reply = h.request("StartBatch", name="b", group=fields.pop("group", ""), user=fields.pop("user", ""),
                      n_runs=n_runs, **fields)
    assert reply["status"] == "ok", reply
    return reply["batch_id"]


def test_runs_spread_over_idle_workers_and_batch_finishes(h):
    wids = {c: h.worker(c) for c in ("w1", "w2", "w3")}
    start(h, 3)
    for conn, wid in wids.items():
        (assign,) = h.assigned(conn)
        assert h.report(conn, wid, assign)[-1][1] == protocol.message(
            "RunqAck", accepted=True, batch_id=1, batch_index=assign["batch_index"], attempt=1)
    batch = h.batch()["batch"]
    assert (batch["state"], batch["n_finished"], batch["n_complete"]) == ("done", 3, 3)
    assert batch["execution_time"] is not None


def test_submit_of_a_million_runs_writes_one_row_and_lists_every_run(h):
    start(h, 1_000_000)
    assert h.store.reader().run_rows(1, 0, 1_000_000) == []
    status = h.request("BatchStatus", batch_id=1, offset=999_998, limit=10)
    assert [r["batch_index"] for r in status["runs"]] == [999_998, 999_999]
    assert status["runs"][0]["state"] == "waiting" and status["next_offset"] is None
    assert h.batch()["batch"]["n_waiting"] == 1_000_000


def test_runs_taken_in_submission_order(h):
    start(h, 2)
    start(h, 2)
    wid = h.worker("w")
    got = []
    for _ in range(4):
        a = h.assigned("w")[-1]
        got.append((a["batch_id"], a["batch_index"]))
        h.report("w", wid, a)
    assert got == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_engine_failure_retried_then_failed_with_message(h):
    wid = h.worker("w")
    start(h, 1, max_attempts=2)
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", message="first")
    h.tick(0.5)
    assert len(h.assigned("w")) == 1            # a transient failure waits out its backoff (1 s) first
    h.tick(0.5)
    second = h.assigned("w")[-1]
    assert second["attempt"] == 2
    h.report("w", wid, second, "WorkerFailedRun", message="division by zero", traceback="tb")
    run = h.request("RunStatus", batch_id=1, batch_index=0)["run"]
    assert (run["state"], run["error"]) == ("failed", "division by zero")
    assert [a["outcome"] for a in run["attempts"]] == ["failed", "failed"]
    batch = h.batch()["batch"]
    assert (batch["state"], batch["n_failed"], batch["n_complete"]) == ("failed", 1, 0)


def test_run_requeued_when_worker_disconnects_past_grace(h):
    w1 = h.worker("w1")
    start(h, 1)
    first = h.assigned("w1")[-1]
    h._run(h.coord.disconnected("w1", h.now))
    h.tick(59)
    assert h.batch()["batch"]["n_running"] == 1      # still within grace
    w2 = h.worker("w2")
    h.tick(2)
    second = h.assigned("w2")[-1]
    assert (second["batch_index"], second["attempt"]) == (0, 2)
    # the first worker comes back late and reports: rejected, not counted
    assert h.reconnect("w1b", w1, first)["keep_run"] is False
    assert h.report("w1b", w1, first)[-1][1]["accepted"] is False
    h.report("w2", w2, second)
    batch = h.batch()["batch"]
    assert (batch["n_finished"], batch["state"]) == (1, "done")
    outcomes = [a["outcome"] for a in h.request("RunStatus", batch_id=1, batch_index=0)["run"]["attempts"]]
    assert outcomes == ["lost", "finished"]


def test_worker_reconnecting_within_grace_keeps_its_run(h):
    wid = h.worker("w1")
    start(h, 1)
    a = h.assigned("w1")[-1]
    h._run(h.coord.disconnected("w1", h.now))
    h.tick(30)
    assert h.reconnect("w1b", wid, a)["keep_run"] is True
    for _ in range(10):   # well past grace: no effect, it is connected and heartbeats
        h.tick(10)
        h.heartbeat("w1b", wid, a)
    h.report("w1b", wid, a)
    assert h.batch()["batch"]["n_finished"] == 1


def test_silent_worker_loses_its_lease_and_late_result_is_rejected(h):
    w1 = h.worker("w1")
    start(h, 1)
    first = h.assigned("w1")[-1]
    w2 = h.worker("w2")
    h.tick(31)
    assert h.to("w1", "RunqAbortRun")
    second = h.assigned("w2")[-1]
    assert second["attempt"] == 2
    assert h.report("w1", w1, first)[-1][1]["accepted"] is False
    h.report("w2", w2, second)
    assert h.batch()["batch"]["n_finished"] == 1


def test_worker_cut_off_for_silence_loses_its_run_at_the_lease_and_its_late_result_is_refused(h):
    """A cut network: runq closes the silent connection (worker_idle_factor heartbeats, here
    just before the lease ends); the lease still runs, so the run is requeued at the lease, not
    after the grace.  The worker comes back within grace with its result: refused as stale, not
    counted; the run is finished once, by the next attempt, and the worker is idle again."""
    w1 = h.worker("w1")
    start(h, 1)
    first = h.assigned("w1")[-1]
    w2 = h.worker("w2")
    h.now += 29
    h._run(h.coord.disconnected("w1", h.now, silent=True))
    h.tick(0.5)
    assert h.assigned("w2") == []                      # t+29.5: within the lease
    h.tick(1)                                          # t+30.5: the lease ran out (the grace has not)
    second = h.assigned("w2")[-1]
    assert (second["batch_index"], second["attempt"]) == (0, 2)
    (gone,) = [w for w in h.request("WorkerList")["workers"] if w["id"] == w1]
    assert (gone["state"], gone["connected"], gone["batch_id"]) == ("disconnected", False, None)
    h.tick(10)                                         # back within grace, with its finished run
    assert h.reconnect("w1b", w1, first)["keep_run"] is False
    ack = h.report("w1b", w1, first)[-1][1]
    assert (ack["type"], ack["accepted"], ack["message"]) == ("RunqAck", False, "stale attempt")
    h.report("w2", w2, second)
    batch = h.batch()["batch"]
    assert (batch["state"], batch["n_finished"]) == ("done", 1)
    run = h.request("RunStatus", batch_id=1, batch_index=0)["run"]
    assert [(a["attempt"], a["worker_id"], a["outcome"]) for a in run["attempts"]] == [(1, w1, "lost"),
                                                                                         (2, w2, "finished")]
    assert run["attempts"][0]["message"] == "worker lease expired"
    (back,) = [w for w in h.request("WorkerList")["workers"] if w["id"] == w1]
    assert (back["state"], back["connected"]) == ("idle", True)
    start(h, 2)                                        # and it is given work again
    assert h.assigned("w1b")


def test_worker_whose_connection_closed_keeps_its_run_past_the_lease_within_grace(h):
    """A connection the worker's side closed (not cut for silence) is judged by the grace alone."""
    wid = h.worker("w1")
    start(h, 1)
    a = h.assigned("w1")[-1]
    h.now += 29
    h._run(h.coord.disconnected("w1", h.now))
    h.tick(20)                                         # t+49: the lease would have run out
    assert h.batch()["batch"]["n_running"] == 1
    assert h.reconnect("w1b", wid, a)["keep_run"] is True
    assert h.report("w1b", wid, a)[-1][1]["accepted"] is True
    assert h.batch()["batch"]["n_finished"] == 1


def test_restart_readopts_running_runs_and_duplicate_report_counts_once(h):
    wids = {c: h.worker(c) for c in ("w1", "w2")}
    start(h, 3)
    first = {c: h.assigned(c)[-1] for c in wids}
    h.report("w1", wids["w1"], first["w1"])   # committed; runq "dies" before w1 reads the ack
    h.restart()
    status = h.batch()["batch"]
    assert (status["n_finished"], status["n_running"], status["n_waiting"]) == (1, 2, 0)
    # w1 never saw the ack nor its next assignment: it claims no run and re-sends its report;
    # w2 is still computing its run and keeps it.
    h.reconnect("w1b", wids["w1"])
    assert h.report("w1b", wids["w1"], first["w1"])[-1][1]["accepted"] is True
    assert h.reconnect("w2b", wids["w2"], first["w2"])["keep_run"] is True
    h.report("w2b", wids["w2"], first["w2"])
    for conn in ("w1b", "w2b"):
        for a in h.assigned(conn):
            h.report(conn, wids[conn[:2]], a)
    status = h.batch()["batch"]
    assert (status["state"], status["n_finished"]) == ("done", 3)
    attempts = h.request("RunStatus", batch_id=1, batch_index=2)["run"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["lost", "finished"]


def test_restart_requeues_runs_of_workers_not_back_within_grace(h):
    h.worker("w1")
    start(h, 1)
    h.restart()
    h.tick(61)
    w2 = h.worker("w2")
    a = h.assigned("w2")[-1]
    assert a["attempt"] == 2
    h.report("w2", w2, a)
    run = h.request("RunStatus", batch_id=1, batch_index=0)["run"]
    assert [x["outcome"] for x in run["attempts"]] == ["lost", "finished"]


def test_cancel_batch_aborts_running_and_cancels_waiting_across_restart(h):
    wid = h.worker("w1")
    start(h, 5)
    a = h.assigned("w1")[-1]
    reply = h.request("CancelBatch", batch_id=1)
    assert reply["batch"]["state"] == "cancelled"
    assert reply["batch"]["n_cancelled"] == 5
    assert h.to("w1", "RunqAbortRun")[-1]["batch_index"] == a["batch_index"]
    assert h.report("w1", wid, a, "WorkerAbortedRun")[-1][1]["accepted"] is False
    assert len(h.assigned("w1")) == 1                      # nothing else started
    assert h.request("CancelBatch", batch_id=1)["status"] == "ok"   # idempotent
    h.restart()
    w2 = h.worker("w2")
    assert h.assigned("w2") == []
    runs = h.batch()["runs"]
    assert {r["state"] for r in runs} == {"cancelled"}
    assert w2


def test_cancel_one_waiting_run_and_it_never_starts(h):
    start(h, 3)
    assert h.request("CancelRun", batch_id=1, batch_index=1)["run"]["state"] == "cancelled"
    h.restart()
    wid = h.worker("w")
    got = []
    while h.assigned("w")[len(got):]:
        a = h.assigned("w")[len(got)]
        got.append(a["batch_index"])
        h.report("w", wid, a)
    assert got == [0, 2]
    batch = h.batch()["batch"]
    assert (batch["state"], batch["n_finished"], batch["n_cancelled"]) == ("done", 2, 1)


def test_time_limit_aborts_and_counts_as_failure(h):
    wid = h.worker("w")
    start(h, 1, time_limit=5.0, max_attempts=1)
    a = h.assigned("w")[-1]
    h.tick(6)
    assert h.to("w", "RunqAbortRun")[-1]["reason"].startswith("time limit")
    h.report("w", wid, a, "WorkerAbortedRun")
    run = h.request("RunStatus", batch_id=1, batch_index=0)["run"]
    assert run["state"] == "failed" and [x["outcome"] for x in run["attempts"]] == ["timeout"]


def test_lost_too_often_fails_the_run(h):
    start(h, 1, max_requeues=2)
    for i in range(3):
        wid = h.worker(f"w{i}")
        a = h.assigned(f"w{i}")[-1]
        h.report(f"w{i}", wid, a, "WorkerStoppedRun")
    run = h.request("RunStatus", batch_id=1, batch_index=0)["run"]
    assert run["state"] == "failed" and "lost too often" in run["error"]


def test_stopped_worker_gets_no_new_run(h):
    wid = h.worker("w")
    start(h, 2)
    h.report("w", wid, h.assigned("w")[-1], "WorkerStoppedRun")
    assert len(h.assigned("w")) == 1
    assert h.request("WorkerList")["workers"][0]["state"] == "draining"


def test_idempotency_key_gives_one_batch(h):
    one = h.request("StartBatch", name="x", engine="dummy", n_runs=2, param={}, idempotency_key="k1")
    two = h.request("StartBatch", name="x", engine="dummy", n_runs=2, param={}, idempotency_key="k1")
    assert (one["batch_id"], one["created"], two["batch_id"], two["created"]) == (1, True, 1, False)
    assert len(h.request("BatchList")["batches"]) == 1


def test_unknown_worker_message_is_refused(h):
    h.open("x")
    out = h.send("x", "WorkerHeartbeat", worker_id=99, seq=0, runs=[])
    assert out[0][1]["type"] == "RunqError" and out[1] == ("x", None)


def test_bad_requests_name_the_problem(h):
    assert h.request("BatchStatus", batch_id=9)["code"] == 404
    assert "n_runs" in h.request("StartBatch", engine="dummy", n_runs=0)["message"]
    start(h, 2)
    assert h.request("RunStatus", batch_id=1, batch_index=2)["code"] == 404


def test_second_hello_on_one_connection_is_refused(h):
    h.worker("w")
    out = h.send("w", "WorkerReady", host="h", pid=2, group="", user="", engine="dummy", cost=1.0, speed=1.0,
                 priority=0.0)
    assert out[0][1]["type"] == "RunqError" and "already speaks for worker 1" in out[0][1]["message"]


def test_retention_purges_old_finished_batches_and_long_gone_workers(tmp_path):
    h = Harness(MEMORY, cfg=RunqConfig(lease=30, grace=60, retention_days=1))
    wid = h.worker("w")
    start(h, 1)
    h.report("w", wid, h.assigned("w")[-1])
    start(h, 1)                                    # still waiting: an active batch is never purged
    h._run(h.coord.disconnected("w", h.now))
    h.tick(3600)
    assert len(h.request("BatchList")["batches"]) == 2      # younger than a day: kept
    h.tick(86400)
    assert [b["id"] for b in h.request("BatchList")["batches"]] == [2]
    assert h.request("WorkerList")["workers"] == []
    assert h.request("BatchStatus", batch_id=1)["code"] == 404


def test_worker_back_with_a_stale_run_gets_no_new_one_until_it_lets_go(h):
    """runq took attempt 1 back (lost lease) and gave the worker attempt 2, which was lost with
    the connection; the worker reconnects still computing attempt 1: attempt 2 is requeued,
    the worker gets its accept and an abort, and nothing new until it lets go."""
    wid = h.worker("w")
    start(h, 2)
    stale = h.assigned("w")[-1]
    h.tick(31)                                         # lease lost: attempt 1 taken back
    assert h.assigned("w") == [stale]                  # aborting: nothing new yet
    h.heartbeat("w", wid)                              # let go
    given = h.assigned("w")[-1]
    assert (given["batch_index"], given["attempt"]) == (0, 2)
    h._run(h.coord.disconnected("w", h.now))
    h.sent.clear()
    h.reconnect("w2", wid, stale)
    kinds = [m["type"] for c, m in h.sent if c == "w2" and m["type"] != "RunqChallenge"]
    assert kinds == ["RunqAcceptWorker", "RunqAbortRun"]
    assert h.request("BatchStatus", batch_id=1)["batch"]["n_running"] == 0
    h.heartbeat("w2", wid)                             # it let go of the stale run
    assert h.assigned("w2")
