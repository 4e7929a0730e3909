"""runq as a real process on loopback: bad peers are cut off, everyone else is served."""
import math
import socket
import struct

from procs import start_runq, wait_until
from simx import protocol
from runq.core.output import Output
from simx.client import Link, RunqClient, handshake


def raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_reply(sock):
    link = Link(sock)
    return link.recv()


def closed(sock) -> bool:
    sock.settimeout(5)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True


def test_bad_peers_are_closed_and_others_keep_being_served(tmp_path):
    runq = start_runq(tmp_path)
    try:
        port = runq.port
        stalled = raw(port)
        stalled.sendall(struct.pack(">I", 100) + b'{"type":')          # half a frame, then silence
        garbage = raw(port)
        garbage.sendall(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")
        reply = read_reply(garbage)
        assert reply["status"] == "error" and "not UTF-8 JSON" in reply["message"]
        assert closed(garbage)
        huge = raw(port)
        huge.sendall(struct.pack(">I", protocol.MAX_FRAME + 1))
        assert "exceeds" in read_reply(huge)["message"]
        assert closed(huge)
        stranger = raw(port)
        stranger.sendall(protocol.encode(protocol.message("WorkerHeartbeat", worker_id=42, seq=0, runs=[])))
        error = read_reply(stranger)
        assert error["type"] == "RunqError" and "before authentication" in error["message"]
        assert closed(stranger)
        client = RunqClient(port=port)
        reply = client.request("StartBatch", name="名前 ✓", engine="dummy", n_runs=2, param={"ü": "ß"})
        status = client.request("BatchStatus", batch_id=reply["batch_id"])
        assert status["batch"]["name"] == "名前 ✓" and status["batch"]["param"] == {"ü": "ß"}
        stalled.close()
        log = runq.log()
        assert "sent a bad frame" in log and "WorkerHeartbeat before authentication" in log
    finally:
        runq.stop()


def test_restart_on_the_same_file_resumes_and_deleting_it_resets(tmp_path):
    runq = start_runq(tmp_path)
    port = runq.port
    try:
        RunqClient(port=port).request("StartBatch", name="keep", engine="dummy", n_runs=3)
    finally:
        assert runq.stop() == 0   # TERM: clean exit
    runq = start_runq(tmp_path, port=port)
    try:
        batches = RunqClient(port=port).request("BatchList")["batches"]
        assert [(b["name"], b["n_waiting"]) for b in batches] == [("keep", 3)]
        link = Link.connect("127.0.0.1", port)
        handshake(link, "worker")
        link.send(protocol.message("WorkerReady", host="h", pid=1, group="", user="", engine="dummy",
                                   cost=1.0, speed=1.0, priority=0.0))
        assert link.recv()["type"] == "RunqAcceptWorker"
        assert link.recv()["type"] == "RunqAssignRun"      # waiting runs go to workers as they come
        link.close()
    finally:
        runq.stop()
    (tmp_path / "runq.sqlite").unlink()
    runq = start_runq(tmp_path, port=port)
    try:
        assert RunqClient(port=port).request("BatchList")["batches"] == []
    finally:
        runq.stop()


def test_runq_on_postgresql_survives_sigkill(tmp_path, postgres):
    """Any SQLAlchemy URL: the same runq on PostgreSQL, killed and restarted."""
    import signal

    from procs import base_env, free_port
    port = free_port()
    env = base_env(tmp_path, port, SIMX_DB_URL=postgres.new_database())
    runq = start_runq(tmp_path, port=port, env=env)
    try:
        client = RunqClient(port=port)
        client.request("StartBatch", name="pg ✓", engine="dummy", n_runs=3, param={"k": "ü"})
        link = Link.connect("127.0.0.1", port)
        handshake(link, "worker")
        link.send(protocol.message("WorkerReady", host="h", pid=1, group="", user="", engine="dummy",
                                   cost=1.0, speed=1.0, priority=0.0))
        wid = link.recv()["worker_id"]
        run = link.recv()
        link.send(protocol.message("WorkerFinishedRun", worker_id=wid, batch_id=1, batch_index=run["batch_index"],
                                   attempt=run["attempt"], data={"flow": [1, 2]}))
        assert link.recv()["accepted"] is True
        runq.signal(signal.SIGKILL)
        runq.wait()
        link.close()
    finally:
        runq.stop()
    runq = start_runq(tmp_path, port=port, env=env, name="runq-again")
    try:
        status = RunqClient(port=port).request("BatchStatus", batch_id=1)
        assert status["batch"]["name"] == "pg ✓" and status["batch"]["n_finished"] == 1
        assert status["runs"][0]["result"] == {"flow": [1, 2]}
        assert [r["state"] for r in status["runs"]] == ["finished", "running", "waiting"]
    finally:
        runq.stop()


def test_workers_must_prove_the_worker_secret_when_one_is_set(tmp_path):
    from procs import base_env, free_port, make_secrets, start_worker, wait_until, workers_connected
    port = free_port()
    secrets = make_secrets(tmp_path)
    env = base_env(tmp_path, port, **secrets)
    runq = start_runq(tmp_path, port=port, env=env)
    other = tmp_path / "other.secret"
    other.write_text("0123456789abcdef" * 4 + "\n")
    other.chmod(0o600)
    wrong = start_worker(tmp_path, port, env=base_env(tmp_path, port, SIMX_WORKER_SECRET_FILE=other), name="wrong")
    right = start_worker(tmp_path, port, env=env, name="right")
    try:
        assert wrong.wait(20) == 2                      # a configuration error: no retry loop
        assert "runq refused this worker (401)" in wrong.log()
        wait_until(lambda: len(workers_connected(port, env)) == 1, 20, what="the worker with the secret")
        assert "no worker secret with key id" in runq.log()
        for path in secrets.values():                  # secrets are never logged
            assert open(path).read().strip() not in runq.log() + right.log() + wrong.log()
    finally:
        for proc in (wrong, right, runq):
            proc.stop()


class FakeStore:
    def __init__(self):
        self.buffered = self.committed = 0

    def pending(self) -> bool:
        return bool(self.buffered)

    def commit(self):
        self.committed += self.buffered
        self.buffered = 0

    def take_purged(self):
        return []


class BuggyCoordinator:
    """Answers Ping; any other message buffers a write, then hits a bug (as a KeyError in the core would)."""

    def __init__(self, store):
        self.store = store

    def connected(self, conn, peer, now):
        return Output()

    def role_of(self, conn):
        return None

    def handle(self, conn, msg, now):
        if msg["type"] == "Ping":
            out = Output()
            out.send(conn, protocol.reply())
            return out
        self.store.buffered += 1
        raise KeyError("a bug in the core")

    def disconnected(self, conn, now, silent=False):
        return Output()

    def next_deadline(self):
        return math.inf

    def committed(self, seconds, purged):
        pass

    def tick(self, now):
        return []


def test_an_unexpected_exception_in_the_core_ends_the_loop_without_committing():
    import select

    import pytest
    from runq.server import Server
    store = FakeStore()
    server = Server(BuggyCoordinator(store), store, [("127.0.0.1", 0)])
    port = server.addresses[0][1]
    try:
        link = Link.connect("127.0.0.1", port)
        link.send(protocol.message("Ping"))
        for _ in range(100):
            server.step(0.05)
            if select.select([link.sock], [], [], 0)[0]:
                break
        assert link.recv()["status"] == "ok"
        bad = Link.connect("127.0.0.1", port)
        bad.send(protocol.message("CancelBatch", batch_id=1))
        with pytest.raises(KeyError, match="a bug in the core"):
            for _ in range(100):
                server.step(0.05)
        assert store.buffered == 1 and store.committed == 0, "half a turn must not be committed"
    finally:
        server.close()


def test_database_is_private_and_an_open_one_is_tightened(tmp_path):
    import os
    import sqlite3
    import stat
    db = tmp_path / "runq.sqlite"
    conn = sqlite3.connect(db)   # a real (non-empty) database: an empty file is refused
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    os.chmod(db, 0o644)
    runq = start_runq(tmp_path)
    try:
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
        assert "was mode 644 (readable by others); changed to 600" in runq.log()
    finally:
        runq.stop()
    fresh = tmp_path / "fresh"
    runq = start_runq(fresh)
    try:
        assert stat.S_IMODE((fresh / "runq.sqlite").stat().st_mode) == 0o600
        assert "readable by others" not in runq.log()
    finally:
        runq.stop()


def test_frame_caps_follow_the_role_even_within_one_read(tmp_path):
    runq = start_runq(tmp_path)
    try:
        traits = dict(host="h", pid=1, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0)
        big = {"blob": "r" * (2 * 1024 * 1024)}   # over the client cap, under the worker cap
        stranger = Link.connect("127.0.0.1", runq.port)
        frame = protocol.encode(protocol.message("StartBatch", engine="dummy", n_runs=1, param=big))
        stranger.sock.sendall(frame[:1000])   # runq refuses from the header: the rest would meet a closed socket
        assert "exceeds the 1114112-byte limit" in stranger.recv()["message"]   # runq.limits.max_client_frame
        worker = Link.connect("127.0.0.1", runq.port)
        handshake(worker, "worker")
        # WorkerReady and a large report in one write: the worker cap applies from the second frame on
        worker.sock.sendall(protocol.encode(protocol.message("WorkerReady", **traits)) + protocol.encode(
            protocol.message("WorkerFinishedRun", worker_id=1, batch_id=9, batch_index=0, attempt=1, data=big)))
        assert worker.recv()["type"] == "RunqAcceptWorker"
        worker.send(protocol.message("WorkerHeartbeat", worker_id=1, seq=0, runs=[]))
        assert RunqClient(port=runq.port).request("WorkerStatus", worker_id=1)["worker"]["connected"] is True
        wait_until(lambda: "rejected WorkerFinishedRun from worker 1 for run (9, 0)" in runq.log(), 10,
                   what="the large report to reach the core")
        assert runq.log().count("exceeds") == 1
    finally:
        runq.stop()


def test_peer_log_lines_are_rationed():
    import logging

    from runq.connection import LogQuota
    now = [0.0]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("runq.server")
    logger.addHandler(handler)
    try:
        quota = LogQuota(lambda: now[0], burst=3, period=1.0)
        for i in range(10):
            quota.log(logging.WARNING, "bad peer %d", i)
        now[0] = 1.5
        quota.log(logging.WARNING, "bad peer %d", 10)
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert lines == ["bad peer 0", "bad peer 1", "bad peer 2", "7 more lines about peers held back in the last 2 s",
                     "bad peer 10"]


TRAITS = dict(host="h", pid=1, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0)


def registered_worker(port):
    link = Link.connect("127.0.0.1", port)
    handshake(link, "worker")
    link.send(protocol.message("WorkerReady", **TRAITS))
    accept = link.recv()
    assert accept["type"] == "RunqAcceptWorker"
    return link, accept["worker_id"]


def test_large_reports_over_the_input_budget_all_arrive(tmp_path):
    import threading
    mib = 1024 * 1024
    runq = start_runq(tmp_path, conf={"runq": {"limits": {"max_input_total": 2 * mib}}})
    try:
        links = [registered_worker(runq.port) for _ in range(4)]
        frames = [protocol.encode(protocol.message(
            "WorkerFinishedRun", worker_id=wid, batch_id=7, batch_index=i, attempt=1, data="d" * (3 * mib // 2)))
            for i, (_, wid) in enumerate(links)]
        senders = [threading.Thread(target=link.sock.sendall, args=(frame,)) for (link, _), frame in zip(links, frames)]
        for t in senders:
            t.start()
        # 6 MiB in flight against a 2 MiB budget: one at a time finishes, none waits forever
        wait_until(lambda: runq.log().count("rejected WorkerFinishedRun") == 4, 20,
                   what=f"all four reports to reach the core\n{runq.log()[-2000:]}")
        for t in senders:
            t.join(5)
        assert "closing it" not in runq.log()
    finally:
        runq.stop()


def test_a_worker_frame_only_has_to_keep_moving_a_strangers_must_finish(tmp_path):
    import time
    runq = start_runq(tmp_path, conf={"runq": {"limits": {"frame_timeout": 1}}})
    try:
        worker, wid = registered_worker(runq.port)
        stranger = socket.create_connection(("127.0.0.1", runq.port))
        slow = protocol.encode(protocol.message("WorkerFinishedRun", worker_id=wid, batch_id=8, batch_index=0,
                                                attempt=1, data="s" * 10_000))
        ping = protocol.encode(protocol.message("Ping"))
        stranger.sendall(ping[:3])
        chunks = [slow[i:i + 1000] for i in range(0, len(slow), 1000)]
        for chunk in chunks:          # ~2.5 s in all, never silent for 1 s
            worker.sock.sendall(chunk)
            time.sleep(0.25)          # pacing the sender: a slow link, not a wait for a condition
        wait_until(lambda: "rejected WorkerFinishedRun from worker" in runq.log(), 5,
                   what="the slow report to arrive")
        assert "did not finish a frame in time" in runq.log()     # the stranger's 3 bytes
        assert closed(stranger)
    finally:
        runq.stop()


def test_a_run_named_by_half_its_fields_closes_that_connection_not_runq(tmp_path):
    """batch_id, batch_index and attempt are optional but all or none: a WorkerReconnect with a
    batch_id alone once raised KeyError in the core and ended runq (found by the fuzz test)."""
    runq = start_runq(tmp_path)
    try:
        link = Link.connect("127.0.0.1", runq.port)
        handshake(link, "worker")
        link.send({"type": "WorkerReconnect", "worker_id": 1, "batch_id": 3, "proof": None, **TRAITS})
        assert "batch_id needs batch_index and attempt" in link.recv()["message"]
        assert closed(link.sock)
        client = RunqClient(port=runq.port)
        assert client.request("Ping")["status"] == "ok"
    finally:
        runq.stop()
