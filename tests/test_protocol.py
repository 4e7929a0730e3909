"""Framing and message validation (pure)."""
import json
import struct

import pytest

from simx import protocol
from simx.protocol import FrameReader, ProtocolError


def test_frame_length_counts_bytes_not_characters():
    msg = protocol.message("StartBatch", name="Verkehrsfluß 東京 🚦", engine="dummy", n_runs=1)
    frame = protocol.encode(msg)
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4 > len(json.dumps(msg, ensure_ascii=False))
    assert [protocol.decode_message(b) for b in FrameReader().feed(frame)] == [msg]


def test_reader_reassembles_frames_split_anywhere():
    frames = b"".join(protocol.encode(protocol.message("Ping")) for _ in range(3))
    reader, got = FrameReader(), []
    for i in range(len(frames)):
        got += reader.feed(frames[i:i + 1])
    assert len(got) == 3


def test_oversized_frame_is_refused_from_its_header():
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameReader().feed(struct.pack(">I", protocol.MAX_FRAME + 1))


@pytest.mark.parametrize("body, complaint", [
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"type":"Nope"}', "unknown message type"),
    (b'{"type":"BatchStatus"}', "missing field 'batch_id'"),
    (b'{"type":"BatchStatus","batch_id":"1"}', "'batch_id' has the wrong type"),
    (b'{"type":"BatchStatus","batch_id":true}', "'batch_id' has the wrong type"),
    (b'{"type":"Ping","x":1}', "unknown field 'x'"),
])
def test_bad_messages_name_what_is_wrong(body, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        protocol.decode_message(body)


def test_optional_fields_may_be_absent_and_nullable_ones_null():
    protocol.message("WorkerReconnect", worker_id=1, host="h", pid=1, group="", user="", engine="e", cost=1,
                     speed=1, priority=0)
    protocol.message("WorkerReconnect", worker_id=1, host="h", pid=1, group="", user="", engine="e", cost=1,
                     speed=1, priority=0, proof=None, batch_id=None, batch_index=None, attempt=None)
    protocol.message("Hello", version=2, role="client", nonce="00")
    protocol.message("StartBatch", engine="e", n_runs=2, time_limit=1.5)


# -- field validation: every bound is a named kind in protocol.py, checked before anything touches state

READY = dict(host="h", pid=1, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0)


@pytest.mark.parametrize("mtype, fields, complaint", [
    ("WorkerReady", dict(READY, pid=2 ** 63), "'pid' must be an integer from 0 to 2147483647"),
    ("WorkerReady", dict(READY, pid=-1), "'pid' must be an integer"),
    ("WorkerReady", dict(READY, cost=-1e308), "'cost' must be from -1e\\+06 to 1e\\+06"),
    ("WorkerReady", dict(READY, speed=float("nan")), "'speed' must be a finite number"),
    ("WorkerReady", dict(READY, priority=float("inf")), "'priority' must be a finite number"),
    ("WorkerReady", dict(READY, host="a\0b"), "'host' must not contain NUL"),
    ("WorkerReady", dict(READY, user="\ud800"), "'user' must be valid Unicode"),
    ("WorkerReconnect", dict(READY, worker_id=2 ** 63), "'worker_id' must be an integer from 0 to"),
    ("WorkerHeartbeat", dict(worker_id=-1), "'worker_id' must be an integer"),
    ("WorkerUpdate", dict(worker_id=1, batch_id=1, batch_index=0, attempt=2 ** 31, progress=0.5),
     "'attempt' must be an integer"),
    ("WorkerUpdate", dict(worker_id=1, batch_id=1, batch_index=0, attempt=1, progress=float("nan")),
     "'progress' must be a finite number"),
    ("WorkerFinishedRun", dict(worker_id=1, batch_id=1, batch_index=0, attempt=1, data={"x": float("nan")}),
     "'data' holds a number that is not finite"),
    ("WorkerFinishedRun", dict(worker_id=1, batch_id=1, batch_index=0, attempt=1, data=[2 ** 64]),
     "'data' holds an integer beyond 64 bits"),
    ("StartBatch", dict(engine="e", n_runs=2 ** 63), "'n_runs' must be an integer from 0 to 2147483647"),
    ("StartBatch", dict(engine="e", n_runs=1, max_attempts=2 ** 63), "'max_attempts' must be an integer"),
    ("StartBatch", dict(engine="e", n_runs=1, max_requeues=2 ** 63), "'max_requeues' must be an integer"),
    ("StartBatch", dict(engine="e", n_runs=1, time_limit=float("inf")), "'time_limit' must be a finite"),
    ("StartBatch", dict(engine="e", n_runs=1, time_limit=-1), "'time_limit' must be from 0"),
    ("StartBatch", dict(engine="e", n_runs=1, param={"\ud800": 1}), "'param' holds a lone surrogate"),
    ("StartBatch", dict(engine="e", n_runs=1, param={"a": "\udfff"}), "'param' holds a lone surrogate"),
    ("StartBatch", dict(engine="e", n_runs=1, param=[1]), "'param' has the wrong type"),
    ("StartBatch", dict(engine="e", n_runs=True), "'n_runs' has the wrong type"),
    ("StartBatch", dict(engine="e", n_runs=1.0), "'n_runs' has the wrong type"),
    ("BatchStatus", dict(batch_id=2 ** 63), "'batch_id' must be an integer"),
    ("BatchStatus", dict(batch_id=1, offset=-1), "'offset' must be an integer"),
    ("BatchList", dict(limit=2 ** 63), "'limit' must be an integer"),
    ("RunStatus", dict(batch_id=1, batch_index=2 ** 63), "'batch_index' must be an integer"),
    ("RunqError", dict(message="x", code=10 ** 6), "'code' must be an integer"),
    ("Reply", dict(status="ok", code=200, message="ok", extra={"a": float("nan")}), "'extra' holds a number"),
])
def test_fields_out_of_range_are_refused_naming_the_field(mtype, fields, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        protocol.check({"type": mtype, **fields})


@pytest.mark.parametrize("mtype, fields", [
    ("WorkerReady", dict(READY, pid=2 ** 31 - 1, cost=-1e6, speed=1e6, priority=0)),
    ("WorkerReconnect", dict(READY, worker_id=2 ** 63 - 1)),
    ("StartBatch", dict(engine="e", n_runs=1, max_attempts=2 ** 31 - 1, max_requeues=2 ** 63 - 1, time_limit=0.5)),
    ("StartBatch", dict(engine="e", n_runs=1, param={"deep": [[[{"x": -2 ** 63}]]], "nul": "a\0b", "s": "✓"})),
    ("WorkerFinishedRun", dict(worker_id=1, batch_id=2 ** 63 - 1, batch_index=0, attempt=1, data=None)),
])
def test_boundary_values_are_accepted(mtype, fields):
    protocol.check({"type": mtype, **fields})


def deep(n):
    value = 1
    for _ in range(n):
        value = [value]
    return value


def test_nesting_is_bounded():
    protocol.message("StartBatch", engine="e", n_runs=1, param={"a": deep(protocol.MAX_DEPTH - 1)})
    with pytest.raises(ProtocolError, match="'param' nests deeper than 64"):
        protocol.message("StartBatch", engine="e", n_runs=1, param={"a": deep(protocol.MAX_DEPTH)})


@pytest.mark.parametrize("body, complaint", [
    (b'{"type":"WorkerHeartbeat","worker_id":NaN}', "NaN is not a JSON number"),
    (b'{"type":"WorkerHeartbeat","worker_id":Infinity}', "Infinity is not a JSON number"),
    (b'{"type":"WorkerHeartbeat","worker_id":-Infinity}', "Infinity is not a JSON number"),
    (b'{"type":"WorkerUpdate","worker_id":1,"batch_id":1,"batch_index":0,"attempt":1,"progress":1e999}',
     "out of range"),
    (b'{"type":"StartBatch","engine":"e","n_runs":1,"name":"\\ud800"}', "'name' must be valid Unicode"),
    (b'{"type":"StartBatch","engine":"e","n_runs":1,"name":"a\\u0000"}', "'name' must not contain NUL"),
    (b'{"type":"StartBatch","engine":"e","n_runs":1,"param":' + b"[" * 100000 + b"]" * 100000 + b"}",
     "nests deeper|wrong type"),
    (b'{"type":"Ping","\\ud800":1}', "unknown field"),
    (b'{"type":"WorkerHeartbeat","worker_id":' + b"9" * 5000 + b"}", "not UTF-8 JSON"),
])
def test_decoding_refuses_what_json_would_let_through(body, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        protocol.decode_message(body)


def test_every_field_kind_is_declared_once_by_name():
    kinds = {k for schema in protocol.SCHEMA.values() for k in schema.values()}
    assert all(isinstance(k, protocol.Kind) for k in kinds)


@pytest.mark.parametrize("text, clean", [("ok", "ok"), ("a\0b", "a\ufffdb"), ("x\ud800y", "x?y"), ("✓", "✓")])
def test_clean_text_makes_engine_output_sendable(text, clean):
    assert protocol.clean_text(text) == clean
    protocol.message("WorkerFailedRun", worker_id=1, batch_id=1, batch_index=0, attempt=1, message=protocol.clean_text(text))


def test_nothing_unencodable_goes_on_the_wire():
    with pytest.raises(ProtocolError, match="cannot encode"):
        protocol.encode(protocol.reply(data="\ud800"))
    with pytest.raises(ProtocolError, match="cannot encode"):
        protocol.encode(protocol.reply(data=float("nan")))


# -- the declarations: one per message; the quick checks compiled from them never accept what the whole check refuses

def sample(kind: protocol.Kind):
    """A valid value of a kind."""
    if kind.types == (int,):
        return kind.lo
    if kind.types == (str,):
        return "x"
    if kind.types == (bool,):
        return True
    if kind.types == (int, float):
        return 0.5 if kind.lo <= 0.5 <= kind.hi else kind.lo
    if kind.types == (list,):
        return [[1, 2, 3]]
    return {"a": 1, "b": [1.5, "s", None]}


def valid(name: str) -> dict:
    return {"type": name, **{f: sample(k) for f, k in protocol.MESSAGES[name].fields.items()}}


ODD = [None, True, 0, -1, 2 ** 31, 2 ** 63, -2 ** 63 - 1, 1.5, 1e12 + 1, 1e300, float("inf"), "", "é", "\ud800",
       "a\0", "x" * 10_001, [], [[1]], {}, {"a": {"b": {"c": {"d": {"e": 1}}}}}, {"\ud800": 1}, {"k": 2 ** 64},
       {"k": float("nan")}, (1, 2), {1: 2}]


def whole(msg) -> bool:
    try:
        protocol._check_slowly(dict(msg), msg.get("type"))
        return True
    except ProtocolError:
        return False


@pytest.mark.parametrize("name", sorted(protocol.MESSAGES))
def test_each_quick_check_accepts_only_what_the_whole_check_accepts(name):
    quick, base = protocol.MESSAGES[name].quick, valid(name)
    assert whole(base) and quick(base)
    for field in [*base, "extra"]:
        if field == "type":
            continue
        for value in ODD:
            msg = dict(base, **{field: value})
            assert not quick(msg) or whole(msg), (field, value)
        dropped = {k: v for k, v in base.items() if k != field}
        assert not quick(dropped) or whole(dropped), field


def test_message_builds_through_the_declaration_and_names_the_bad_field():
    ack = protocol.message("RunqAck", batch_id=1, batch_index=2, attempt=1, accepted=True)
    assert ack == {"type": "RunqAck", "batch_id": 1, "batch_index": 2, "attempt": 1, "accepted": True}
    with pytest.raises(ProtocolError, match="RunqAck: field 'attempt' must be an integer"):
        protocol.message("RunqAck", batch_id=1, batch_index=2, attempt=-1, accepted=True)
    with pytest.raises(ProtocolError, match="RunqAck: missing field 'accepted'"):
        protocol.message("RunqAck", batch_id=1, batch_index=2, attempt=1)
    with pytest.raises(ProtocolError, match="unknown field 'extra'"):
        protocol.message("RunqAck", batch_id=1, batch_index=2, attempt=1, accepted=True, extra=1)
    with pytest.raises(ProtocolError, match="unknown message type 'RunqGetStatus'"):
        protocol.message("RunqGetStatus")   # declared once and never sent: gone


def test_the_tables_derive_from_the_declarations():
    assert protocol.FROM_WORKER == {n for n in protocol.MESSAGES if n.startswith("Worker")} - {"WorkerList", "WorkerStatus"}
    assert all({"actor", "admin"} <= protocol.OPTIONAL[n] for n in protocol.CLIENT_REQUESTS)
    assert protocol.SCHEMA["RunqAck"] == {"batch_id": protocol.ID, "batch_index": protocol.INDEX,
                                          "attempt": protocol.ATTEMPT, "accepted": protocol.BOOL,
                                          "message": protocol.OPT_STR}
    assert list(protocol.WORKER_TRAITS) == ["host", "pid", "group", "user", "engine", "cost", "speed", "priority"]
