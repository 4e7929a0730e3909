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

import dataclasses
import json
import json.encoder
import math
import struct

MAX_FRAME = 10 * 1024 * 1024  # bytes, as the original
HEADER = struct.Struct(">I")
MAX_DEPTH = 64              # nesting of arrays/objects inside param and data
REPLY_DEPTH = MAX_DEPTH + 4  # a reply wraps stored values (runs[i].result, batch.param) a few levels down
INT64 = 2 ** 63             # SQLite's integers are signed 64-bit


class ProtocolError(Exception):
    """A frame or message that does not follow the protocol."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a field may hold: JSON type(s), bounds, whether null is allowed.

    Declared once below and named, so a bound lives in one place.  ``lo <= x < hi``
    for integers, ``lo <= x <= hi`` for numbers (always finite).
    """
    name: str
    types: tuple
    lo: float | None = None
    hi: float | None = None
    nullable: bool = False

    def __post_init__(self):
        # The common case checked in one expression (a plain int in range, an ASCII string
        # without NUL, a bool); anything else goes through problem().  Only ever accepts what
        # problem() accepts.
        fast = None
        if self.types == (int,) and self.lo is not None:
            lo, hi = self.lo, self.hi
            fast = lambda v: type(v) is int and lo <= v < hi  # noqa: E731
        elif self.types == (str,):
            fast = lambda v: type(v) is str and v.isascii() and "\0" not in v  # noqa: E731
        elif self.types == (bool,):
            fast = lambda v: type(v) is bool  # noqa: E731
        elif self.types == (int, float) and self.lo is not None:   # inclusive; NaN and inf fail it
            lo, hi = self.lo, self.hi
            fast = lambda v: (type(v) is float or type(v) is int) and lo <= v <= hi  # noqa: E731
        elif self.types in ((list,), (dict,)):   # empty (an idle worker's heartbeat lists no runs)
            container = self.types[0]
            fast = lambda v: type(v) is container and not v  # noqa: E731
        elif self.nullable and dict in self.types:   # ANY: null or an ASCII string (NUL is allowed inside)
            fast = lambda v: v is None or (type(v) is str and v.isascii())  # noqa: E731
        object.__setattr__(self, "fits", fast or (lambda v: False))

    def problem(self, value) -> str | None:
        """Why ``value`` does not fit (a phrase following the field's name), or None."""
        if value is None:
            return None if self.nullable else "must not be null"
        # bool is an int in Python; never accept it as a number
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            return f"has the wrong type (expected {self.name})"
        if dict in self.types or list in self.types:
            return nested_problem(value)
        if isinstance(value, str):
            return string_problem(value)
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.lo is not None and not isinstance(value, bool):
            if float in self.types:   # a number: inclusive range
                if not self.lo <= value <= self.hi:
                    return f"must be from {self.lo:g} to {self.hi:g}"
            elif not self.lo <= value < self.hi:
                return f"must be an integer from {self.lo} to {self.hi - 1}"
        return None

    def null(self) -> "Kind":
        return dataclasses.replace(self, nullable=True)


# Field kinds, each declared once.
STR = Kind("a string", (str,))
ID = Kind("an id", (int,), 0, INT64)                      # database keys: batches, workers
COUNT = Kind("a count", (int,), 0, INT64)                 # offsets, limits, max_requeues
INDEX = Kind("a run index", (int,), 0, INT64)             # batch_index < n_runs (checked against the batch)
ATTEMPT = Kind("an attempt number", (int,), 0, 2 ** 31)
N_RUNS = Kind("a number of runs", (int,), 0, 2 ** 31)     # api narrows to MAX_RUNS
PID = Kind("a process id", (int,), 0, 2 ** 31)
CODE = Kind("a status code", (int,), 0, 1000)
NUM = Kind("a finite number", (int, float), -1e300, 1e300)
TRAIT = Kind("a finite number", (int, float), -1e6, 1e6)  # cost, speed, priority (contract: protocol v2)
SECONDS = Kind("a number of seconds", (int, float), 0, 1e12)
BOOL = Kind("true or false", (bool,))
MAP = Kind("an object", (dict,))
ANY = Kind("a JSON value", (str, int, float, bool, dict, list), nullable=True)
OPT_STR, OPT_ID, OPT_INDEX, OPT_ATTEMPT, OPT_COUNT = STR.null(), ID.null(), INDEX.null(), ATTEMPT.null(), COUNT.null()
OPT_CODE, OPT_SECONDS, OPT_MAP = CODE.null(), SECONDS.null(), MAP.null()
# Generic kinds for fields with no tighter natural bound (and for SCHEMA entries other streams add).
INT = Kind("an integer", (int,), -INT64, INT64)
LIST = Kind("an array", (list,))
OPT_INT, OPT_NUM = INT.null(), NUM.null()
PREFETCH = Kind("a number of runs to hold", (int,), 1, 65)   # worker --prefetch N (runq holds at most 64)

