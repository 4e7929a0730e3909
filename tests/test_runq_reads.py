"""Reads off the dispatch loop (issue 10): they never commit, and a stalled reader never
stalls dispatch.  The coordinator, store, server and reader are the real ones, on SQLite."""
import threading
import time

import pytest

from simx import protocol
from simx.client import Link, handshake
from simx.config import BatchDefaults, RunqConfig
from runq import startup
from runq.queries import Facts, Queries
from runq.reader import ReaderThread
from runq.server import Server
from runq.store import SqlStore
from procs import wait_until
from test_coordinator import MEMORY, Harness, start


def test_a_read_between_two_writes_does_not_commit(tmp_path):
    h = Harness(MEMORY)
    h.open("client", "client")
    before = h.store.commits
    h.coord.handle("client", protocol.message("StartBatch", name="a", engine="dummy", n_runs=2, param={}), h.now)
    assert h.store.pending()
    out = h.coord.handle("client", protocol.message("BatchList"), h.now)   # the reader's, after the commit
    assert not out and [m["type"] for _, m in out.reads] == ["BatchList"]
    assert h.store.commits == before and h.store.pending(), "a read committed the turn's writes"
    assert h.read(out.reads[0][1])["batches"] == [], "a read saw writes not yet committed"
    h.coord.handle("client", protocol.message("StartBatch", name="b", engine="dummy", n_runs=2, param={}), h.now)
    h.store.commit()
    assert h.store.commits == before + 1, "one commit for the turn, whatever reads came between its writes"
    assert [b["name"] for b in h.request("BatchList")["batches"]] == ["a", "b"]


