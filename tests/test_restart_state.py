"""What must survive a runq restart does, through real runq and worker processes: fair-share
usage (derived from the stored attempts) still orders dispatch, and a run backing off waits out
its deadline.  (The 1 % bound on usage itself is tests/test_failure_kinds.py's, on the core.)"""
from __future__ import annotations

import datetime

import procs


def _request(runq, mtype, **fields) -> dict:
    client = procs.client(runq.port)
    try:
        reply = client.request(mtype, **fields)
    finally:
        client.close()
    assert reply["status"] == "ok", reply
    return reply


def _start(runq, user: str, **param) -> int:
    return _request(runq, "StartBatch", name=f"{user}'s", group="", user=user, engine="dummy", n_runs=1,
                    param=param)["batch_id"]


def _attempts(runq, bid: int) -> list[dict]:
    return _request(runq, "RunStatus", batch_id=bid, batch_index=0)["run"]["attempts"]


def _at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def _done(runq, bid: int) -> bool:
    return _request(runq, "BatchStatus", batch_id=bid, offset=0, limit=0)["batch"]["state"] != "active"


def test_fair_share_usage_orders_dispatch_after_a_restart(tmp_path):
    runq = procs.start_runq(tmp_path)
    worker = procs.start_worker(tmp_path, runq.port)
    try:
        heavy = _start(runq, "ann", step_count=4, step_delay=0.5)   # ann uses the worker for 2 s; bob never
        procs.wait_until(lambda: _done(runq, heavy), 30, what="ann's first batch done")
        worker.stop()
        runq.stop()
        runq = procs.start_runq(tmp_path, port=runq.port)
        ann = _start(runq, "ann", step_count=1, step_delay=0.2)      # ann asks first: FIFO would run it first
        bob = _start(runq, "bob", step_count=1, step_delay=0.2)
        worker = procs.start_worker(tmp_path, runq.port)
        procs.wait_until(lambda: _done(runq, ann) and _done(runq, bob), 30, what="both batches done")
        assert _at(_attempts(runq, bob)[0]["started"]) < _at(_attempts(runq, ann)[0]["started"]), \
            "after the restart runq forgot ann's usage: her run went first"
    finally:
        worker.stop()
        runq.stop()


def test_a_run_backing_off_waits_out_its_deadline_across_a_restart(tmp_path):
    conf = {"sched": {"backoff_base": 4}}
    runq = procs.start_runq(tmp_path, conf=conf)
    worker = procs.start_worker(tmp_path, runq.port)
    try:
        bid = _start(runq, "ann", step_count=0, fail="flaky", fail_attempts=1)   # fails once, transiently
        procs.wait_until(lambda: len(_attempts(runq, bid)) == 1 and _attempts(runq, bid)[0]["ended"], 20,
                         what="the first attempt failed")
        failed = _at(_attempts(runq, bid)[0]["ended"])
        runq.stop()
        runq = procs.start_runq(tmp_path, port=runq.port, conf=conf)   # long before its 4 s are over
        procs.wait_until(lambda: _done(runq, bid), 30, what="the run retried and finished")
        first, second = _attempts(runq, bid)
        assert first["outcome"] == "failed" and second["outcome"] == "finished", (first, second)
        assert _at(second["started"]) >= failed + 4.0 - 0.05, (first, second)
    finally:
        worker.stop()
        runq.stop()
