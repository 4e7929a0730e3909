"""What a worker writes at the default level (INFO): a periodic summary of the runs it ended, no line
per finished run, failures at WARNING naming their run.  Driven by hand with explicit times."""
from __future__ import annotations

import logging
import math

import pytest

from simx import auth, protocol
from worker.engines import Engine
from worker.session import Session, Traits
from worker.summary import Summary, duration

TRAITS = Traits(host="h", pid=1, group="", user="", engine="dummy", cost=1, speed=1, priority=0)


class Inline(Engine):
    """Computes on the loop thread at once: finishes, or fails when the param says so."""

    name = "dummy"

    def runs_inline(self, param):
        return True

    def run(self, param, progress, abort, context):
        if param.get("fail"):
            raise ValueError(param["fail"])
        return "ok"


@pytest.fixture
def session():
    s = Session(TRAITS, Inline(), lambda msg: None, lambda: None, summary_interval=60.0)
    s.hello()
    s.handle(protocol.message("RunqChallenge", version=protocol.VERSION, instance="i", nonce=auth.new_nonce(),
                              proof=None), 0.0)
    s.handle(protocol.message("RunqAcceptWorker", worker_id=3, heartbeat_interval=0, keep_run=False), 0.0)
    return s


def run(session, index, now, ack=True, **param):
    key = dict(batch_id=1, batch_index=index, attempt=1)
    session.handle(protocol.message("RunqAssignRun", **key, seq=index + 1, engine="dummy", param=param,
                                    time_limit=None), now)
    if ack:
        session.handle(protocol.message("RunqAck", **key, accepted=True), now)


def lines(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


@pytest.fixture
def info(caplog):
    caplog.set_level(logging.INFO, logger="worker")
    return caplog


def test_finished_runs_write_no_line_until_the_summary_is_due(session, info):
    for i in range(3):
        run(session, i, now=10.0 + i)
    session.advance(69.9)
    assert lines(info) == [] and session.soonest(69.9) == 70.0   # due a minute after the first run ended
    session.advance(70.0)
    assert lines(info) == ["worker 3: runs ended in the last 60s, engine dummy: 3 finished, 0 failed; "
                           "mean run time 0 ms"]
    session.advance(200.0)
    assert len(lines(info)) == 1 and session.soonest(200.0) == math.inf   # nothing more: no line, no wakeup


def test_a_failed_run_is_a_warning_naming_it_and_counted(session, info):
    run(session, 0, now=1.0)
    run(session, 1, now=2.0, fail="bad input")
    assert lines(info) == ["worker 3: run 1/1#1 failed: ValueError: bad input"]
    assert info.records[-1].levelno == logging.WARNING
    session.advance(61.0)
    assert lines(info)[-1].endswith("engine dummy: 1 finished, 1 failed; mean run time 0 ms")


def test_a_refused_report_is_a_warning(session, info):
    run(session, 0, now=1.0, ack=False)
    session.handle(protocol.message("RunqAck", batch_id=1, batch_index=0, attempt=1, accepted=False,
                                    message="stale"), 1.0)
    assert lines(info, logging.WARNING) == ["worker 3: finished report of run 1/0#1 acked (accepted False: stale)"]


def test_each_run_has_its_lines_at_debug(session, caplog):
    caplog.set_level(logging.DEBUG, logger="worker")
    run(session, 0, now=1.0)
    assert lines(caplog, logging.DEBUG) == ["worker 3: assigned run 1/0#1", "worker 3: run 1/0#1 finished",
                                            "worker 3: finished report of run 1/0#1 acked (accepted True)"]


def test_the_summary_is_written_at_exit(session, info):
    run(session, 0, now=1.0)
    session.stop(5.0)
    session.log_summary(5.0)
    assert lines(info) == ["worker 3: stopping", "worker 3: runs ended in the last 4s, engine dummy: "
                                                 "1 finished, 0 failed; mean run time 0 ms"]


@pytest.mark.parametrize("ended, line", [
    ([("WorkerFinishedRun", 0.5)] * 2, "engine e: 2 finished, 0 failed; mean run time 500 ms"),
    ([("WorkerFailedRun", 3.0), ("WorkerAbortedRun", 1.0)], "engine e: 0 finished, 1 failed, 1 aborted; "
                                                            "mean run time 2 s"),
    ([("WorkerStoppedRun", 7200.0)], "engine e: 0 finished, 0 failed, 1 stopped; mean run time 2 h"),
])
def test_summary_line_counts_each_outcome(ended, line):
    s = Summary("e", interval=10.0)
    for report, seconds in ended:
        s.record(report, seconds, now=100.0)
    assert s.due == 110.0
    assert s.take(110.0) == f"runs ended in the last 10s, {line}"
    assert s.take(120.0) is None and s.due == math.inf


@pytest.mark.parametrize("seconds, text", [(0.000041, "0.041 ms"), (0.8123, "812 ms"), (3.21, "3.21 s"),
                                           (150, "2.5 min"), (4680, "78 min"), (7200, "2 h")])
def test_duration_reads_as_an_operator_would(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("interval", [0, -1, math.nan])
def test_summary_interval_must_be_positive(interval):
    with pytest.raises(ValueError):
        Summary("e", interval)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_summary_interval_flag_refuses_junk(value, capsys):
    from worker.__main__ import main
    assert main(["--engine", "dummy", f"--summary-interval={value}"]) == 2
    assert "--summary-interval must be a positive number of seconds" in capsys.readouterr().err
