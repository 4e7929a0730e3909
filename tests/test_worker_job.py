"""Job (the engine thread of one run) and Backoff as units."""
from __future__ import annotations

import json
import threading

import pytest

from simx import protocol
from worker.backoff import Backoff
from worker.engines import Aborted, Engine
from worker.job import MAX_DATA_BYTES, EngineThread, Job, jsonable, run_name


class Scripted(Engine):
    """Runs ``behave(progress, abort)`` as the engine body."""

    name = "dummy"

    def __init__(self, behave):
        self.behave = behave

    def run(self, param, progress, abort, context):
        return self.behave(progress, abort)


def assignment(**param):
    return protocol.message("RunqAssignRun", batch_id=4, batch_index=2, attempt=1, seq=1, engine="dummy",
                            param=param, time_limit=30.0)


def finished_job(behave, abort_reason=None):
    wakes = threading.Semaphore(0)
    job = Job(assignment(), Scripted(behave), 11, wakes.release)
    if abort_reason:
        job.request_abort(abort_reason)
    job.start()
    assert job.wait(5)
    return job


def test_result_is_reported_as_finished():
    job = finished_job(lambda progress, abort: {"answer": 42})
    assert job.outcome() == ("WorkerFinishedRun", {"data": {"answer": 42}})


def test_context_names_the_run():
    seen = {}

    class Peek(Engine):
        def run(self, param, progress, abort, context):
            seen["context"] = context

    job = Job(assignment(), Peek(), 11, lambda: None)
    job.start()
    assert job.wait(5)
    ctx = seen["context"]
    assert (ctx.batch_id, ctx.batch_index, ctx.attempt, ctx.worker_id, ctx.time_limit) == (4, 2, 1, 11, 30.0)
    assert run_name(job.key) == "4/2#1"


def test_exception_is_reported_as_failed_with_traceback_tail():
    def boom(progress, abort):
        raise ValueError("x" * 10000)

    mtype, fields = finished_job(boom).outcome()
    assert mtype == "WorkerFailedRun"
    assert fields["message"].endswith("x" * 100) and len(fields["message"]) <= 4000
    assert len(fields["traceback"]) <= 4000 and "ValueError" in fields["traceback"]
    protocol.message(mtype, worker_id=1, batch_id=1, batch_index=1, attempt=1, **fields)  # valid on the wire


def test_exception_after_an_abort_request_is_reported_as_aborted():
    def obey(progress, abort):
        if abort.is_set():
            raise Aborted("stopped")
        return "ran anyway"

    job = finished_job(obey, abort_reason="cancelled")
    assert job.outcome() == ("WorkerAbortedRun", {"message": "cancelled"})


def test_aborted_without_request_is_a_failure():
    def spontaneous(progress, abort):
        raise Aborted("why")

    mtype, fields = finished_job(spontaneous).outcome()
    assert mtype == "WorkerFailedRun" and "without an abort request" in fields["message"]


def test_sys_exit_in_an_engine_fails_the_run():
    def leave(progress, abort):
        raise SystemExit(3)

    assert finished_job(leave).outcome()[0] == "WorkerFailedRun"


def test_progress_keeps_the_latest_value_clamped_and_wakes_once():
    wakes = []
    job = Job(assignment(), Scripted(lambda p, a: None), 1, lambda: wakes.append(1))
    job.progress(0.1)
    job.progress(2, "over")
    job.progress(float("nan"))
    assert wakes == [1]
    assert job.take_progress() == (1.0, "over")
    assert job.take_progress() is None
    job.progress(-1)
    assert job.take_progress() == (0.0, None) and wakes == [1, 1]


@pytest.mark.parametrize("data, expected", [
    ({"a": [1, 2.5, None, "é"]}, {"a": [1, 2.5, None, "é"]}),
    ((1, 2), (1, 2)),  # json encodes tuples as lists; runq stores the list
    ({1, 2}, "{1, 2}"),
    (float("nan"), "nan"),
    (None, None),
])
def test_jsonable_coerces_what_json_cannot_encode(data, expected):
    assert jsonable(data) == expected


def test_too_large_a_result_fails_the_run():
    big = "x" * (MAX_DATA_BYTES + 1)
    mtype, fields = finished_job(lambda progress, abort: big).outcome()
    assert mtype == "WorkerFailedRun" and "too large" in fields["message"]


