"""The worker's side of prefetch (``--prefetch N``), against the scripted fake runq of test_worker_link.

runq's side (assigning several runs, timing a held run from WorkerStartedRun) is runq's own; here
the fake runq speaks the wire contract: several RunqAssignRun, RunqAbortRun of a held run, drain, stop.
"""
from __future__ import annotations

from pathlib import Path

from procs import eventually
from simx import protocol
import test_worker_link
from test_worker_link import LONG, RunningWorker, ack, assign, run_of  # noqa: F401
from test_worker_link import runq, start_worker  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"step_count": 4, "step_delay": 0.05}  # long enough to assign others behind it


def handshake(runq, **options):
    """test_worker_link's, with heartbeats often: each test reads the next one as the worker's status."""
    return test_worker_link.handshake(runq, heartbeat_interval=0.05, **options)


def heartbeat(peer) -> list:
    """The runs the next heartbeat lists that was sent after every assignment reached the worker
    (its seq is the last one's), and after whatever the test read before."""
    while True:
        beat = peer.expect("WorkerHeartbeat", skip=("WorkerUpdate", "WorkerStartedRun"))
        if beat["seq"] == getattr(peer, "seq", 0):
            return [tuple(r) for r in beat["runs"]]


def started(peer) -> list:
    return [protocol.run_key(m) for m in peer.seen if m["type"] == "WorkerStartedRun"]


def test_prefetch_is_announced_only_above_one(runq, start_worker):
    start_worker(runq.address, prefetch=3)
    _, ready = handshake(runq)
    assert ready["type"] == "WorkerReady" and ready["prefetch"] == 3


def test_without_prefetch_nothing_new_goes_on_the_wire(runq, start_worker):
    start_worker(runq.address)
    peer, ready = handshake(runq)
    assert "prefetch" not in ready   # a runq that predates prefetch refuses unknown fields
    key = assign(peer, step_count=2, step_delay=0.01)
    peer.expect("WorkerFinishedRun", **run_of(key))
    assert started(peer) == []


def test_held_runs_start_one_after_another_without_waiting_for_acks(runq, start_worker):
    start_worker(runq.address, prefetch=3)
    peer, _ = handshake(runq)
    first = assign(peer, batch_index=0, **SHORT)
    second = assign(peer, batch_index=1, step_count=1, step_delay=0.01)
    third = assign(peer, batch_index=2, step_count=0)
    assert heartbeat(peer) == [first, second, third]   # computing first, then the held ones in order
    # no ack is ever sent: each run starts as soon as the one before it ended
    quiet = ("WorkerUpdate", "WorkerHeartbeat", "WorkerStartedRun")
    for key in (first, second, third):
        peer.expect("WorkerFinishedRun", skip=quiet, **run_of(key))
    assert started(peer) == [first, second, third]
    types = [m["type"] for m in peer.seen if m["type"] in ("WorkerStartedRun", "WorkerFinishedRun")]
    assert types == ["WorkerStartedRun", "WorkerFinishedRun"] * 3   # each starts after the one before ended
    for key in (first, second, third):
        ack(peer, key)
    assert heartbeat(peer) == []


def test_assignments_beyond_prefetch_are_ignored(runq, start_worker):
    worker = start_worker(runq.address, prefetch=2)
    peer, _ = handshake(runq)
    keys = [assign(peer, batch_index=i, **LONG) for i in range(3)]
    assert heartbeat(peer) == keys[:2]   # with seq 3: runq learns it saw the third and takes it back
    assert list(worker.loop.session.held) == [keys[1]]