def test_the_read_store_cannot_write(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    with pytest.raises(AttributeError):   # it has no writes at all
        store.reader().update_worker({"id": 1, "state": "idle"})


class Stoppable:
    """The real queries, behind a gate the test holds shut (a reader stopped or stuck on a big page)."""

    def __init__(self, queries):
        self.queries, self.handlers = queries, queries.handlers
        self.gate, self.entered = threading.Event(), threading.Event()

    def handle(self, msg, now):
        self.entered.set()
        assert self.gate.wait(30), "the test never let the reader go on"
        return self.queries.handle(msg, now)


@pytest.fixture
def live(tmp_path):
    """runq's server, coordinator and reader in this process, looping on a thread, on a real port."""
    store = SqlStore(f"sqlite:///{tmp_path / 'runq.sqlite'}")
    coord = startup.coordinator(store, RunqConfig(heartbeat_interval=10, lease=30, grace=60), BatchDefaults(),
                        now=time.time())   # the server ticks on the real clock
    queries = Stoppable(Queries(store.reader(), Facts(coord.presence)))
    server = Server(coord, store, [("127.0.0.1", 0)], reader=ReaderThread(queries))
    stop = threading.Event()
    errors = []

    def loop():
        try:
            while not stop.is_set():
                server.step(0.02)
        except Exception as exc:   # surfaces in the test
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield server.addresses[0][1], queries
    queries.gate.set()
    stop.set()
    thread.join(5)
    server.close()
    store.close()
    assert not errors, errors


def connect(port, role):
    link = Link.connect("127.0.0.1", port, timeout=10)
    handshake(link, role)
    return link


def test_with_the_reader_stopped_an_assignment_still_goes_out(live):
    port, queries = live
    watcher = connect(port, "client")
    watcher.send(protocol.message("BatchList"))          # the reader takes it, and stops there
    assert queries.entered.wait(10)
    worker = connect(port, "worker")
    worker.send(protocol.message("WorkerReady", host="h", pid=1, group="", user="", engine="dummy",
                                 cost=1.0, speed=1.0, priority=0.0))
    assert worker.recv()["type"] == "RunqAcceptWorker"
    submitter = connect(port, "client")
    submitter.send(protocol.message("StartBatch", name="b", engine="dummy", n_runs=1, param={}))
    assert submitter.recv()["status"] == "ok"
    assign = worker.recv()
    assert assign["type"] == "RunqAssignRun" and (assign["batch_id"], assign["batch_index"]) == (1, 0)
    assert not queries.gate.is_set()                     # all of it while the reader was stopped
    queries.gate.set()
    assert [b["id"] for b in watcher.recv()["batches"]] in ([], [1])   # the stalled read is answered
    watcher.send(protocol.message("BatchStatus", batch_id=1, limit=0))
    assert watcher.recv()["batch"]["n_running"] == 1


def test_replies_keep_the_order_of_pipelined_requests(live):
    """A read waits with the reader; the change sent after it on the same connection is not
    answered before it, and the read after a change sees that change."""
    port, queries = live
    queries.gate.set()
    client = connect(port, "client")
    client.send(protocol.message("BatchList"))
    client.send(protocol.message("StartBatch", name="b", engine="dummy", n_runs=3, param={}))
    client.send(protocol.message("BatchStatus", batch_id=1, limit=0))
    client.send(protocol.message("Ping"))
    replies = [client.recv() for _ in range(4)]
    assert "batches" in replies[0] and replies[1]["batch_id"] == 1
    assert replies[2]["batch"]["n_waiting"] == 3 and "runq" in replies[3]


def test_a_failing_read_is_an_error_reply_not_the_end_of_runq(live):
    port, queries = live
    queries.gate.set()
    client = connect(port, "client")
    client.send(protocol.message("BatchStatus", batch_id=7))
    assert client.recv()["code"] == 404
    client.send(protocol.message("BatchList", limit=20_000))
    assert client.recv()["code"] == 400
    client.send(protocol.message("Ping"))
    wait_until(lambda: client.recv()["status"] == "ok")


def reader_pid(runq_pid: int) -> int:
    """runq's reader process: its only child."""
    children = open(f"/proc/{runq_pid}/task/{runq_pid}/children").read().split()
    assert len(children) == 1, children
    return int(children[0])


def test_with_the_reader_process_stopped_runq_still_dispatches(tmp_path):
    """The real `python -m runq`: SIGSTOP its reader process; a read waits, an assignment and
    the reply to a StartBatch go out at once; SIGCONT and the read is answered."""
    import os
    import signal

    from procs import start_runq
    runq = start_runq(tmp_path)
    reader = reader_pid(runq.pid)
    try:
        port = runq.port
        watcher = connect(port, "client")
        watcher.send(protocol.message("BatchList"))
        assert "batches" in watcher.recv()                  # the reader answers while it runs
        os.kill(reader, signal.SIGSTOP)
        watcher.send(protocol.message("BatchList"))         # waits with the stopped reader
        worker = connect(port, "worker")
        worker.send(protocol.message("WorkerReady", host="h", pid=1, group="", user="", engine="dummy",
                                     cost=1.0, speed=1.0, priority=0.0))
        assert worker.recv()["type"] == "RunqAcceptWorker"
        submitter = connect(port, "client")
        submitter.send(protocol.message("StartBatch", name="b", engine="dummy", n_runs=1, param={}))
        assert submitter.recv()["status"] == "ok"
        assign = worker.recv()
        assert assign["type"] == "RunqAssignRun" and assign["batch_id"] == 1
        submitter.send(protocol.message("Ping"))            # answered on the loop, from memory
        assert submitter.recv()["runq"]["runs_in_flight"] == 1
        os.kill(reader, signal.SIGCONT)
        assert [b["id"] for b in watcher.recv()["batches"]] == [1]
        watcher.send(protocol.message("WorkerStatus", worker_id=1))
        view = watcher.recv()["worker"]
        assert view["connected"] is True and view["state"] == "busy"
        watcher.send(protocol.message("BatchList"))
        assert watcher.recv()["batches"][0]["served"] is True   # from the copy the loop sends
    finally:
        os.kill(reader, signal.SIGCONT)
        runq.stop()
    assert not os.path.exists(f"/proc/{reader}") or open(f"/proc/{reader}/stat").read().split()[2] == "Z"