# name -> {field: kind}.  A field listed in OPTIONAL may be absent.
_RUN = {"batch_id": ID, "batch_index": INDEX, "attempt": ATTEMPT}
_OPT_RUN = {"batch_id": OPT_ID, "batch_index": OPT_INDEX, "attempt": OPT_ATTEMPT}
_WORKER_TRAITS = {
    "host": STR, "pid": PID, "group": STR, "user": STR, "engine": STR,
    "cost": TRAIT, "speed": TRAIT, "priority": TRAIT,
}
SCHEMA: dict[str, dict[str, object]] = {
    # connection opening, both roles (runq/auth.py)
    "Hello": dict(version=INT, role=STR, nonce=STR, key_id=OPT_STR),
    "RunqChallenge": dict(version=INT, instance=STR, nonce=STR, proof=OPT_STR),
    "Auth": dict(proof=OPT_STR),
    # worker -> runq
    # prefetch (optional, default 1): how many runs runq may assign the worker at once
    "WorkerReady": dict(_WORKER_TRAITS, prefetch=PREFETCH),
    "WorkerReconnect": dict(_WORKER_TRAITS, worker_id=ID, proof=OPT_STR, **_OPT_RUN, prefetch=PREFETCH),
    # a prefetching worker starts computing a run it held (its time limit starts now)
    "WorkerStartedRun": dict(worker_id=ID, **_RUN),
    # seq: highest RunqAssignRun.seq received; runs: [[batch_id, batch_index, attempt], ...] it computes
    "WorkerHeartbeat": dict(worker_id=ID, seq=COUNT, runs=LIST),
    "WorkerUpdate": dict(worker_id=ID, **_RUN, progress=NUM, message=OPT_STR),
    "WorkerFinishedRun": dict(worker_id=ID, **_RUN, data=ANY),
    # kind: run | worker | transient (runq/states.py FAILURE_KINDS); absent = transient
    "WorkerFailedRun": dict(worker_id=ID, **_RUN, message=STR, traceback=OPT_STR, kind=OPT_STR),
    "WorkerAbortedRun": dict(worker_id=ID, **_RUN, message=OPT_STR),
    "WorkerStoppedRun": dict(worker_id=ID, **_RUN),
    "WorkerDraining": dict(worker_id=ID),
    # one piece of a finished run's output file, sent before its WorkerFinishedRun (runq/files.py)
    "WorkerFileChunk": dict(worker_id=ID, **_RUN, name=STR, offset=COUNT, data=STR, last=BOOL),
    # runq -> worker
    # key: only at a registration without a worker secret (with one, both ends derive it)
    "RunqAcceptWorker": dict(worker_id=ID, heartbeat_interval=SECONDS, keep_run=BOOL, key=OPT_STR),
    "RunqAssignRun": dict(**_RUN, seq=COUNT, engine=STR, param=MAP, time_limit=OPT_SECONDS),
    "RunqAck": dict(**_RUN, accepted=BOOL, message=OPT_STR),
    "RunqAbortRun": dict(**_RUN, reason=STR),
    "RunqGetStatus": {},
    "RunqDrain": {},
    "RunqError": dict(message=STR, code=OPT_CODE),  # code: HTTP-like; 401 = bad secret, 426 = version
    # runweb (or any client) -> runq; each gets one Reply
    "Ping": {},
    "StartBatch": dict(
        name=STR, group=STR, user=STR, engine=STR, n_runs=N_RUNS, param=MAP,
        max_attempts=OPT_ATTEMPT, max_requeues=OPT_COUNT, time_limit=OPT_SECONDS, idempotency_key=OPT_STR,
        priority=OPT_INT,   # higher first among one owner's batches; absent/null = 0
        sweep=OPT_MAP, zip=OPT_MAP,   # runq/sweep.py: n_runs is derived (given as well, it must equal)
    ),
    "BatchList": dict(user=OPT_STR, offset=COUNT, limit=COUNT),
    # if_page: the `page` tag of the page the asker holds ("" for none); given, the Reply carries
    # the batch's `version` and the page's `page` tag (when runq makes one: pages without `state`
    # on SQLite) and, while that tag is the asker's, `not_modified: true` and the batch without runs
    "BatchStatus": dict(batch_id=ID, offset=COUNT, limit=COUNT, state=OPT_STR, if_page=OPT_STR),
    "BatchResults": dict(batch_id=ID, start=COUNT, limit=COUNT, state=OPT_STR),
    "RunStatus": dict(batch_id=ID, batch_index=INDEX),
    "RunFile": dict(batch_id=ID, batch_index=INDEX, name=STR, offset=COUNT),   # a piece of an output file
    "UserStatus": dict(user=STR, offset=COUNT, limit=COUNT),
    "WorkerList": dict(offset=COUNT, limit=COUNT),
    "WorkerStatus": dict(worker_id=ID),
    "CancelBatch": dict(batch_id=ID),
    "CancelRun": dict(batch_id=ID, batch_index=INDEX),
    "DrainWorker": dict(worker_id=ID),
    "Metrics": {},   # runq's counters and gauges for GET /metrics (runq/metrics.py)
    # a failed login runweb reports (failed: true) or asks about; the Reply says retry_after (s or null)
    "LoginThrottle": dict(address=STR, user=STR, failed=BOOL),
    # runq -> client: {status: ok|error, code, message, ...data}
    "Reply": dict(status=STR, code=CODE, message=STR),
}
OPTIONAL: dict[str, frozenset[str]] = {
    "Hello": frozenset({"key_id"}),
    "WorkerReady": frozenset({"prefetch"}),
    "WorkerReconnect": frozenset({"proof", "batch_id", "batch_index", "attempt", "prefetch"}),
    "RunqAcceptWorker": frozenset({"key"}),
    "WorkerUpdate": frozenset({"message"}),
    "WorkerFailedRun": frozenset({"traceback", "kind"}),
    "WorkerAbortedRun": frozenset({"message"}),
    "RunqAck": frozenset({"message"}),
    "RunqError": frozenset({"code"}),
    "RunqAssignRun": frozenset({"time_limit"}),
    "StartBatch": frozenset({
        "name", "group", "user", "param", "max_attempts", "max_requeues", "time_limit", "idempotency_key",
        "priority", "n_runs", "sweep", "zip",
    }),
    "RunFile": frozenset({"offset"}),
    "BatchList": frozenset({"user", "offset", "limit"}),
    "UserStatus": frozenset({"offset", "limit"}),
    "WorkerList": frozenset({"offset", "limit"}),
    "BatchStatus": frozenset({"offset", "limit", "state", "if_page"}),
    "BatchResults": frozenset({"start", "limit", "state"}),
}
# Who asks (web stream): every client request may carry the runweb user it acts for and whether
# that user is an admin.  Absent = a holder of the client secret (fab, benches): admin.
CLIENT_REQUESTS = ("StartBatch", "BatchList", "BatchStatus", "RunStatus", "UserStatus", "WorkerList",
                   "WorkerStatus", "CancelBatch", "CancelRun", "DrainWorker", "BatchResults", "RunFile")
