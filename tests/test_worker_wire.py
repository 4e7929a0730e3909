"""worker/wire.py: the worker's quick path through runq's bytes gives protocol's verdicts, always."""
from __future__ import annotations

import json
import random
import socket
import struct

import pytest

from simx import protocol
from simx.protocol import ProtocolError
from worker import wire
from worker.poller import EVENT_READ, EVENT_WRITE, Poller

ACK = {"type": "RunqAck", "batch_id": 3, "batch_index": 41, "attempt": 1, "accepted": True}
ASSIGN = {"type": "RunqAssignRun", "batch_id": 3, "batch_index": 42, "attempt": 2, "seq": 9, "engine": "dummy",
          "param": {"step_count": 0, "step_delay": 0.5, "name": "x", "flag": False, "none": None},
          "time_limit": None}
# Values that sit on or beyond some field's bound or type.
ODD = [None, True, False, 0, 1, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 63 - 1, 2 ** 63, -2 ** 63 - 1, 0.0, 1.5, -0.5,
       1e12, 1e12 + 1, 1e300, "", "dummy", "a\u00e9", "\ud800", "nul\u0000", [], [1], {}, {"a": 1},
       {"a": {"b": [1, 2]}}, {"\ud800": 1}, {"k": "\ud800"}, {"k": 2 ** 64}, {"k": 1e300}, {"é": 1}]


def verdict(decode, body: bytes):
    try:
        return ("ok", decode(body))
    except ProtocolError:
        return ("refused", None)


def body_of(msg, ascii=True) -> bytes:
    """As a peer might write it: escapes (a lone surrogate arrives as \\ud800) or raw UTF-8."""
    return json.dumps(msg, ensure_ascii=ascii, allow_nan=True).encode("utf-8", "surrogatepass")


def whole_check(body: bytes):
    """protocol's verdict by its whole check alone, without the quick checks both paths share."""
    saved, protocol._QUICK = protocol._QUICK, {}
    try:
        return protocol.decode_message(body)
    finally:
        protocol._QUICK = saved


def same_verdicts(msg) -> None:
    for body in (body_of(msg), body_of(msg, ascii=False)):
        assert verdict(wire.decode, body) == verdict(whole_check, body), body


def test_the_quick_checks_are_protocols_own():
    assert wire.QUICK["RunqAck"] is protocol.MESSAGES["RunqAck"].quick
    assert set(wire.QUICK) == {m.name for m in protocol.DECLARATIONS if m.sender in ("runq", "either")}


def test_the_two_per_run_messages_take_the_quick_path():
    assert wire.QUICK["RunqAck"](dict(ACK)) and wire.QUICK["RunqAssignRun"](dict(ASSIGN))
    assert wire.decode(body_of(ACK)) == ACK and wire.decode(body_of(ASSIGN)) == ASSIGN
    timed = dict(ASSIGN, time_limit=30)
    assert wire.QUICK["RunqAssignRun"](timed) and wire.decode(body_of(timed)) == timed


@pytest.mark.parametrize("base", [ACK, ASSIGN], ids=["ack", "assign"])
def test_every_field_set_to_an_odd_value_gets_protocols_verdict(base):
    for field in [*base, "message", "extra"]:
        for value in ODD:
            same_verdicts(dict(base, **{field: value}))
        if field != "type":
            same_verdicts({k: v for k, v in base.items() if k != field})


def test_params_the_quick_check_passes_on_get_protocols_verdict():
    for value in ODD:
        same_verdicts(dict(ASSIGN, param={"k": value}))
        same_verdicts(dict(ASSIGN, param={"k": 1, "nested": {"deep": value}}))


def test_random_mutations_get_protocols_verdict():
    rng = random.Random(10)
    for _ in range(3000):
        msg = dict(rng.choice([ACK, ASSIGN]))
        for _ in range(rng.randint(1, 3)):
            field = rng.choice([*msg, "message", "time_limit", "param", "zzz"])
            if rng.random() < 0.2:
                msg.pop(field, None)
            else:
                msg[field] = rng.choice(ODD)
        same_verdicts(msg)


