"""Session (the worker's protocol state) driven by hand: explicit times, captured messages, no sockets."""
from __future__ import annotations

import threading

import pytest

from simx import auth, protocol
from worker.engines import Aborted, Engine
from worker.session import Session, Traits

TRAITS = Traits(host="h", pid=1, group="", user="", engine="dummy", cost=1, speed=1, priority=0)


class Gate(Engine):
    """Reports progress when told to and finishes when its gate opens."""

    name = "dummy"

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.progress = None

    def run(self, param, progress, abort, context):
        self.progress = progress
        self.started.set()
        while not self.gate.wait(0.01):
            if abort.is_set():
                raise Aborted()
        return "done"


@pytest.fixture
def engine():
    e = Gate()
    yield e
    e.gate.set()


@pytest.fixture
def sent():
    return []


@pytest.fixture
def session(engine, sent):
    s = Session(TRAITS, engine, sent.append, lambda: None, update_interval=0.2,
                stop_timeout=5.0, drain_linger=0.5)
    s.sent_to_test = sent
    return s


def challenge(session, instance="inst-1"):
    """A new connection: Hello out, runq's challenge in (no secret); the session sends Auth + registration."""
    session.hello()
    session.handle(protocol.message("RunqChallenge", version=protocol.VERSION, instance=instance,
                                    nonce=auth.new_nonce(), proof=None), 0.0)


def accept(session, now=0.0, worker_id=3, interval=10.0, keep_run=False):
    challenge(session)
    del session.sent_to_test[:]
    session.handle(protocol.message("RunqAcceptWorker", worker_id=worker_id, heartbeat_interval=interval,
                                    keep_run=keep_run), now)


def assign(session, engine, now=0.0, attempt=1):
    session.handle(protocol.message("RunqAssignRun", batch_id=1, batch_index=0, attempt=attempt, seq=attempt,
                                    engine="dummy", param={}, time_limit=None), now)
    assert engine.started.wait(5)
    return (1, 0, attempt)


def types(sent):
    return [m["type"] for m in sent]


def finish(session, engine, now):
    engine.gate.set()
    session.job.wait(5)
    session.advance(now)


def test_registration_is_ready_first_then_reconnect_naming_the_run(session, engine):
    assert session.hello()["type"] == "Hello"
    assert session.registration()["type"] == "WorkerReady"
    accept(session)
    key = assign(session, engine)
    hello = session.registration()
    assert hello["type"] == "WorkerReconnect" and hello["worker_id"] == 3 and protocol.run_key(hello) == key


def test_heartbeats_are_sent_every_interval(session, sent):
    accept(session, now=100.0, interval=10.0)
    session.advance(109.9)
    assert sent == []
    session.advance(110.0)
    assert types(sent) == ["WorkerHeartbeat"]
    assert 120.0 in session.due(110.0)
    session.advance(115.0)
    assert len(sent) == 1


def test_progress_is_sent_at_most_once_per_interval(session, engine, sent):
    accept(session)
    assign(session, engine)
    engine.progress(0.1)
    session.advance(1.0)
    engine.progress(0.2)
    session.advance(1.1)
    assert [m["progress"] for m in sent if m["type"] == "WorkerUpdate"] == [0.1]
    assert 1.2 in session.due(1.1)
    engine.progress(0.3)
    session.advance(1.2)
    assert [m["progress"] for m in sent if m["type"] == "WorkerUpdate"] == [0.1, 0.3]


def test_report_made_while_offline_is_sent_on_accept(session, engine, sent):
    accept(session)
    key = assign(session, engine)
    session.disconnected()
    finish(session, engine, 2.0)
    assert "WorkerFinishedRun" not in types(sent)
    accept(session, now=3.0, keep_run=True)
    report = sent[-1]
    assert report["type"] == "WorkerFinishedRun" and protocol.run_key(report) == key and report["data"] == "done"


def test_stop_waits_for_the_ack_until_the_deadline(session, engine, sent):
    accept(session)
    key = assign(session, engine)
    session.stop(10.0)
    assert sent[-1]["type"] == "WorkerStoppedRun" and protocol.run_key(sent[-1]) == key
    assert session.check_exit(14.9, reachable=True, flushed=True) is None
    assert session.check_exit(15.0, reachable=True, flushed=True) == 0


def test_stop_exits_on_the_ack(session, engine):
    accept(session)
    key = assign(session, engine)
    session.stop(10.0)
    session.handle(protocol.message("RunqAck", batch_id=key[0], batch_index=key[1], attempt=key[2],
                                    accepted=True), 10.1)
    assert session.check_exit(10.1, reachable=True, flushed=True) == 0


def test_stop_while_unreachable_exits_at_once(session, engine):
    accept(session)
    assign(session, engine)
    session.disconnected()
    session.stop(10.0)
    assert session.check_exit(10.0, reachable=False, flushed=True) == 0


def test_drain_lingers_then_exits_when_idle(session, sent):
    accept(session)
    session.drain(5.0, "test")
    assert sent[-1] == {"type": "WorkerDraining", "worker_id": 3}
    assert session.check_exit(5.4, reachable=True, flushed=True) is None
    assert session.check_exit(5.5, reachable=True, flushed=False) is None  # output still waiting
    assert session.check_exit(5.5, reachable=True, flushed=True) == 0


def test_drain_before_accept_waits_for_the_handshake(session, sent):
    session.drain(0.0, "test")
    assert sent == [] and session.check_exit(1.0, reachable=True, flushed=True) is None
    accept(session, now=1.0)
    assert types(sent) == ["WorkerDraining"]
    assert session.check_exit(1.5, reachable=True, flushed=True) == 0


def test_assignment_of_another_engine_fails_at_once(session, sent):
    accept(session)
    session.handle(protocol.message("RunqAssignRun", batch_id=1, batch_index=0, attempt=1, seq=1, engine="aurora",
                                    param={}, time_limit=None), 0.0)
    assert sent[-1]["type"] == "WorkerFailedRun" and "aurora" in sent[-1]["message"]
    assert session.job is None


def test_unexpected_ack_is_ignored(session, sent):
    accept(session)
    session.handle(protocol.message("RunqAck", batch_id=9, batch_index=9, attempt=9, accepted=True), 0.0)
    assert session.job is None and not session.pending
