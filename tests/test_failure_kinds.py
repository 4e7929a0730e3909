"""Failure kinds, retry backoff, progress reset, fair share and priority in the coordinator,
driven without sockets (tests/test_coordinator.py's harness: real SQLite store, time as an argument)."""
import pytest

from simx import protocol
from simx.config import BatchDefaults, SchedConfig
from runq import startup
from runq.store import SqlStore
from worker.engines.base import Fatal, ProgramUnavailable
from test_coordinator import MEMORY, Harness, start


@pytest.fixture
def h(tmp_path):
    harness = Harness(MEMORY)
    yield harness
    harness.close()


def run_of(h, batch_id=1, index=0):
    return h.request("RunStatus", batch_id=batch_id, batch_index=index)["run"]


# kind sent (None: field absent, an old worker), max_attempts -> run state right after the report,
# whether the failure used an attempt, the failing worker's state, seconds until the run goes again
@pytest.mark.parametrize("kind, max_attempts, state, used, worker_state, again_after", [
    ("run", 3, "failed", True, "idle", None),          # can never succeed: failed at once
    ("worker", 1, "running", False, "broken", 0.0),    # this host cannot run it: another worker, no attempt used
    ("transient", 2, "waiting", True, "idle", 1.0),    # retried after the backoff
    (None, 2, "waiting", True, "idle", 1.0),           # absent = transient
    ("transient", 1, "failed", True, "idle", None),    # no attempts left
])
def test_a_failure_report_by_kind(h, kind, max_attempts, state, used, worker_state, again_after):
    w1 = h.worker("w1")
    start(h, 1, max_attempts=max_attempts)
    w2 = h.worker("w2")                                 # idle: takes whatever is dispatched next
    extra = {} if kind is None else {"kind": kind}
    h.report("w1", w1, h.assigned("w1")[-1], "WorkerFailedRun", message="boom", **extra)
    run = run_of(h)
    assert run["state"] == state
    assert [a["outcome"] for a in run["attempts"]] == ["failed"]
    assert h.coord.runs.get((1, 0)) is None or h.coord.runs[(1, 0)].failures == int(used)
    assert h.request("WorkerStatus", worker_id=w1)["worker"]["state"] == worker_state
    if again_after is None:
        assert h.batch()["batch"]["state"] == "failed"   # a batch with a failed run ends failed
        return
    if again_after:
        h.tick(again_after / 2)
        assert not h.assigned("w2") and not h.assigned("w1")[1:]
        h.tick(again_after / 2)
    got = h.assigned("w2")
    assert len(got) == 1 and got[0]["attempt"] == 2
    h.report("w2", w2, got[0])
    assert run_of(h)["state"] == "finished"


def test_a_broken_worker_gets_no_more_runs_and_says_why_until_it_restarts(h):
    w1 = h.worker("w1")
    start(h, 1)
    h.report("w1", w1, h.assigned("w1")[-1], "WorkerFailedRun", kind="worker",
             message="ProgramUnavailable: /opt/sim/bin/sim: not found")
    worker = h.request("WorkerStatus", worker_id=w1)["worker"]
    assert (worker["state"], worker["connected"]) == ("broken", True)
    assert "not found" in worker["broken"]
    # the reason is committed with the state: a reader (runq's reader process) that knows nothing
    # of the loop's memory shows both together
    stored = h.coord.store.reader().worker_rows(worker_id=w1)[0]
    assert stored["state"] == "broken" and "not found" in stored["broken"]
    start(h, 3)
    h.tick(5)
    assert len(h.assigned("w1")) == 1                    # nothing new for it
    assert h.request("BatchStatus", batch_id=2)["batch"]["n_waiting"] == 3
    h.heartbeat("w1", w1)                                # still connected and heard
    w1b = h.worker("w1-restarted")                        # the restarted process registers anew
    assert w1b != w1 and len(h.assigned("w1-restarted")) == 1