for _name in CLIENT_REQUESTS:
    SCHEMA[_name].update(actor=OPT_STR, admin=BOOL)
    OPTIONAL[_name] = OPTIONAL.get(_name, frozenset()) | {"actor", "admin"}
# Messages a worker sends (everything else a client may send is a request).
FROM_WORKER = frozenset({
    "WorkerReady", "WorkerReconnect", "WorkerHeartbeat", "WorkerUpdate", "WorkerStartedRun", "WorkerFinishedRun",
    "WorkerFailedRun", "WorkerAbortedRun", "WorkerStoppedRun", "WorkerDraining", "WorkerFileChunk",
})
# Replies carry arbitrary data beside the envelope; the opening messages may grow optional
# fields in later versions, which older peers ignore.
OPEN_TYPES = frozenset({"Reply", "Hello", "RunqChallenge"})
VERSION = 2


def string_problem(text: str) -> str | None:
    """Strings are valid Unicode (no lone surrogate: a JSON "\\ud800" decodes to one) without NUL."""
    if "\0" in text:
        return "must not contain NUL characters"
    if not text.isascii() and _lone_surrogate(text):
        return "must be valid Unicode (it holds a lone surrogate)"
    return None


def nested_problem(value, max_depth: int = MAX_DEPTH) -> str | None:
    """Inside param, data and replies: depth bounded, numbers finite and 64-bit, strings and keys valid Unicode.

    NUL is allowed here (engine output may hold it; JSON and SQLite carry it).  Iterative, so a deep
    value cannot exhaust the stack.
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= max_depth:
                return f"nests deeper than {max_depth} levels"
            for key, sub in item.items():
                if not isinstance(key, str):
                    return "has a key that is not a string"
                if not key.isascii() and _lone_surrogate(key):
                    return "holds a lone surrogate"
                stack.append((sub, depth + 1))
        elif isinstance(item, (list, tuple)):   # a tuple: only ever on the sending side, encoded as a list
            if depth >= max_depth:
                return f"nests deeper than {max_depth} levels"
            stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            if not item.isascii() and _lone_surrogate(item):
                return "holds a lone surrogate"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "holds a number that is not finite"
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -INT64 <= item < INT64:
                return "holds an integer beyond 64 bits"
        elif item is not None and not isinstance(item, bool):
            return f"holds a {type(item).__name__}"
    return None


def clean_text(text: str) -> str:
    """Text from an engine or a program made fit for a STR field: NUL and lone surrogates replaced."""
    if "\0" in text:
        text = text.replace("\0", "\ufffd")
    if _lone_surrogate(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check(msg: dict) -> dict:
    """Validate a message dict in place; return it.  Raise ProtocolError naming the bad field."""
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    mtype = msg.get("type")
    schema = SCHEMA.get(mtype) if isinstance(mtype, str) else None
    if schema is None:
        shown = mtype if not isinstance(mtype, str) or len(mtype) < 64 else mtype[:64] + "..."
        raise ProtocolError(f"unknown message type {shown!r}")
    optional = OPTIONAL.get(mtype, ())
    present = 1  # type
    for field, kind in schema.items():
        if field not in msg:
            if field in optional:
                continue
            raise ProtocolError(f"{mtype}: missing field {field!r}")
        present += 1
        value = msg[field]
        if kind.fits(value):
            continue
        problem = kind.problem(value)
        if problem is not None:
            raise ProtocolError(f"{mtype}: field {field!r} {problem}")
    extra = set(msg) - set(schema) - {"type"} if len(msg) > present else ()
    if extra:
        if mtype not in OPEN_TYPES:
            raise ProtocolError(f"{mtype}: unknown field {sorted(extra)[0][:64]!r}")
        for field in extra:  # replies carry data: bounded and clean like param
            problem = ("has a name that is not valid Unicode" if _lone_surrogate(field)
                       else nested_problem(msg[field], REPLY_DEPTH))
            if problem is not None:
                raise ProtocolError(f"{mtype}: field {field[:64]!r} {problem}")
    return msg


def message(mtype: str, **fields) -> dict:
    """Build and validate one message."""
    return check({"type": mtype, **fields})


def reply(status: str = "ok", code: int = 200, message: str = "ok", **data) -> dict:
    return {"type": "Reply", "status": status, "code": code, "message": message, **data}


# Built once: json.dumps/loads with options build a new encoder/decoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# JSONEncoder.encode builds its C encoder anew on every call (about a third of encoding a
# worker's report): build it once.  Without a markers dict (which an exception would leave
# dirty), a circular value ends in RecursionError, refused below like every unencodable value.
_C_ENCODER = (json.encoder.c_make_encoder(None, _ENCODER.default, json.encoder.c_encode_basestring, None,
                                          ":", ",", False, False, False)
              if json.encoder.c_make_encoder is not None and json.encoder.c_encode_basestring is not None
              else None)


def encode(msg: dict) -> bytes:
    """One frame: length prefix + UTF-8 JSON (non-ASCII kept as UTF-8 bytes)."""
    try:
        body = ("".join(_C_ENCODER(msg, 0)) if _C_ENCODER is not None else _ENCODER.encode(msg)).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:   # a lone surrogate, NaN: never on the wire
        raise ProtocolError(f"cannot encode {msg.get('type')}: {exc}") from None
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def decode_message(body: bytes) -> dict:
    """Parse one frame body; NaN, Infinity and numbers that overflow to them are refused here."""
    try:
        msg = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"frame nests deeper than {MAX_DEPTH} levels") from None
    return check(msg)


class FrameReader:
    """Incremental frame decoder: feed bytes, get whole message bodies.

    ``feed`` returns every body completed; runq uses ``push`` and ``pop`` to take one
    body at a time, so a cap that changes with the peer's role applies to the next header.
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self.push(data)
        bodies = []
        while (body := self.pop()) is not None:
            bodies.append(body)
        return bodies

    def push(self, data: bytes) -> None:
        self.buf += data

    def pop(self) -> bytes | None:
        """The next whole body, or None until more bytes come.  An oversized header raises at once."""
        if len(self.buf) < 4:
            return None
        (n,) = HEADER.unpack_from(self.buf)
        if n > self.max_frame:
            raise ProtocolError(f"frame of {n} bytes exceeds the {self.max_frame}-byte limit")
        if len(self.buf) < 4 + n:
            return None
        body = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return body


def run_key(msg: dict) -> tuple[int, int, int] | None:
    """(batch_id, batch_index, attempt) a message speaks of, or None."""
    if msg.get("batch_id") is None:
        return None
    if msg.get("batch_index") is None or msg.get("attempt") is None:   # optional, but all or none
        raise ProtocolError(f"{msg['type']}: batch_id needs batch_index and attempt")
    return msg["batch_id"], msg["batch_index"], msg["attempt"]