def test_runq_takes_back_a_held_run(runq, start_worker):
    start_worker(runq.address, prefetch=2)
    peer, _ = handshake(runq)
    running = assign(peer, batch_index=0, **LONG)
    held = assign(peer, batch_index=1, step_count=0)
    assert heartbeat(peer) == [running, held]
    peer.send("RunqAbortRun", **run_of(held), reason="another worker can start it sooner")
    aborted = peer.expect("WorkerAbortedRun", skip=("WorkerUpdate", "WorkerStartedRun", "WorkerHeartbeat"),
                          **run_of(held))
    assert "sooner" in aborted["message"]
    ack(peer, held)
    assert heartbeat(peer) == [running]
    peer.send("RunqAbortRun", **run_of(running), reason="cancelled")
    peer.expect("WorkerAbortedRun", skip=("WorkerUpdate", "WorkerStartedRun", "WorkerHeartbeat"), **run_of(running))
    assert started(peer) == [running]   # the taken-back run never started


def test_drain_finishes_the_running_run_and_hands_back_the_held_ones(runq, start_worker):
    worker = start_worker(runq.address, prefetch=3)
    peer, _ = handshake(runq)
    running = assign(peer, batch_index=0, **SHORT)
    held = [assign(peer, batch_index=i, step_count=0) for i in (1, 2)]
    assert heartbeat(peer) == [running, *held]
    peer.send("RunqDrain")
    quiet = ("WorkerUpdate", "WorkerStartedRun", "WorkerHeartbeat", "WorkerDraining")
    for key in held:
        peer.expect("WorkerStoppedRun", skip=quiet, **run_of(key))
    peer.expect("WorkerFinishedRun", skip=quiet, **run_of(running))
    assert "WorkerDraining" in peer.types()
    assert not worker.exited()   # reports still unacked
    for key in (*held, running):
        ack(peer, key)
    assert eventually(worker.exited)
    assert worker.code == 0 and started(peer) == [running]


def test_stop_hands_back_the_running_and_the_held_runs(runq, start_worker):
    worker = start_worker(runq.address, prefetch=2)
    peer, _ = handshake(runq)
    running = assign(peer, batch_index=0, **LONG)
    held = assign(peer, batch_index=1, **LONG)
    assert heartbeat(peer) == [running, held]
    worker.loop.request_stop()
    quiet = ("WorkerUpdate", "WorkerStartedRun", "WorkerHeartbeat")
    stopped = {protocol.run_key(peer.expect("WorkerStoppedRun", skip=quiet)) for _ in range(2)}
    assert stopped == {running, held}
    ack(peer, running)
    ack(peer, held)
    assert eventually(worker.exited)
    assert worker.code == 0 and started(peer) == [running]


def test_reconnect_keeps_the_held_runs_and_lists_them_at_once(runq, start_worker):
    start_worker(runq.address, prefetch=2)
    peer, _ = handshake(runq)
    running = assign(peer, batch_index=0, **LONG)
    held = assign(peer, batch_index=1, **LONG)
    assert heartbeat(peer) == [running, held]
    peer.close()
    peer, hello = handshake(runq, keep_run=True)
    assert hello["type"] == "WorkerReconnect" and protocol.run_key(hello) == running and hello["prefetch"] == 2
    beat = peer.expect("WorkerHeartbeat", skip=("WorkerUpdate",))   # at once, for runq to reconcile
    assert [tuple(r) for r in beat["runs"]] == [running, held]
    peer.send("RunqAbortRun", **run_of(held), reason="this run is no longer yours")
    peer.expect("WorkerAbortedRun", skip=("WorkerUpdate", "WorkerHeartbeat"), **run_of(held))


def test_a_new_runq_instance_drops_the_held_runs(runq, start_worker):
    worker = start_worker(runq.address, prefetch=2)
    peer, _ = handshake(runq)
    assign(peer, batch_index=0, **LONG)
    assign(peer, batch_index=1, **LONG)
    assert len(heartbeat(peer)) == 2
    peer.close()
    peer, hello = handshake(runq, instance="instance-2")
    assert hello["type"] == "WorkerReady"
    assert eventually(lambda: not worker.loop.session.held)
    assert heartbeat(peer) == []


def test_prefetch_out_of_range_is_a_configuration_error(tmp_path):
    import subprocess
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "worker", "--engine", "dummy",
                           "--prefetch", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--prefetch must be from 1 to" in proc.stderr
