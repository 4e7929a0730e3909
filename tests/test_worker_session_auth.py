"""The worker's half of protocol v2 in Session, without sockets: proving the secret, checking runq's
proof, its key and reconnect proof, instance changes, assignment seq in heartbeats."""
from __future__ import annotations

import pytest

from simx import auth, protocol
from test_worker_session import TRAITS, Gate, types
from worker.session import Session

SECRET = b"c3" * 32


@pytest.fixture
def engine():
    e = Gate()
    yield e
    e.gate.set()


def make(engine, secret=None):
    sent: list = []
    return Session(TRAITS, engine, sent.append, lambda: None, secret), sent


def challenge(session, secret=None, instance="inst-1", proof="good"):
    hello = session.hello()
    nonce = auth.new_nonce()
    if proof == "good":
        proof = auth.server_proof(secret, "worker", hello["nonce"], nonce) if secret else None
    session.handle(protocol.message("RunqChallenge", version=protocol.VERSION, instance=instance, nonce=nonce,
                                    proof=proof), 0.0)
    return hello, nonce


def accept(session, worker_id=3, key=None, keep_run=False):
    session.handle(protocol.message("RunqAcceptWorker", worker_id=worker_id, heartbeat_interval=10.0,
                                    keep_run=keep_run, key=key), 0.0)


def test_the_secret_is_proved_never_sent_and_the_key_derived_on_both_ends(engine):
    session, sent = make(engine, SECRET)
    hello, nonce = challenge(session, SECRET)
    assert hello["key_id"] == auth.key_id(SECRET)
    assert types(sent) == ["Auth", "WorkerReady"]
    assert sent[0]["proof"] == auth.peer_proof(SECRET, "worker", nonce, hello["nonce"])
    assert SECRET.decode() not in str(sent)
    accept(session)
    assert session.key == auth.worker_key(SECRET, nonce, hello["nonce"])
    session.disconnected()
    sent.clear()
    hello2, nonce2 = challenge(session, SECRET)
    reconnect = sent[1]
    assert reconnect["type"] == "WorkerReconnect" and reconnect["worker_id"] == 3
    assert reconnect["proof"] == auth.reconnect_proof(session.key, 3, nonce2)


@pytest.mark.parametrize("proof", [None, "0" * 64])
def test_a_runq_that_does_not_prove_the_secret_is_hung_up_on(engine, proof):
    session, sent = make(engine, SECRET)
    challenge(session, SECRET, proof=proof)
    assert sent == [] and "did not prove" in session.hangup
    accept(session)   # whatever it says next counts for nothing
    assert session.worker_id is None and not session.online


def test_without_a_secret_the_key_comes_from_runq(engine):
    session, sent = make(engine)
    challenge(session)
    accept(session, key="ab" * 32)
    session.disconnected()
    sent.clear()
    _, nonce = challenge(session)
    assert sent[1]["proof"] == auth.reconnect_proof("ab" * 32, 3, nonce)


def test_a_new_instance_means_registering_afresh_and_dropping_the_old_reports(engine):
    session, sent = make(engine)
    challenge(session)
    accept(session, key="ab" * 32)
    session.handle(protocol.message("RunqAssignRun", batch_id=1, batch_index=0, attempt=1, seq=1, engine="dummy",
                                    param={}, time_limit=None), 0.0)
    assert engine.started.wait(5)
    session.pending[(1, 0, 1)] = ("WorkerFinishedRun", {"data": "old"})
    session.disconnected()
    sent.clear()
    challenge(session, instance="inst-2")
    assert types(sent) == ["Auth", "WorkerReady"]
    assert session.job is None and session.pending == {} and session.seq == 0
    assert session.last_job.abort.is_set() and session.last_job.report == "abandoned"


def test_heartbeats_carry_the_highest_seq_and_the_runs_computed(engine):
    session, sent = make(engine)
    challenge(session)
    accept(session)
    session.handle(protocol.message("RunqAssignRun", batch_id=4, batch_index=2, attempt=1, seq=7, engine="dummy",
                                    param={}, time_limit=None), 0.0)
    assert engine.started.wait(5)
    session.handle(protocol.message("RunqAssignRun", batch_id=4, batch_index=3, attempt=1, seq=8, engine="dummy",
                                    param={}, time_limit=None), 0.0)   # refused: it holds one already
    sent.clear()
    session.advance(1e9)   # past the heartbeat interval
    assert sent[-1]["type"] == "WorkerHeartbeat" and sent[-1]["seq"] == 8 and sent[-1]["runs"] == [[4, 2, 1]]


def test_messages_before_the_challenge_are_ignored_but_errors_are_heard(engine):
    session, sent = make(engine)
    session.hello()
    accept(session)
    assert not session.online
    session.handle(protocol.message("RunqError", message="protocol version 1 is not supported", code=426), 0.0)
    assert session.exit_code == 2
