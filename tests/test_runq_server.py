"""runq as a real process on loopback: bad peers are cut off, everyone else is served."""
import socket
import struct

from procs import start_runq
from runq import protocol
from runq.client import Link, RunqClient, handshake


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
