"""The worker's link to runq, against a scripted fake runq speaking runq.protocol frames.

The worker loop runs in a thread of the test process (WorkerLoop), or as a real
``python -m worker`` process for signals and the command line.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from procs import eventually
from simx import auth, protocol
from worker.backoff import Backoff
from worker.engines import Engine
from worker.engines.dummy import DummyEngine
from worker.loop import WorkerLoop
from worker.session import Traits

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
LONG = {"step_count": 1000, "step_delay": 0.05}  # runs until aborted
QUIET = ("WorkerHeartbeat", "WorkerUpdate")




class Peer:
    """One connection accepted by the fake runq; the test reads and writes whole messages."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = protocol.FrameReader()
        self.queue: list[dict] = []
        self.seen: list[dict] = []

    def send(self, mtype: str, **fields) -> None:
        self.sock.sendall(protocol.encode(protocol.message(mtype, **fields)))

    def recv(self, timeout: float = 5.0) -> dict | None:
        """The next message, or None if the worker closed the connection or was silent."""
        deadline = time.monotonic() + timeout
        while not self.queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                return None
            if not data:
                return None
            self.queue.extend(protocol.decode_message(b) for b in self.reader.feed(data))
        msg = self.queue.pop(0)
        self.seen.append(msg)
        return msg

    def expect(self, mtype: str, timeout: float = 5.0, skip=QUIET, **fields) -> dict:
        """The next message of type ``mtype``, skipping heartbeats and updates; fail on anything else."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            assert msg is not None, f"no {mtype} from the worker; saw {[m['type'] for m in self.seen]}"
            if msg["type"] == mtype:
                for name, value in fields.items():
                    assert msg.get(name) == value, f"{mtype}.{name} is {msg.get(name)!r}, not {value!r}: {msg}"
                return msg
            assert msg["type"] in skip, f"expected {mtype}, got {msg}"

    def types(self) -> list[str]:
        return [m["type"] for m in self.seen]

    def close(self) -> None:
        self.sock.close()


class FakeRunq:
    """A listening socket on a free loopback port; ``listen=False`` refuses connections until ``listen()``."""

    def __init__(self, listen: bool = True):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.peers: list[Peer] = []
        if listen:
            self.listen()

    def listen(self) -> None:
        self.sock.listen(8)

    def accept(self, timeout: float = 5.0) -> Peer:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        peer = Peer(conn)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.sock.close()


class RunningWorker:
    """A WorkerLoop in a thread, with quick reconnects."""

    def __init__(self, address, engine: Engine | None = None, secret: bytes | None = None, **options):
        traits = Traits(host="testhost", pid=os.getpid(), group="g", user="u", engine="dummy",
                        cost=1, speed=2, priority=3)
        options.setdefault("backoff", Backoff(initial=0.02, cap=0.1))
        self.loop = WorkerLoop(traits, engine or DummyEngine(), address, secret, **options)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.code = self.loop.run()

    def exited(self) -> bool:
        return not self.thread.is_alive()


@pytest.fixture
def runq():
    fake = FakeRunq()
    yield fake
    fake.close()


@pytest.fixture
def start_worker(runq):
    started: list[RunningWorker] = []

    def start(address, **kwargs) -> RunningWorker:
        worker = RunningWorker(address, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.loop.request_stop()
    for peer in runq.peers:
        peer.close()  # so a worker still waiting for an ack exits at once
    for worker in started:
        worker.thread.join(10)
        assert not worker.thread.is_alive(), "worker loop did not stop"


def challenge(runq: FakeRunq, secret: bytes | None = None, instance: str = "instance-1") -> Peer:
    """Accept a connection and run runq's half of the v2 handshake up to the worker's Auth."""
    peer = runq.accept()
    hello = peer.recv()
    assert hello is not None and hello["type"] == "Hello" and hello["role"] == "worker", hello
    peer.nonce = auth.new_nonce()
    proof = auth.server_proof(secret, "worker", hello["nonce"], peer.nonce) if secret else None
    peer.send("RunqChallenge", version=protocol.VERSION, instance=instance, nonce=peer.nonce, proof=proof)
    got = peer.expect("Auth", skip=())
    if secret:
        assert got["proof"] == auth.peer_proof(secret, "worker", peer.nonce, hello["nonce"])
    peer.hello = hello
    return peer


def handshake(runq: FakeRunq, worker_id=7, heartbeat_interval=30.0, keep_run=False, secret=None,
              instance="instance-1", key=None) -> tuple[Peer, dict]:
    peer = challenge(runq, secret, instance)
    hello = peer.recv()
    assert hello is not None and hello["type"] in ("WorkerReady", "WorkerReconnect")
    peer.send("RunqAcceptWorker", worker_id=worker_id, heartbeat_interval=heartbeat_interval, keep_run=keep_run,
              key=key)
    return peer, hello


def assign(peer: Peer, batch_id=5, batch_index=0, attempt=1, **param) -> tuple[int, int, int]:
    peer.seq = getattr(peer, "seq", 0) + 1
    peer.send("RunqAssignRun", batch_id=batch_id, batch_index=batch_index, attempt=attempt, seq=peer.seq,
              engine="dummy", param=param, time_limit=None)
    return batch_id, batch_index, attempt


def run_of(key) -> dict:
    return dict(zip(("batch_id", "batch_index", "attempt"), key))


def ack(peer: Peer, key, accepted=True) -> None:
    peer.send("RunqAck", **run_of(key), accepted=accepted)


# -- handshake, heartbeats, status ---------------------------------------------------------

def test_first_contact_proves_the_secret_then_sends_ready_with_traits(runq, start_worker):
    secret = b"ab" * 32
    start_worker(runq.address, secret=secret)
    peer, hello = handshake(runq, heartbeat_interval=0.1, secret=secret)
    assert peer.hello["key_id"] == auth.key_id(secret) and "s3cret" not in str(peer.seen)
    assert hello == {"type": "WorkerReady", "host": "testhost", "pid": os.getpid(), "group": "g", "user": "u",
                     "engine": "dummy", "cost": 1, "speed": 2, "priority": 3}
    beat = peer.expect("WorkerHeartbeat", skip=())
    assert beat["worker_id"] == 7 and beat["runs"] == [] and beat["seq"] == 0
    peer.expect("WorkerHeartbeat", skip=())  # and again, every heartbeat_interval


def test_heartbeats_name_the_run_computed(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq, heartbeat_interval=0.05)
    key = assign(peer, **LONG)
    peer.expect("WorkerUpdate")
    peer.expect("WorkerHeartbeat", skip=("WorkerUpdate",), worker_id=7, runs=[list(key)], seq=1)


def test_invalid_message_from_runq_is_skipped_without_dropping_the_link(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq, heartbeat_interval=60)
    peer.sock.sendall(protocol.encode({"type": "RunqFromTheFuture", "x": 1}))
    peer.sock.sendall(protocol.encode({"type": "RunqGetStatus"}))   # no more: runq never sent it
    peer.sock.sendall(protocol.encode({"type": "RunqDrain", "extra": True}))
    key = assign(peer, step_count=0)
    peer.expect("WorkerFinishedRun", skip=(), worker_id=7, **run_of(key))
    assert len(runq.peers) == 1 and worker.loop.backoff.failures == 0


def test_worker_retries_until_runq_is_up(start_worker):
    runq = FakeRunq(listen=False)  # bound but not listening: connections are refused
    try:
        worker = start_worker(runq.address)
        assert eventually(lambda: worker.loop.backoff.failures >= 3)
        runq.listen()
        peer, hello = handshake(runq)
        assert hello["type"] == "WorkerReady"
    finally:
        runq.close()


# -- runs and their reports -------------------------------------------------------------------

def test_run_progress_and_finished_report(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, batch_id=7, batch_index=3, step_count=3, step_delay=0.01)
    done = peer.expect("WorkerFinishedRun", worker_id=7, **run_of(key))
    assert done["data"] == "dummy run 3 of batch 7: 3 steps"
    updates = [m for m in peer.seen if m["type"] == "WorkerUpdate"]
    assert updates and all(m["worker_id"] == 7 and protocol.run_key(m) == key for m in updates)
    assert 0 < updates[0]["progress"] <= 1


def test_report_is_kept_until_acked_and_resent_after_reconnect(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, step_count=0)
    peer.expect("WorkerFinishedRun", **run_of(key))
    peer.close()  # runq goes away before acking

    peer, hello = handshake(runq, worker_id=9, keep_run=True,  # runq lost its database: a new id
                            heartbeat_interval=0.05)
    assert hello["type"] == "WorkerReconnect"
    assert hello["worker_id"] == 7 and protocol.run_key(hello) == key  # still holds the run
    resent = peer.expect("WorkerFinishedRun", worker_id=9, **run_of(key))
    assert resent["data"].endswith("0 steps")
    ack(peer, key)
    assert eventually(lambda: worker.loop.session.job is None and not worker.loop.session.pending)
    idle = peer.expect("WorkerHeartbeat", worker_id=9)   # sent after the report: the run is not listed
    assert idle["runs"] == []
    key2 = assign(peer, batch_index=1, step_count=0)  # idle again: takes the next run
    peer.expect("WorkerFinishedRun", **run_of(key2))


def test_failing_engine_reports_message_and_traceback(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, step_count=1, step_delay=0, fail="boom")
    failed = peer.expect("WorkerFailedRun", **run_of(key))
    assert "boom" in failed["message"]
    assert "RuntimeError: boom" in failed["traceback"] and len(failed["traceback"]) <= 4000
    ack(peer, key)
    key2 = assign(peer, batch_index=1, step_count=0)
    peer.expect("WorkerFinishedRun", **run_of(key2))


def test_second_assignment_while_busy_is_ignored(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq)
    first = assign(peer, batch_index=0, step_count=3, step_delay=0.05)
    second = assign(peer, batch_index=1, step_count=0)
    peer.expect("WorkerFinishedRun", **run_of(first))
    ack(peer, first)
    third = assign(peer, batch_index=2, step_count=0)
    peer.expect("WorkerFinishedRun", **run_of(third))
    assert all(protocol.run_key(m) != second for m in peer.seen)


class ChattyEngine(Engine):
    """Reports progress far faster than the worker may forward it."""

    name = "dummy"

    def run(self, param, progress, abort, context):
        end = time.monotonic() + 1.0
        i = 0
        while time.monotonic() < end:
            i += 1
            progress(min(1.0, i / 10000), f"step {i}")
            time.sleep(0.0005)
        return i


def test_progress_updates_are_throttled(runq, start_worker):
    start_worker(runq.address, engine=ChattyEngine())
    peer, _ = handshake(runq)
    key = assign(peer)
    done = peer.expect("WorkerFinishedRun", **run_of(key))
    updates = [m for m in peer.seen if m["type"] == "WorkerUpdate"]
    assert done["data"] > 100  # the engine did report often
    assert 2 <= len(updates) <= 8  # about 5 per second over one second
    assert updates[-1]["message"].startswith("step ")


# -- abort -------------------------------------------------------------------------------------

def test_abort_stops_the_engine_and_reports_aborted(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, **LONG)
    peer.expect("WorkerUpdate")
    peer.send("RunqAbortRun", **run_of(key), reason="cancelled by user")
    aborted = peer.expect("WorkerAbortedRun", timeout=2, **run_of(key))
    assert aborted["message"] == "cancelled by user"
    assert eventually(lambda: worker.loop.session.last_job.done(), timeout=2)


def test_abort_of_another_attempt_is_ignored(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, attempt=2, step_count=4, step_delay=0.05)
    peer.send("RunqAbortRun", batch_id=key[0], batch_index=key[1], attempt=1, reason="stale")
    peer.expect("WorkerFinishedRun", **run_of(key))


def test_reconnect_without_keep_run_aborts_the_run(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, **LONG)
    peer.expect("WorkerUpdate")
    peer.close()
    peer, hello = handshake(runq, keep_run=False, heartbeat_interval=0.05)
    assert hello["type"] == "WorkerReconnect" and protocol.run_key(hello) == key
    peer.send("RunqAbortRun", **run_of(key), reason="lease lost")  # runq sends this too
    peer.expect("WorkerAbortedRun", timeout=2, **run_of(key))
    ack(peer, key, accepted=False)
    assert peer.expect("WorkerHeartbeat")["runs"] == []   # sent after the report


def test_runq_refusing_the_secret_exits_with_status_2(runq, start_worker):
    worker = start_worker(runq.address, secret=b"cd" * 32)
    peer = runq.accept()
    peer.expect("Hello")
    peer.send("RunqError", message="Auth: missing or wrong proof for the worker secret", code=401)
    peer.close()
    assert eventually(worker.exited)
    assert worker.code == 2


def test_other_runq_errors_lead_to_a_reconnect(runq, start_worker):
    start_worker(runq.address)
    peer, _ = handshake(runq)
    peer.send("RunqError", message="WorkerHeartbeat: field 'worker_id' has the wrong type")
    peer.close()
    _, hello = handshake(runq)
    assert hello["type"] == "WorkerReconnect" and hello.get("batch_id") is None


# -- stop and drain ------------------------------------------------------------------------------

def test_stop_gives_the_run_back_and_exits_after_the_ack(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, **LONG)
    peer.expect("WorkerUpdate")
    worker.loop.request_stop()
    peer.expect("WorkerStoppedRun", worker_id=7, **run_of(key))
    assert not worker.exited()  # waits for the ack
    ack(peer, key)
    assert eventually(worker.exited)
    assert worker.code == 0
    assert worker.loop.session.last_job.done()


def test_stop_exits_when_the_ack_does_not_come(runq, start_worker):
    worker = start_worker(runq.address, stop_timeout=0.3)
    peer, _ = handshake(runq)
    key = assign(peer, **LONG)
    peer.expect("WorkerUpdate")
    worker.loop.request_stop()
    peer.expect("WorkerStoppedRun", **run_of(key))
    assert eventually(worker.exited, timeout=2)
    assert worker.code == 0


def test_stop_keeps_a_finished_report(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, step_count=0)
    peer.expect("WorkerFinishedRun", **run_of(key))
    worker.loop.request_stop()
    assert not eventually(worker.exited, timeout=0.2)
    ack(peer, key)
    assert eventually(worker.exited)
    assert worker.code == 0 and "WorkerStoppedRun" not in peer.types()


def test_stop_without_runq_exits_at_once(start_worker):
    runq = FakeRunq(listen=False)
    try:
        worker = start_worker(runq.address)
        assert eventually(lambda: worker.loop.backoff.failures >= 1)
        worker.loop.request_stop()
        assert eventually(worker.exited, timeout=1)
        assert worker.code == 0
    finally:
        runq.close()


def test_drain_finishes_the_run_refuses_others_and_exits(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq)
    key = assign(peer, batch_index=0, step_count=5, step_delay=0.05)
    peer.send("RunqDrain")
    peer.expect("WorkerDraining", worker_id=7)
    late = assign(peer, batch_index=1, step_count=0)
    peer.expect("WorkerStoppedRun", **run_of(late))
    ack(peer, late)
    peer.expect("WorkerFinishedRun", **run_of(key))
    assert not eventually(worker.exited, timeout=0.2)  # waits for the ack
    ack(peer, key)
    assert eventually(worker.exited)
    assert worker.code == 0


def test_drain_signal_while_idle_exits(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq)
    worker.loop.request_drain()
    peer.expect("WorkerDraining", worker_id=7)
    assert eventually(worker.exited)
    assert worker.code == 0


def cpu_while_silent(peer: Peer, seconds: float) -> float:
    """Process CPU seconds used while the worker sends nothing for ``seconds``."""
    start = time.process_time()
    assert peer.recv(timeout=seconds) is None
    return time.process_time() - start


def test_idle_worker_does_not_spin(runq, start_worker):
    worker = start_worker(runq.address)
    peer, _ = handshake(runq, heartbeat_interval=60)
    key = assign(peer, step_count=0)
    peer.expect("WorkerFinishedRun", **run_of(key))
    ack(peer, key)
    assert eventually(lambda: worker.loop.session.job is None)   # idle
    assert cpu_while_silent(peer, 0.5) < 0.1


def test_draining_worker_with_a_run_does_not_spin(runq, start_worker):
    start_worker(runq.address, drain_linger=0.01)
    peer, _ = handshake(runq, heartbeat_interval=60)
    key = assign(peer, step_count=1, step_delay=1.0)
    peer.send("RunqDrain")
    peer.expect("WorkerDraining")
    assert cpu_while_silent(peer, 0.5) < 0.1
    peer.expect("WorkerFinishedRun", **run_of(key))


# -- the real process: command line, signals, run-dummy ----------------------------------------------

def spawn(args, port, tmp_path, cwd=None, env_extra=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNQ_", "SIMX_"))}
    env.update(RUNQ_HOST="127.0.0.1", RUNQ_PORT=str(port), **(env_extra or {}))
    log = open(tmp_path / "worker.log", "wb")
    return subprocess.Popen(args, cwd=cwd or ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 10) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.fixture
def python():
    return str(PYTHON) if PYTHON.exists() else sys.executable


def test_sigterm_stops_the_process_with_status_0(runq, tmp_path, python):
    proc = spawn([python, "-m", "worker", "--engine", "dummy", "--group", "topl"], runq.address[1], tmp_path)
    try:
        peer, hello = handshake(runq)
        assert hello["group"] == "topl" and hello["pid"] == proc.pid
        key = assign(peer, **LONG)
        peer.expect("WorkerUpdate")
        proc.send_signal(signal.SIGTERM)
        peer.expect("WorkerStoppedRun", **run_of(key))
        ack(peer, key)
        assert finish(proc) == 0
    finally:
        finish(proc, 0)
    log = (tmp_path / "worker.log").read_text()
    # at the default level: the stop names the run, the summary at exit counts it, no per-run line
    assert "worker 7: stopping: giving run 5/0#1 back to runq" in log, log
    assert "engine dummy: 0 finished, 0 failed, 1 stopped; mean run time" in log, log
    assert "assigned run" not in log and "acked" not in log, log


def test_sigusr1_drains_the_process(runq, tmp_path, python):
    proc = spawn([python, "-m", "worker", "--engine", "dummy"], runq.address[1], tmp_path)
    try:
        peer, _ = handshake(runq)
        key = assign(peer, step_count=3, step_delay=0.05)
        peer.expect("WorkerUpdate")
        proc.send_signal(signal.SIGUSR1)
        peer.expect("WorkerDraining")
        peer.expect("WorkerFinishedRun", **run_of(key))
        ack(peer, key)
        assert finish(proc) == 0
    finally:
        finish(proc, 0)


def test_refused_secret_exits_the_process_with_status_2(runq, tmp_path, python):
    secret = tmp_path / "worker.secret"
    secret.write_text("ef" * 32 + "\n")
    secret.chmod(0o600)
    proc = spawn([python, "-m", "worker", "--engine", "dummy", "--secret-file", str(secret)], runq.address[1],
                 tmp_path)
    try:
        peer = runq.accept()
        assert peer.expect("Hello")["key_id"] == auth.key_id(("ef" * 32).encode())
        peer.send("RunqError", message="Auth: missing or wrong proof for the worker secret", code=401)
        peer.close()
        assert finish(proc) == 2
    finally:
        finish(proc, 0)


def test_old_token_flag_is_a_configuration_error_naming_its_replacement(tmp_path, python):
    proc = spawn([python, "-m", "worker", "--engine", "dummy", "--token", "t"], 1, tmp_path)
    assert finish(proc) == 2
    assert "--secret-file" in (tmp_path / "worker.log").read_text()


def test_unknown_engine_is_a_configuration_error(tmp_path, python):
    proc = spawn([python, "-m", "worker", "--engine", "no-such-engine"], 1, tmp_path)
    assert finish(proc) == 2


def test_run_dummy_works_from_any_directory(runq, tmp_path):
    (tmp_path / "worker").mkdir()  # a worker/ here must not shadow simx's
    proc = spawn([str(ROOT / "worker" / "run-dummy"), "--user", "topl"], runq.address[1], tmp_path, cwd=tmp_path)
    try:
        peer, hello = handshake(runq)
        assert hello["engine"] == "dummy" and hello["user"] == "topl" and hello["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert finish(proc) == 0
    finally:
        finish(proc, 0)
