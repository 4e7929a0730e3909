"""The wire protocol shared by runq, runweb and worker: messages and framing.

A frame is a 4-byte big-endian byte count followed by that many bytes of UTF-8
JSON: one object with a ``type`` field naming the message.  Nothing is ever
deserialized into language objects beyond JSON's own types; each message type
declares its fields once (``SCHEMA``) and is validated when decoded, so a bad
field raises ``ProtocolError`` naming it.

Messages are plain dicts on both ends (cheap on runq's hot path); ``message()``
builds one and checks it, ``decode_message()`` parses and checks one.
"""
from __future__ import annotations

import json
import struct

MAX_FRAME = 10 * 1024 * 1024  # bytes, as the original
HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame or message that does not follow the protocol."""


# Field kinds.  A tuple means "any of these"; None in it allows null.
STR, INT, NUM, BOOL, MAP, LIST, ANY = str, int, (int, float), bool, dict, list, object
OPT_STR, OPT_INT, OPT_NUM, OPT_MAP = (str, None), (int, None), (int, float, None), (dict, None)

# name -> {field: kind}.  A field listed in OPTIONAL may be absent.
_RUN = {"batch_id": INT, "batch_index": INT, "attempt": INT}
_OPT_RUN = {"batch_id": OPT_INT, "batch_index": OPT_INT, "attempt": OPT_INT}
_WORKER_TRAITS = {
    "host": STR, "pid": INT, "group": STR, "user": STR, "engine": STR,
    "cost": NUM, "speed": NUM, "priority": NUM,
}
SCHEMA: dict[str, dict[str, object]] = {
    # connection opening, both roles (runq/auth.py)
    "Hello": dict(version=INT, role=STR, nonce=STR, key_id=OPT_STR),
    "RunqChallenge": dict(version=INT, instance=STR, nonce=STR, proof=OPT_STR),
    "Auth": dict(proof=OPT_STR),
    # worker -> runq
    "WorkerReady": dict(_WORKER_TRAITS),
    "WorkerReconnect": dict(_WORKER_TRAITS, worker_id=INT, proof=OPT_STR, **_OPT_RUN),
    # seq: highest RunqAssignRun.seq received; runs: [[batch_id, batch_index, attempt], ...] it computes
    "WorkerHeartbeat": dict(worker_id=INT, seq=INT, runs=LIST),
    "WorkerUpdate": dict(worker_id=INT, **_RUN, progress=NUM, message=OPT_STR),
    "WorkerFinishedRun": dict(worker_id=INT, **_RUN, data=ANY),
    "WorkerFailedRun": dict(worker_id=INT, **_RUN, message=STR, traceback=OPT_STR),
    "WorkerAbortedRun": dict(worker_id=INT, **_RUN, message=OPT_STR),
    "WorkerStoppedRun": dict(worker_id=INT, **_RUN),
    "WorkerDraining": dict(worker_id=INT),
    # one piece of a finished run's output file, sent before its WorkerFinishedRun (runq/files.py)
    "WorkerFileChunk": dict(worker_id=INT, **_RUN, name=STR, offset=INT, data=STR, last=BOOL),
    # runq -> worker
    # key: only at a registration without a worker secret (with one, both ends derive it)
    "RunqAcceptWorker": dict(worker_id=INT, heartbeat_interval=NUM, keep_run=BOOL, key=OPT_STR),
    "RunqAssignRun": dict(**_RUN, seq=INT, engine=STR, param=MAP, time_limit=OPT_NUM),
    "RunqAck": dict(**_RUN, accepted=BOOL, message=OPT_STR),
    "RunqAbortRun": dict(**_RUN, reason=STR),
    "RunqGetStatus": {},
    "RunqDrain": {},
    "RunqError": dict(message=STR, code=OPT_INT),  # code: HTTP-like; 401 = bad secret, 426 = version
    # runweb (or any client) -> runq; each gets one Reply
    "Ping": {},
    "StartBatch": dict(
        name=STR, group=STR, user=STR, engine=STR, n_runs=INT, param=MAP,
        max_attempts=OPT_INT, max_requeues=OPT_INT, time_limit=OPT_NUM, idempotency_key=OPT_STR,
        sweep=OPT_MAP, zip=OPT_MAP,   # runq/sweep.py: n_runs is derived (given as well, it must equal)
    ),
    "BatchList": dict(user=OPT_STR, offset=INT, limit=INT),
    "BatchStatus": dict(batch_id=INT, offset=INT, limit=INT, state=OPT_STR),
    "BatchResults": dict(batch_id=INT, start=INT, limit=INT, state=OPT_STR),
    "RunStatus": dict(batch_id=INT, batch_index=INT),
    "RunFile": dict(batch_id=INT, batch_index=INT, name=STR, offset=INT),   # a piece of an output file
    "UserStatus": dict(user=STR, offset=INT, limit=INT),
    "WorkerList": dict(offset=INT, limit=INT),
    "WorkerStatus": dict(worker_id=INT),
    "CancelBatch": dict(batch_id=INT),
    "CancelRun": dict(batch_id=INT, batch_index=INT),
    "DrainWorker": dict(worker_id=INT),
    "Metrics": {},   # runq's counters and gauges for GET /metrics (runq/metrics.py)
    # runq -> client: {status: ok|error, code, message, ...data}
    "Reply": dict(status=STR, code=INT, message=STR),
}
OPTIONAL: dict[str, frozenset[str]] = {
    "Hello": frozenset({"key_id"}),
    "WorkerReconnect": frozenset({"proof", "batch_id", "batch_index", "attempt"}),
    "RunqAcceptWorker": frozenset({"key"}),
    "WorkerUpdate": frozenset({"message"}),
    "WorkerFailedRun": frozenset({"traceback"}),
    "WorkerAbortedRun": frozenset({"message"}),
    "RunqAck": frozenset({"message"}),
    "RunqError": frozenset({"code"}),
    "RunqAssignRun": frozenset({"time_limit"}),
    "StartBatch": frozenset({
        "name", "group", "user", "param", "max_attempts", "max_requeues", "time_limit", "idempotency_key",
        "n_runs", "sweep", "zip",
    }),
    "RunFile": frozenset({"offset"}),
    "BatchList": frozenset({"user", "offset", "limit"}),
    "UserStatus": frozenset({"offset", "limit"}),
    "WorkerList": frozenset({"offset", "limit"}),
    "BatchStatus": frozenset({"offset", "limit", "state"}),
    "BatchResults": frozenset({"start", "limit", "state"}),
}
# Messages a worker sends (everything else a client may send is a request).
FROM_WORKER = frozenset({
    "WorkerReady", "WorkerReconnect", "WorkerHeartbeat", "WorkerUpdate", "WorkerFinishedRun",
    "WorkerFailedRun", "WorkerAbortedRun", "WorkerStoppedRun", "WorkerDraining", "WorkerFileChunk",
})
# Replies carry arbitrary data beside the envelope; the opening messages may grow optional
# fields in later versions, which older peers ignore.
OPEN_TYPES = frozenset({"Reply", "Hello", "RunqChallenge"})
VERSION = 2


def _kind_ok(value, kind) -> bool:
    if kind is object:
        return True
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is None:
            if value is None:
                return True
        elif k is int or k is float:
            # bool is an int in Python; never accept it as a number
            if isinstance(value, k) and not isinstance(value, bool):
                return True
        elif isinstance(value, k):
            return True
    return False


def check(msg: dict) -> dict:
    """Validate a message dict in place; return it.  Raise ProtocolError naming the bad field."""
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    mtype = msg.get("type")
    schema = SCHEMA.get(mtype) if isinstance(mtype, str) else None
    if schema is None:
        raise ProtocolError(f"unknown message type {mtype!r}")
    optional = OPTIONAL.get(mtype, ())
    for field, kind in schema.items():
        if field not in msg:
            if field in optional:
                continue
            raise ProtocolError(f"{mtype}: missing field {field!r}")
        if not _kind_ok(msg[field], kind):
            raise ProtocolError(f"{mtype}: field {field!r} has the wrong type")
    if mtype not in OPEN_TYPES:
        extra = set(msg) - set(schema) - {"type"}
        if extra:
            raise ProtocolError(f"{mtype}: unknown field {sorted(extra)[0]!r}")
    return msg


def message(mtype: str, **fields) -> dict:
    """Build and validate one message."""
    return check({"type": mtype, **fields})


def reply(status: str = "ok", code: int = 200, message: str = "ok", **data) -> dict:
    return {"type": "Reply", "status": status, "code": code, "message": message, **data}


def encode(msg: dict) -> bytes:
    """One frame: length prefix + UTF-8 JSON (non-ASCII kept as UTF-8 bytes)."""
    body = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


def decode_message(body: bytes) -> dict:
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    return check(msg)


class FrameReader:
    """Incremental frame decoder: feed bytes, get whole message bodies."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        bodies = []
        while len(self.buf) >= 4:
            (n,) = HEADER.unpack_from(self.buf)
            if n > self.max_frame:
                raise ProtocolError(f"frame of {n} bytes exceeds the {self.max_frame}-byte limit")
            if len(self.buf) < 4 + n:
                break
            bodies.append(bytes(self.buf[4:4 + n]))
            del self.buf[:4 + n]
        return bodies


def run_key(msg: dict) -> tuple[int, int, int] | None:
    """(batch_id, batch_index, attempt) a message speaks of, or None."""
    if msg.get("batch_id") is None:
        return None
    return msg["batch_id"], msg["batch_index"], msg["attempt"]
