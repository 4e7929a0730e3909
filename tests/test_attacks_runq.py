"""Attacks on a live runq process (issue 6): it stays bounded, alive and serving.

Every limit is shortened through a conf file, so each attack takes seconds.
Memory is runq's resident set (/proc/PID/status VmRSS); CPU is /proc/PID/stat.
"""
from __future__ import annotations

import os
import resource
import socket
import struct
import time

import pytest

from procs import eventually, start_runq, start_worker, wait_until
from simx import protocol
from simx.client import Link, RunqClient, handshake

MiB = 1024 * 1024
READY = dict(host="h", pid=1, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0)
QUICK = {"step_count": 2, "step_delay": 0.01}


def rss(pid: int) -> int:
    """Resident bytes of process `pid`."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping_seconds(port: int) -> float:
    t0 = time.monotonic()
    assert RunqClient(port=port, timeout=5).request("Ping")["status"] == "ok"
    return time.monotonic() - t0


def is_closed(sock: socket.socket, timeout: float = 0.0) -> bool:
    """Whether the peer has closed `sock` (reading and discarding what it sent first)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (BlockingIOError, socket.timeout):
        return False
    except OSError:
        return True


def push(sock: socket.socket, data: bytes) -> int:
    """Send what the kernel takes without blocking; the count sent."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent:sent + MiB])
    except (BlockingIOError, InterruptedError):
        pass
    return sent


def batch_completes(port: int, tmp_path, name: str = "after", timeout: float = 20.0) -> None:
    """A real `python -m worker` finishes a small batch on runq at `port`."""
    worker = start_worker(tmp_path, port, name=f"worker-{name}")
    try:
        client = RunqClient(port=port)
        bid = client.request("StartBatch", name=name, engine="dummy", n_runs=3, param=QUICK)["batch_id"]
        wait_until(lambda: client.request("BatchStatus", batch_id=bid)["batch"]["state"] == "done", timeout,
                   what=f"batch {name} to finish\n{worker.log()[-2000:]}")
    finally:
        worker.stop()


def test_partial_frame_flood_stays_bounded_and_is_cut_at_the_frame_timeout(tmp_path):
    limits = {"max_input_total": 8 * MiB, "frame_timeout": 2, "auth_timeout": 30}
    runq = start_runq(tmp_path, conf={"runq": {"limits": limits}})
    socks = []
    try:
        base = rss(runq.pid)
        frame = struct.pack(">I", MiB) + b"x" * (MiB - 1)     # the largest frame a stranger may send, less one byte
        sent = []
        for i in range(100):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + i % 4}", 0))   # 4 addresses: 25 each, under the per-address cap
            s.connect(("127.0.0.1", runq.port))
            sent.append(push(s, frame))
            socks.append(s)
        t0 = time.monotonic()
        assert ping_seconds(runq.port) < 1.0
        for i, s in enumerate(socks):       # what the kernel did not take at first
            sent[i] += push(s, frame[sent[i]:])
        peak = rss(runq.pid)
        assert peak - base < 40 * MiB, f"runq grew by {(peak - base) / MiB:.0f} MiB under 100 MiB of half frames"
        wait_until(lambda: all(is_closed(s) for s in socks), 15, what="the half frames to be cut")
        assert time.monotonic() - t0 < 12
        assert "did not finish a frame in time" in runq.log()
        assert runq.alive() and ping_seconds(runq.port) < 1.0
    finally:
        for s in socks:
            s.close()
        runq.stop()


def test_a_client_that_never_reads_cannot_grow_runq_or_slow_others(tmp_path):
    runq = start_runq(tmp_path, conf={"runq": {"limits": {"max_output": MiB}}})
    try:
        client = RunqClient(port=runq.port)
        client.request("StartBatch", name="big", engine="dummy", n_runs=1, param={"blob": "p" * 400_000})
        base = rss(runq.pid)
        hog = socket.create_connection(("127.0.0.1", runq.port))
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ask = protocol.encode(protocol.message("BatchList", limit=10))   # each reply ~400 KB
        sent = push(hog, ask * 20_000)
        assert sent > 100 * len(ask)        # it asked for gigabytes
        worst = max(ping_seconds(runq.port) for _ in range(20))
        assert worst < 1.0, f"a Ping took {worst:.2f}s while one client does not read"
        grown = rss(runq.pid) - base
        assert grown < 40 * MiB, f"runq grew by {grown / MiB:.0f} MiB for a client that does not read"
        assert runq.alive()
        hog.close()
        assert eventually(lambda: ping_seconds(runq.port) < 1.0, 5)
    finally:
        runq.stop()


def test_descriptor_exhaustion_pauses_accepting_quietly_and_recovers(tmp_path):
    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    runq = start_runq(tmp_path, preexec_fn=low_nofile)
    socks = []
    try:
        for _ in range(80):              # more than runq can hold; the rest wait in the backlog
            socks.append(socket.create_connection(("127.0.0.1", runq.port), timeout=5))
        wait_until(lambda: "cannot accept connections" in runq.log(), 10, what="runq to notice EMFILE")
        cpu0, t0 = cpu_seconds(runq.pid), time.monotonic()
        time.sleep(2.0)   # measuring: runq must be idle, not spinning on accept()
        busy = (cpu_seconds(runq.pid) - cpu0) / (time.monotonic() - t0)
        assert busy < 0.25, f"runq used {busy:.0%} of a CPU while out of descriptors"
        assert runq.log().count("cannot accept connections") == 1
        for s in socks:
            s.close()
        socks.clear()
        wait_until(lambda: ping_seconds(runq.port) < 2.0, 15, what="runq to serve again")
        assert "accepting connections again" in runq.log()
        assert runq.log().count("cannot accept connections") == 1
    finally:
        for s in socks:
            s.close()
        runq.stop()


@pytest.mark.parametrize("frame, complaint", [
    (protocol.encode({"type": "WorkerReady", **READY, "pid": 2 ** 63}), "'pid' must be an integer"),
    (protocol.encode({"type": "WorkerReconnect", **READY, "worker_id": 2 ** 63}), "'worker_id' must be"),
    (protocol.encode({"type": "StartBatch", "engine": "dummy", "n_runs": 1, "max_attempts": 2 ** 63}),
     "'max_attempts' must be"),
    (protocol.encode({"type": "StartBatch", "engine": "dummy", "n_runs": 2 ** 63}), "'n_runs' must be"),
    (protocol.encode({"type": "StartBatch", "engine": "dummy", "n_runs": 1, "max_requeues": 2 ** 64}),
     "'max_requeues' must be"),
    (None, "NaN is not a JSON number"),
])
def test_overflowing_and_non_finite_fields_are_refused_and_work_goes_on(tmp_path, frame, complaint):
    if frame is None:
        body = b'{"type":"WorkerReady","host":"h","pid":1,"group":"","user":"","engine":"dummy",' \
               b'"cost":NaN,"speed":1,"priority":0}'
        frame = struct.pack(">I", len(body)) + body
    runq = start_runq(tmp_path)
    try:
        link = Link.connect("127.0.0.1", runq.port)
        handshake(link, "worker" if b'"Worker' in frame else "client")
        link.sock.sendall(frame)
        answer = link.recv()
        assert complaint in answer["message"]
        assert is_closed(link.sock, 5)
        batch_completes(runq.port, tmp_path)
        assert runq.alive()
    finally:
        runq.stop()


def test_unauthenticated_connections_per_address_are_capped(tmp_path):
    runq = start_runq(tmp_path, conf={"runq": {"limits": {"max_unauth_per_addr": 5}}})
    socks = []
    try:
        socks += [socket.create_connection(("127.0.0.1", runq.port)) for _ in range(4)]
        worker = Link.connect("127.0.0.1", runq.port, timeout=5)
        handshake(worker, "worker")
        worker.send(protocol.message("WorkerReady", **READY))
        assert worker.recv()["type"] == "RunqAcceptWorker"   # a registered worker no longer counts
        socks.append(socket.create_connection(("127.0.0.1", runq.port)))      # the fifth stranger
        assert not is_closed(socks[-1], 0.5)
        sixth = socket.create_connection(("127.0.0.1", runq.port))
        assert is_closed(sixth, 5), "a sixth stranger from one address must be cut off"
        other = socket.socket()
        other.bind(("127.0.0.9", 0))
        other.connect(("127.0.0.1", runq.port))
        link = Link(other)
        handshake(link, "client")
        link.send(protocol.message("Ping"))
        assert link.recv()["status"] == "ok"      # another address is not affected
        for s in socks:
            s.close()
        assert eventually(lambda: ping_seconds(runq.port) < 1, 5)
    finally:
        for s in socks:
            s.close()
        runq.stop()


def test_a_silent_worker_and_a_silent_stranger_are_cut_at_their_timeouts(tmp_path):
    limits = {"auth_timeout": 1, "worker_idle_factor": 2}
    env_conf = {"runq": {"limits": limits, "heartbeat_interval": 0.5}}
    runq = start_runq(tmp_path, conf=env_conf)
    try:
        stranger = socket.create_connection(("127.0.0.1", runq.port))
        worker = Link.connect("127.0.0.1", runq.port, timeout=5)
        handshake(worker, "worker")
        worker.send(protocol.message("WorkerReady", **READY))
        assert worker.recv()["type"] == "RunqAcceptWorker"
        t0 = time.monotonic()
        assert is_closed(stranger, 5)
        assert is_closed(worker.sock, 5)    # it sent no heartbeat for 2 x 0.5 s
        assert 0.8 < time.monotonic() - t0 < 4
        log = runq.log()
        assert "did not say who it is in time" in log and "worker silent too long" in log
    finally:
        runq.stop()