def test_result_just_under_the_limit_fits_in_a_frame():
    data = jsonable("x" * (MAX_DATA_BYTES - 10))
    msg = protocol.message("WorkerFinishedRun", worker_id=1, batch_id=1, batch_index=1, attempt=1, data=data)
    assert len(protocol.encode(msg)) <= protocol.MAX_FRAME + 4
    assert json.loads(protocol.encode(msg)[4:])["data"] == data


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(initial=0.2, cap=1.0, jitter=lambda: 1.0)  # factor 1.0: no jitter
    assert [round(backoff.next(), 3) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == pytest.approx(0.2)


def test_backoff_jitter_stays_between_half_and_full_delay():
    low = Backoff(initial=0.2, cap=10, jitter=lambda: 0.0)
    assert low.next() == pytest.approx(0.1)
    for _ in range(100):
        low.next()
    assert low.next() == pytest.approx(5.0)  # never overflows, stays at half the cap


@pytest.mark.parametrize("data, reason", [
    ({"x": "\ud800"}, "lone surrogate"),
    ([2 ** 64], "beyond 64 bits"),
    ({"a": json.loads("[" * 80 + "]" * 80)}, "nests deeper"),
])
def test_a_result_runq_would_refuse_fails_the_run_with_the_reason(data, reason):
    mtype, fields = finished_job(lambda progress, abort: data).outcome()
    assert mtype == "WorkerFailedRun" and reason in fields["message"]


def test_nul_and_surrogates_in_an_engine_error_still_make_a_sendable_report():
    def engine(progress, abort):
        raise RuntimeError("bad\0output \udcff")
    mtype, fields = finished_job(engine).outcome()
    assert mtype == "WorkerFailedRun"
    protocol.message(mtype, worker_id=1, batch_id=1, batch_index=0, attempt=1, **fields)


def test_one_engine_thread_serves_run_after_run():
    runner = EngineThread()
    threads = []
    for i in range(5):
        job = Job(assignment(), Scripted(lambda p, a: threading.current_thread().name), 1, lambda: None)
        job.start(runner)
        assert job.wait(5)
        threads.append(job.outcome()[1]["data"])
    assert len(set(threads)) == 1 and threads[0] != threading.current_thread().name
    assert len(runner.threads) == 1


def test_a_stuck_engine_does_not_hold_up_the_next_run():
    runner = EngineThread()
    release = threading.Event()
    stuck = Job(assignment(), Scripted(lambda p, a: release.wait(10)), 1, lambda: None)
    stuck.start(runner)
    stuck.request_abort("taken back")   # this engine ignores it
    nxt = Job(assignment(), Scripted(lambda p, a: "next"), 1, lambda: None)
    nxt.start(runner)
    assert nxt.wait(5) and nxt.outcome() == ("WorkerFinishedRun", {"data": "next"})
    assert not stuck.done() and len(runner.threads) == 2
    release.set()
    assert stuck.wait(5)


class Trivial(Engine):
    name = "dummy"

    def runs_inline(self, param):
        return param.get("inline", False)

    def run(self, param, progress, abort, context):
        return threading.current_thread().name


def test_a_run_the_engine_declares_trivial_is_computed_inline_without_a_wakeup():
    wakes = []
    runner = EngineThread()
    job = Job(assignment(inline=True), Trivial(), 1, lambda: wakes.append(1))
    job.start(runner)
    assert job.done() and job.outcome()[1]["data"] == threading.current_thread().name
    assert wakes == [] and runner.threads == []
    other = Job(assignment(inline=False), Trivial(), 1, lambda: wakes.append(1))
    other.start(runner)
    assert other.wait(5) and other.outcome()[1]["data"] != threading.current_thread().name and wakes == [1]


def test_a_zero_step_dummy_run_is_trivial_and_others_are_not():
    from worker.engines.dummy import DummyEngine
    engine = DummyEngine()
    assert engine.runs_inline({"step_count": 0})
    assert not engine.runs_inline({}) and not engine.runs_inline({"step_count": 1, "step_delay": 0})


def test_abort_flag_wakes_every_waiter_and_stays_set():
    from worker.job import AbortFlag
    flag = AbortFlag()
    assert not flag.is_set() and flag.wait(0) is False and flag.wait(0.01) is False
    woke = []
    waiters = [threading.Thread(target=lambda: woke.append(flag.wait(5))) for _ in range(4)]
    for t in waiters:
        t.start()
    flag.set()
    flag.set()   # twice is harmless
    for t in waiters:
        t.join(5)
    assert woke == [True] * 4 and flag.is_set() and flag.wait() and flag.wait(0)


def test_abort_flag_wakes_a_waiter_that_made_its_lock_before_the_set():
    from procs import wait_until
    from worker.job import AbortFlag
    flag = AbortFlag()
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(10)))
    waiter.start()
    wait_until(lambda: flag._lock is not None, 5, what="the waiter made the flag's lock")   # it waits now
    flag.set()
    waiter.join(5)
    assert woke == [True]


def test_jobs_of_one_worker_share_a_lock_yet_keep_their_own_outcomes():
    engine = Scripted(lambda progress, abort: "done")
    jobs = [Job(dict(assignment(), batch_index=i), engine, 1, lambda: None) for i in range(2)]
    for job in jobs:
        job.start()
        assert job.wait(5)
    assert jobs[0]._lock is jobs[1]._lock
    assert [job.outcome() for job in jobs] == [("WorkerFinishedRun", {"data": "done"})] * 2
    assert [job.key for job in jobs] == [(4, 0, 1), (4, 1, 1)] and jobs[1].context.batch_index == 1
