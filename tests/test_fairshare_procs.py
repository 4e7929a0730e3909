"""Fair share and priority end to end: real runq and dummy workers with short steps.

* user A submits 2,000 runs, then user B 20: B's runs all start before A's batch is 10% further along;
* with shares 3:1 the dispatch ratio over a window is within 10% of 3:1;
* a later high-priority batch of one owner starts before an earlier low-priority one's waiting runs.
"""
import pytest

import procs
from simx.client import RunqClient
from test_failure_kinds_procs import start_runq_with_conf

WORKERS = 4
STEP = {"step_count": 1, "step_delay": 0.03}


@pytest.fixture(scope="module")
def runq(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fairshare")
    proc = start_runq_with_conf(tmp, {"sched": {"shares": {"three": 3, "one": 1}}})
    started = [procs.start_worker(tmp, proc.port, name=f"w{i}") for i in range(WORKERS)]
    proc.client = RunqClient("127.0.0.1", proc.port)
    try:
        procs.wait_until(lambda: proc.client.request("Ping")["runq"]["workers_idle"] == WORKERS, 30,
                         what=f"{WORKERS} idle workers")
        yield proc
    finally:
        for p in started:
            p.stop()
        proc.stop()


@pytest.fixture
def submit(runq):
    """submit(user, n_runs, priority=0) -> batch id; every batch is cancelled when the test ends."""
    ids = []

    def submit(user, n_runs, priority=0):
        reply = runq.client.request("StartBatch", name=user, user=user, engine="dummy", n_runs=n_runs,
                                    param=STEP, priority=priority)
        assert reply["status"] == "ok", reply
        ids.append(reply["batch_id"])
        return reply["batch_id"]
    yield submit
    for bid in ids:
        runq.client.request("CancelBatch", batch_id=bid)
    procs.wait_until(lambda: runq.client.request("Ping")["runq"]["workers_idle"] == WORKERS, 20,
                     what="workers idle again")


def batch(runq, bid):
    return runq.client.request("BatchStatus", batch_id=bid, offset=0, limit=1)["batch"]


def started(runq, bid):
    """Runs of the batch ever dispatched (running or ended)."""
    b = batch(runq, bid)
    return b["n_running"] + b["n_finished"] + b["n_failed"]


def test_a_small_batch_of_another_user_is_not_starved_by_a_huge_one(runq, submit):
    a = submit("alice", 2000)
    procs.wait_until(lambda: batch(runq, a)["n_finished"] >= 40, 30, what="alice's batch under way")
    b = submit("bob", 20)
    before = started(runq, a)
    procs.wait_until(lambda: batch(runq, b)["n_waiting"] == 0, 30, what="all of bob's runs started")
    after = started(runq, a)
    assert after - before < 200, f"alice's batch moved {after - before} runs before bob's 20 all started"


def test_shares_three_to_one_give_three_dispatches_to_one(runq, submit):
    three, one = submit("three", 2000), submit("one", 2000)

    def total():
        return started(runq, three) + started(runq, one)
    procs.wait_until(lambda: total() >= 80, 30, what="warm-up")
    a0, b0 = started(runq, three), started(runq, one)
    procs.wait_until(lambda: total() >= a0 + b0 + 320, 60, interval=0.2, what="a window of 320 dispatches")
    da, db = started(runq, three) - a0, started(runq, one) - b0
    assert abs(da / db / 3 - 1) <= 0.10, f"dispatch ratio {da}:{db} = {da / db:.2f}, want 3 within 10%"


def test_a_later_high_priority_batch_goes_before_an_earlier_low_priority_one(runq, submit):
    low = submit("carol", 40)
    procs.wait_until(lambda: batch(runq, low)["n_running"] == WORKERS, 10, what="the low-priority batch running")
    high = submit("carol", 8, priority=10)
    procs.wait_until(lambda: batch(runq, high)["state"] == "done", 20, what="the high-priority batch done")
    submitted = batch(runq, high)["start_time"]
    high_starts = [r["started"] for r in runs(runq, high)]
    low_starts = [r["started"] for r in runs(runq, low) if r["started"]]
    # no run of the earlier batch started between the later batch's submission and its last start
    assert not [t for t in low_starts if submitted < t < max(high_starts)], (submitted, high_starts, low_starts)
    assert [t for t in low_starts if t > max(high_starts)], "the low-priority batch had no waiting runs left"
    assert batch(runq, high)["priority"] == 10 and batch(runq, low)["priority"] == 0


def runs(runq, bid):
    return runq.client.request("BatchStatus", batch_id=bid, offset=0, limit=100)["runs"]


def test_batch_priority_through_runweb(stack):
    status, _, reply = procs.http("POST", f"{stack.url}/batch/new",
                                  {"engine": "dummy", "n_runs": 1, "param": {"step_count": 0}, "priority": 7})
    assert status == 201, reply
    status, _, view = procs.http("GET", f"{stack.url}/batch/{reply['batch_id']}",
                                 headers={"Accept": "application/json"})
    assert status == 200 and view["batch"]["priority"] == 7
    for bad in ("high", 2.5, 10**7):
        status, _, reply = procs.http("POST", f"{stack.url}/batch/new", {"engine": "dummy", "n_runs": 1, "priority": bad})
        assert status == 400 and "'priority'" in str(reply), reply