def test_backoff_doubles_per_failure_and_a_run_in_backoff_can_be_cancelled(h):
    wid = h.worker("w")
    start(h, 1, max_attempts=5)
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", kind="transient")
    h.tick(1.0)
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", kind="transient")
    h.tick(1.5)
    assert len(h.assigned("w")) == 2                    # the second failure waits 2 s
    h.tick(0.5)
    assert len(h.assigned("w")) == 3
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun")
    assert h.batch()["batch"]["n_waiting"] == 1
    reply = h.request("CancelRun", batch_id=1, batch_index=0)
    assert reply["status"] == "ok" and reply["run"]["state"] == "cancelled"
    h.tick(10)
    assert len(h.assigned("w")) == 3
    assert h.batch()["batch"]["state"] == "done"


def test_cancelling_a_batch_with_runs_in_backoff_counts_each_run_once(h):
    wid = h.worker("w")
    start(h, 4, max_attempts=3)
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun")   # run 0 in backoff; run 1 dispatched
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun")   # run 1 in backoff; run 2 dispatched
    batch = h.request("CancelBatch", batch_id=1)["batch"]
    assert (batch["n_cancelled"], batch["n_waiting"], batch["n_running"], batch["state"]) == (4, 0, 0, "cancelled")


def test_progress_and_message_go_back_to_zero_when_a_run_is_requeued(h):
    wid = h.worker("w")
    start(h, 1)
    first = h.assigned("w")[-1]
    h.send("w", "WorkerUpdate", worker_id=wid, **{k: first[k] for k in ("batch_id", "batch_index", "attempt")},
           progress=0.6, message="60% done")
    assert (run_of(h)["progress"], run_of(h)["message"]) == (0.6, "60% done")
    h.tick(31)                                            # lease lost: back to waiting
    run = run_of(h)
    assert (run["state"], run["progress"], run["message"]) == ("waiting", 0.0, None)
    assert run["attempts"][-1]["message"] == "worker lease expired"   # the reason stays with the attempt


def test_an_unknown_kind_is_refused_and_the_run_kept(h):
    wid = h.worker("w")
    start(h, 1)
    out = h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", kind="cosmic")
    assert out[0][1]["type"] == "RunqError" and "'kind'" in out[0][1]["message"] and out[1][1] is None
    assert run_of(h)["state"] == "running"


def dispatch_owners(h, wid, n):
    """Finish the worker's current run n times, noting whose run it was handed next."""
    owners = []
    for _ in range(n):
        a = h.assigned("w")[-1]
        h.now += 1.0
        h.report("w", wid, a)
        owners.append(h.request("BatchStatus", batch_id=h.assigned("w")[-1]["batch_id"], limit=1)["batch"]["user"])
    return owners


def test_a_later_small_batch_of_another_owner_goes_first(h):
    wid = h.worker("w")
    start(h, 100, user="a")
    dispatch_owners(h, wid, 5)
    start(h, 3, user="b")
    assert dispatch_owners(h, wid, 4) == ["b", "b", "b", "a"]


def test_shares_set_the_dispatch_ratio(tmp_path):
    h = Harness(MEMORY)
    h.coord = startup.coordinator(h.store, h.cfg, BatchDefaults(), now=h.now, sched=SchedConfig(shares=(("a", 3.0),)))
    wid = h.worker("w")
    start(h, 1000, user="a")
    start(h, 1000, user="b")
    owners = dispatch_owners(h, wid, 80)
    assert abs(owners.count("a") - 60) <= 1 and abs(owners.count("b") - 20) <= 1


def test_priority_orders_one_owners_batches_and_survives_a_restart(h):
    wid = h.worker("w")
    start(h, 10, user="a")
    assert h.request("StartBatch", engine="dummy", n_runs=2, user="a", priority=5)["batch"]["priority"] == 5
    h.report("w", wid, h.assigned("w")[-1])
    assert [h.assigned("w")[-1]["batch_id"]] == [2]
    h.restart()
    wid = h.worker("w2")
    assert h.assigned("w2")[-1]["batch_id"] == 2
    assert h.batch(2)["batch"]["priority"] == 5 and h.batch(1)["batch"]["priority"] == 0


@pytest.mark.parametrize("priority", [1_000_001, -1_000_001])
def test_priority_out_of_bounds_is_refused_naming_the_field(h, priority):
    reply = h.request("StartBatch", engine="dummy", n_runs=1, priority=priority)
    assert reply["code"] == 400 and "priority" in reply["message"]
    with pytest.raises(protocol.ProtocolError, match="'priority'"):
        protocol.message("StartBatch", engine="dummy", n_runs=1, priority=1.5)