@pytest.mark.parametrize("body", [
    b" " + body_of(ACK), body_of(ACK) + b" \n", b"[1]", b"1", b"null", b'"RunqAck"', b"", b"{", b"\xff\xfe",
    body_of(ACK)[:-1] + b',"accepted":NaN}', body_of(ACK)[:-1] + b',"x":1e999}', b'{"type":["RunqAck"]}',
    b'{"type":"RunqAck"}{"type":"RunqAck"}', b"[" * 5000 + b"]" * 5000, b'{"type":"Nope"}',
    b'{"type":"RunqAck","batch_id":1,"batch_index":1,"attempt":1,"accepted":true,"batch_id":-1}',
], ids=range(16))
def test_odd_frames_get_protocols_verdict(body):
    assert verdict(wire.decode, body) == verdict(whole_check, body) == verdict(protocol.decode_message, body)


def frame(msg) -> bytes:
    return protocol.encode(msg)


def test_inbox_gives_the_same_messages_however_the_bytes_are_cut():
    stream = frame(ACK) + frame(ASSIGN) + frame(dict(ASSIGN, param={"big": "x" * 100_000}))
    expected = [ACK, ASSIGN, dict(ASSIGN, param={"big": "x" * 100_000})]
    for size in (1, 3, 4, 5, 7, 64, 1000, 65536, len(stream)):
        inbox, got = wire.Inbox(), []
        for i in range(0, len(stream), size):
            messages, problems = inbox.feed(stream[i:i + size])
            assert problems == []
            got += messages
        assert got == expected and not inbox.buf, size


def test_inbox_skips_a_bad_message_between_good_ones_and_names_it():
    bad = json.dumps(dict(ACK, attempt=-1)).encode()
    messages, problems = wire.Inbox().feed(frame(ACK) + struct.pack(">I", len(bad)) + bad + frame(ASSIGN))
    assert messages == [ACK, ASSIGN] and len(problems) == 1 and "attempt" in problems[0]


def test_inbox_refuses_an_oversized_header_at_once_even_split():
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.Inbox(max_frame=100).feed(struct.pack(">I", 101))
    inbox = wire.Inbox(max_frame=100)
    assert inbox.feed(frame(ACK) + b"\x00\x00") == ([ACK], [])
    with pytest.raises(ProtocolError, match="exceeds"):
        inbox.feed(b"\x10\x00")   # the rest of the header: 4096 bytes, refused before they come


def test_encode_refuses_a_circular_message_as_a_protocol_error():
    msg = {"type": "WorkerFinishedRun", "data": []}
    msg["data"].append(msg)
    with pytest.raises(ProtocolError, match="cannot encode"):
        protocol.encode(msg)
    assert protocol.encode(ACK) == struct.pack(">I", len(body_of(ACK).replace(b" ", b""))) + \
        json.dumps(ACK, separators=(",", ":")).encode()


def test_poller_reports_readable_writable_and_follows_a_detached_socket():
    a, b = socket.socketpair()
    try:
        poller = Poller()
        poller.register(a, EVENT_READ)
        assert poller.select(0) == []
        b.send(b"x")
        assert poller.select(0) == [(a, EVENT_READ)]
        poller.modify(a, EVENT_READ | EVENT_WRITE)
        assert poller.select(0) == [(a, EVENT_READ | EVENT_WRITE)]
        with pytest.raises(KeyError):
            poller.register(a, EVENT_READ)
        fd = a.detach()   # as ssl's wrap_socket does: the object has no descriptor any more
        poller.unregister(a)
        assert poller.select(0) == []
        wrapped = socket.socket(fileno=fd)
        poller.register(wrapped, EVENT_READ)
        b.close()   # hang-up: reported as readable, so the loop's recv() meets it
        assert poller.select(1.0) == [(wrapped, EVENT_READ)]
        wrapped.close()
    finally:
        a.close()
        b.close()
