"""Prefetch, runq's side (issue 10): a worker announcing `prefetch: N` holds up to N
assignments; a held run is `assigned` until WorkerStartedRun, revocable, and its time limit
starts when it starts.  Old workers (no prefetch field) are unchanged.  Fake workers drive a
real coordinator and store."""
from simx.config import RunqConfig
from test_coordinator import MEMORY, Harness, start

CFG = RunqConfig(heartbeat_interval=10, lease=30, grace=60)


def harness(tmp_path):
    return Harness(MEMORY, cfg=CFG)


def prefetcher(h, conn, n, **traits):
    h.open(conn)
    out = h.send(conn, "WorkerReady", host="h-" + conn, pid=1, group=traits.get("group", ""),
                 user=traits.get("user", ""), engine="dummy", cost=1.0, speed=1.0, priority=0.0, prefetch=n)
    assert out[0][1]["type"] == "RunqAcceptWorker"
    return out[0][1]["worker_id"]


def key(a):
    return {k: a[k] for k in ("batch_id", "batch_index", "attempt")}


def started(h, conn, wid, a):
    return h.send(conn, "WorkerStartedRun", worker_id=wid, **key(a))


def states_of(h, batch_id=1):
    return [r["state"] for r in h.batch(batch_id)["runs"]]


def test_a_prefetching_worker_holds_up_to_n_runs_assigned_until_it_starts_them(tmp_path):
    h = harness(tmp_path)
    wid = prefetcher(h, "w", 3)
    start(h, 5)
    given = h.assigned("w")
    assert [(a["batch_index"], a["seq"]) for a in given] == [(0, 1), (1, 2), (2, 3)]
    assert states_of(h) == ["assigned"] * 3 + ["waiting"] * 2
    assert h.batch()["batch"]["n_running"] == 3            # in flight
    started(h, "w", wid, given[0])
    assert states_of(h)[:3] == ["running", "assigned", "assigned"]
    h.report("w", wid, given[0])                           # room again: one more
    assert [a["batch_index"] for a in h.assigned("w")] == [0, 1, 2, 3]
    for a in h.assigned("w")[1:]:
        started(h, "w", wid, a)
        h.report("w", wid, a)
    started(h, "w", wid, h.assigned("w")[-1])
    h.report("w", wid, h.assigned("w")[-1])
    assert h.batch()["batch"]["state"] == "done"
    assert [a["attempt"] for a in h.assigned("w")] == [1] * 5


def test_an_old_worker_without_prefetch_is_unchanged(tmp_path):
    h = harness(tmp_path)
    h.worker("w")
    start(h, 3)
    assert len(h.assigned("w")) == 1 and states_of(h) == ["running", "waiting", "waiting"]


def test_the_time_limit_starts_when_the_run_starts(tmp_path):
    h = harness(tmp_path)
    wid = prefetcher(h, "w", 2)
    start(h, 2, time_limit=10)
    first, second = h.assigned("w")
    started(h, "w", wid, first)
    h.tick(8)
    h.heartbeat("w", wid, first, second)
    h.report("w", wid, first)
    started(h, "w", wid, second)                            # t+8: its limit runs to t+18
    h.tick(5)
    h.heartbeat("w", wid, second)
    assert not h.to("w", "RunqAbortRun")                    # a limit from the assignment would have fired
    h.tick(6)
    assert "time limit" in h.to("w", "RunqAbortRun")[-1]["reason"]


def test_an_idle_worker_takes_a_run_held_behind_a_long_one(tmp_path):
    h = harness(tmp_path)
    busy = prefetcher(h, "busy", 2)
    start(h, 2)
    long, held = h.assigned("busy")
    started(h, "busy", busy, long)                          # computes run 0; run 1 waits behind it
    prefetcher(h, "idle", 2)
    abort = h.to("busy", "RunqAbortRun")
    assert [(m["batch_index"], m["attempt"]) for m in abort] == [(1, 1)]
    taken = h.assigned("idle")
    assert [(a["batch_index"], a["attempt"]) for a in taken] == [(1, 2)]
    run = h.request("RunStatus", batch_id=1, batch_index=1)["run"]
    assert run["state"] == "assigned" and run["worker_id"] == 2
    assert [a["outcome"] for a in run["attempts"]] == ["revoked"]
    # the old holder's answer is stale, its start of the revoked run is ignored, nothing breaks
    assert h.report("busy", busy, held, "WorkerAbortedRun")[-1][1]["accepted"] is False
    started(h, "busy", busy, held)
    assert h.batch()["batch"]["n_running"] == 2 and h.batch()["batch"]["n_waiting"] == 0


def test_held_runs_go_back_when_the_worker_is_lost_or_does_not_list_them(tmp_path):
    h = harness(tmp_path)
    wid = prefetcher(h, "w", 3)
    start(h, 3)
    a0, a1, a2 = h.assigned("w")
    started(h, "w", wid, a0)
    h.heartbeat("w", wid, a0, a1)                           # seen every seq, a2 not listed: lost on the way
    assert states_of(h) == ["running", "assigned", "assigned"]   # given again at once (room)
    assert [(a["batch_index"], a["attempt"]) for a in h.assigned("w")[3:]] == [(2, 2)]
    h._run(h.coord.disconnected("w", h.now))
    h.tick(61)                                              # past grace: the running one and the held ones
    assert states_of(h) == ["waiting"] * 3
    run = h.request("RunStatus", batch_id=1, batch_index=1)["run"]
    assert [a["outcome"] for a in run["attempts"]] == ["revoked"]


def test_cancel_reaches_held_runs_and_restart_requeues_them(tmp_path):
    h = harness(tmp_path)
    wid = prefetcher(h, "w", 2)
    start(h, 2)
    start(h, 2)
    a0, a1 = h.assigned("w")
    started(h, "w", wid, a0)
    h.request("CancelRun", batch_id=1, batch_index=1)
    assert [(m["batch_index"], m["reason"]) for m in h.to("w", "RunqAbortRun")] == [(1, "run cancelled")]
    assert states_of(h) == ["running", "cancelled"]
    refill = h.assigned("w")[-1]                            # its room went to batch 2
    assert (refill["batch_id"], refill["batch_index"]) == (2, 0)
    h.restart()
    assert states_of(h, 2) == ["waiting", "waiting"]        # held, never started: back in the queue
    assert states_of(h) == ["running", "cancelled"]         # the running one waits for its worker (grace)


def test_a_stopping_worker_gives_back_what_it_held(tmp_path):
    h = harness(tmp_path)
    wid = prefetcher(h, "w", 3)
    start(h, 3)
    a0 = h.assigned("w")[0]
    started(h, "w", wid, a0)
    h.report("w", wid, a0, "WorkerStoppedRun")
    assert states_of(h) == ["waiting"] * 3
    assert len(h.assigned("w")) == 3                        # draining: nothing new