def test_old_database_rows_get_priority_zero(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    store = SqlStore(url)
    store.add_batch({"id": 1, "name": "", "group": "", "user": "", "engine": "dummy", "n_runs": 1, "param": {},
                     "max_attempts": 1, "max_requeues": 1, "state": "active", "n_waiting": 1, "start_time": 0.0})
    store.commit()
    with store.engine.begin() as conn:    # the table as an older runq left it: no priority column
        conn.exec_driver_sql("ALTER TABLE batches DROP COLUMN priority")
    store.db.close()
    store = SqlStore(url)                    # migration: the column is added, old rows get 0
    assert store.reader().batch_row(1)["priority"] == 0
    store.db.close()
    h = Harness(url)                      # and runq recovers the batch
    assert h.coord.batches[1].priority == 0
    h.close()


@pytest.mark.parametrize("exc, kind", [
    (Fatal("bad input"), "run"),
    (ProgramUnavailable(2, "No such file or directory: '/opt/sim'"), "worker"),
    (RuntimeError("flaky"), "transient"),
])
def test_the_worker_reports_the_kind_of_its_engine_failure(exc, kind):
    from test_worker_job import finished_job

    def fail(progress, abort):
        raise exc
    mtype, fields = finished_job(fail).outcome()
    assert mtype == "WorkerFailedRun" and fields["kind"] == kind
    protocol.message(mtype, worker_id=1, batch_id=1, batch_index=0, attempt=1, **fields)   # valid on the wire


def test_a_burst_of_free_workers_is_shared_between_owners(h):
    """Runs in progress count at once (an estimate at dispatch), so ten workers arriving together
    do not all go to the owner that happens to be first."""
    start(h, 100, user="a")
    start(h, 100, user="b")
    for i in range(10):
        h.worker(f"w{i}")
    users = [h.batch(h.assigned(f"w{i}")[-1]["batch_id"])["batch"]["user"] for i in range(10)]
    assert users.count("a") == 5 and users.count("b") == 5


def test_a_run_in_backoff_waits_out_its_deadline_across_a_restart(h):
    wid = h.worker("w")
    start(h, 1, max_attempts=3)
    failed_at = h.now
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", message="flaky")   # backoff: 1 s
    assert h.batch()["batch"]["n_waiting"] == 1
    h.now += 0.5
    h.restart()                                     # the run's retry_at is stored with it
    h.worker("w2")
    assert h.assigned("w2") == [], "dispatched before its backoff was over"
    assert h.coord.next_deadline() == failed_at + 1.0
    h.tick(0.499)
    assert h.assigned("w2") == []
    h.tick(0.001)
    assert h.assigned("w2")[-1]["attempt"] == 2


def test_fair_share_usage_after_a_restart_is_what_it_would_have_decayed_to(h):
    """Usage is derived at start-up from the stored attempts' times (nothing more is written per
    run): after a restart every owner's usage, and so every rank, is within 1 % of what it
    would have been at the same instant without the restart.  (A run in progress is charged
    an estimate of its length either way: its owner's recent mean.)"""
    wids = {c: h.worker(c) for c in ("w1", "w2")}
    start(h, 3, user="ann")
    start(h, 2, user="bob")
    step = 0
    while any(h.coord.batches):
        for conn in ("w1", "w2"):
            mine = [a for a in h.assigned(conn) if h.coord.runs.get((a["batch_id"], a["batch_index"]))]
            if mine:
                h.now += 100 if mine[-1]["batch_id"] == 1 else 30   # ann's runs take 100 s, bob's 30 s
                h.report(conn, wids[conn], mine[-1])
        step += 1
        h.now += 200 * step                                         # ended at different times: decay differs
    h.now += 1000
    before = {o: h.coord.fairshare.usage(o, h.now) for o in ("ann", "bob")}
    assert before["ann"] > before["bob"] > 0
    h.restart()
    after = {o: h.coord.fairshare.usage(o, h.now) for o in ("ann", "bob")}
    for owner in before:
        assert after[owner] == pytest.approx(before[owner], rel=0.01), (owner, before, after)
    h.now += 3600                     # and they decay alike from there (half-life 1 h)
    assert h.coord.fairshare.usage("bob", h.now) == pytest.approx(after["bob"] / 2, rel=0.01)
