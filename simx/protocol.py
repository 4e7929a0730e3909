"""The wire protocol shared by runq, runweb and worker: messages and framing.

A frame is a 4-byte big-endian byte count followed by that many bytes of UTF-8
JSON: one object with a ``type`` field naming the message.  Nothing is ever
deserialized into language objects beyond JSON's own types.

Each message is declared once (``MESSAGES``): who sends it, its fields with their
kinds (simx/kinds.py), which may be absent (``opt``).  From the declarations come
``check`` (a bad field raises ``ProtocolError`` naming it), one compiled quick check
per message (``Message.quick``: the common case in one expression, used by ``check``,
``message`` and the worker's wire), and the tables older code reads (``SCHEMA``,
``OPTIONAL``, ``FROM_WORKER``, ``CLIENT_REQUESTS``).  A batch's and a worker's fields
are declared with their records (simx/records.py ``ask``) and taken from there.

Messages are plain dicts on both ends (cheap on runq's hot path).  ``message(type,
**fields)`` builds one and checks it (about a microsecond for the per-run messages),
``decode_message()`` parses and checks one.

A new message is one ``M(...)`` line in ``DECLARATIONS`` (its sender puts it in
``FROM_WORKER`` or ``CLIENT_REQUESTS``, its kinds give the checks and the worker's quick
path); then the sender calls ``message()`` and the receiver handles it.
"""
from __future__ import annotations

import dataclasses
import json
import json.encoder
import math
import struct

from . import kinds, limits, records
from .kinds import (ANY, ATTEMPT, BOOL, CODE, COUNT, ID, INDEX, INT, LIST, MAP, N_RUNS, NUM,  # noqa: F401
                    OPT_ATTEMPT, OPT_CODE, OPT_COUNT, OPT_ID, OPT_INDEX, OPT_INT, OPT_MAP, OPT_NUM, OPT_SECONDS,
                    OPT_STR, OPT_TEXT, PID, PREFETCH, SECONDS, STR, TEXT, TRAIT, Kind, Opt, nested_problem, opt,
                    string_problem)

MAX_FRAME = 10 * 1024 * 1024  # bytes, as the original
HEADER = struct.Struct(">I")
MAX_DEPTH = limits.MAX_DEPTH   # nesting of arrays/objects inside param and data
REPLY_DEPTH = MAX_DEPTH + 4  # a reply wraps stored values (runs[i].result, batch.param) a few levels down
INT64 = limits.INT64         # SQLite's integers are signed 64-bit
VERSION = 2
_lone_surrogate = kinds.lone_surrogate

# Who sends a message: a worker, runq, a client (runweb, fab, benches), or either peer of runq.
WORKER, RUNQ, CLIENT, EITHER = "worker", "runq", "client", "either"
# Who asks (web stream): every client request may carry the runweb user it acts for and whether
# that user is an admin.  Absent = a holder of the client secret (fab, benches): admin.
WHO = {"actor": opt(OPT_STR), "admin": opt(BOOL)}


class ProtocolError(Exception):
    """A frame or message that does not follow the protocol."""


@dataclasses.dataclass(frozen=True)
class Message:
    """One message type: its sender, its fields (name -> Kind, or ``opt(Kind)`` when it may be
    absent), whether it may carry fields beyond these (``open``: replies carry data; the
    opening messages may grow fields older peers ignore), and whether it is a client request
    acting for someone (``WHO`` fields added)."""
    name: str
    sender: str
    declared: dict
    open: bool = False
    request: bool = False

    def __post_init__(self):
        declared = dict(self.declared, **WHO) if self.request else dict(self.declared)
        fields = {f: k.kind if isinstance(k, Opt) else k for f, k in declared.items()}
        optional = frozenset(f for f, k in declared.items() if isinstance(k, Opt))
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "quick", _compile_quick(self.name, fields, optional))


def _compile_quick(name: str, fields: dict, optional: frozenset):
    """``quick(msg) -> bool``: True only if ``check`` accepts ``msg`` (of type ``name``), in one
    expression per field; False means "ask check", never "refused"."""
    required = [f for f in fields if f not in optional]
    lines = ["def quick(m):"]
    if required:
        lines += ["    try:", *(f"        v{i} = m[{f!r}]" for i, f in enumerate(required)),
                  "    except KeyError:", "        return False",
                  "    if not (" + " and ".join(fields[f].expr(f"v{i}") for i, f in enumerate(required)) + "):",
                  "        return False"]
    lines.append(f"    n = {len(required) + 1}")
    for f in optional:
        lines += [f"    if {f!r} in m:", "        n += 1", f"        o = m[{f!r}]",
                  f"        if not {fields[f].expr('o')}:", "            return False"]
    lines.append("    return len(m) == n")
    namespace = dict(kinds.NAMES)
    exec(compile("\n".join(lines), f"<quick {name}>", "exec"), namespace)
    return namespace["quick"]


M = Message
_RUN = {"batch_id": ID, "batch_index": INDEX, "attempt": ATTEMPT}
_OPT_RUN = {"batch_id": opt(OPT_ID), "batch_index": opt(OPT_INDEX), "attempt": opt(OPT_ATTEMPT)}
# cost, speed, priority, host, ...: declared with the worker record
WORKER_TRAITS = records.WORKER.asked()
_PAGE = {"offset": opt(COUNT), "limit": opt(COUNT)}
DECLARATIONS = (
    # connection opening, both roles (simx/auth.py)
    M("Hello", EITHER, dict(version=INT, role=STR, nonce=STR, key_id=opt(OPT_STR)), open=True),
    M("RunqChallenge", RUNQ, dict(version=INT, instance=STR, nonce=STR, proof=OPT_STR), open=True),
    M("Auth", EITHER, dict(proof=OPT_STR)),
    # worker -> runq
    # prefetch (optional, default 1): how many runs runq may assign the worker at once
    M("WorkerReady", WORKER, dict(WORKER_TRAITS, prefetch=opt(PREFETCH))),
    M("WorkerReconnect", WORKER, dict(WORKER_TRAITS, worker_id=ID, proof=opt(OPT_STR), **_OPT_RUN,
                                      prefetch=opt(PREFETCH))),
    # a prefetching worker starts computing a run it held (its time limit starts now)
    M("WorkerStartedRun", WORKER, dict(worker_id=ID, **_RUN)),
    # seq: highest RunqAssignRun.seq received; runs: [[batch_id, batch_index, attempt], ...] it computes
    M("WorkerHeartbeat", WORKER, dict(worker_id=ID, seq=COUNT, runs=LIST)),
    M("WorkerUpdate", WORKER, dict(worker_id=ID, **_RUN, progress=NUM, message=opt(OPT_STR))),
    M("WorkerFinishedRun", WORKER, dict(worker_id=ID, **_RUN, data=ANY)),
    # kind: one of records.FAILURE_KINDS; absent = transient
    M("WorkerFailedRun", WORKER, dict(worker_id=ID, **_RUN, message=STR, traceback=opt(OPT_STR),
                                      kind=opt(OPT_STR))),
    M("WorkerAbortedRun", WORKER, dict(worker_id=ID, **_RUN, message=opt(OPT_STR))),
    M("WorkerStoppedRun", WORKER, dict(worker_id=ID, **_RUN)),
    M("WorkerDraining", WORKER, dict(worker_id=ID)),
    # one piece of a finished run's output file, sent before its WorkerFinishedRun (runq/files.py)
    M("WorkerFileChunk", WORKER, dict(worker_id=ID, **_RUN, name=STR, offset=COUNT, data=STR, last=BOOL)),
    # runq -> worker
    # key: only at a registration without a worker secret (with one, both ends derive it)
    M("RunqAcceptWorker", RUNQ, dict(worker_id=ID, heartbeat_interval=SECONDS, keep_run=BOOL, key=opt(OPT_STR))),
    M("RunqAssignRun", RUNQ, dict(**_RUN, seq=COUNT, engine=STR, param=MAP, time_limit=opt(OPT_SECONDS))),
    M("RunqAck", RUNQ, dict(**_RUN, accepted=BOOL, message=opt(OPT_STR))),
    M("RunqAbortRun", RUNQ, dict(**_RUN, reason=STR)),
    M("RunqDrain", RUNQ, {}),
    M("RunqError", RUNQ, dict(message=STR, code=opt(OPT_CODE))),  # code: HTTP-like; 401 = bad secret, 426 = version
    # runweb (or any client) -> runq; each gets one Reply
    M("Ping", CLIENT, {}),
    # the batch record's asked fields (records.BATCH), then zip: runq/sweep.py; n_runs is derived
    # from sweep and zip (given as well, it must equal); priority: higher first among one owner's batches
    M("StartBatch", CLIENT, dict(records.BATCH.asked(), zip=opt(OPT_MAP)), request=True),
    M("BatchList", CLIENT, dict(user=opt(OPT_STR), **_PAGE), request=True),
    # if_page: the `page` tag of the page the asker holds ("" for none); given, the Reply carries
    # the batch's `version` and the page's `page` tag (when runq makes one: pages without `state`
    # on SQLite) and, while that tag is the asker's, `not_modified: true` and the batch without runs
    M("BatchStatus", CLIENT, dict(batch_id=ID, **_PAGE, state=opt(OPT_STR), if_page=opt(OPT_STR)), request=True),
    M("BatchResults", CLIENT, dict(batch_id=ID, start=opt(COUNT), limit=opt(COUNT), state=opt(OPT_STR)),
      request=True),
    M("RunStatus", CLIENT, dict(batch_id=ID, batch_index=INDEX), request=True),
    M("RunFile", CLIENT, dict(batch_id=ID, batch_index=INDEX, name=STR, offset=opt(COUNT)),   # a piece of a file
      request=True),
    M("UserStatus", CLIENT, dict(user=STR, **_PAGE), request=True),
    M("WorkerList", CLIENT, dict(_PAGE), request=True),
    M("WorkerStatus", CLIENT, dict(worker_id=ID), request=True),
    M("CancelBatch", CLIENT, dict(batch_id=ID), request=True),
    M("CancelRun", CLIENT, dict(batch_id=ID, batch_index=INDEX), request=True),
    M("DrainWorker", CLIENT, dict(worker_id=ID), request=True),
    M("Metrics", CLIENT, {}),   # runq's counters and gauges for GET /metrics (runq/metrics.py)
    # a failed login runweb reports (failed: true) or asks about; the Reply says retry_after (s or null)
    M("LoginThrottle", CLIENT, dict(address=STR, user=STR, failed=BOOL)),
    # runq -> client: {status: ok|error, code, message, ...data}
    M("Reply", RUNQ, dict(status=STR, code=CODE, message=STR), open=True),
)
MESSAGES: dict[str, Message] = {m.name: m for m in DECLARATIONS}

# The tables derived from the declarations (read by runq, tests and older code).
SCHEMA: dict[str, dict[str, Kind]] = {m.name: m.fields for m in DECLARATIONS}
OPTIONAL: dict[str, frozenset[str]] = {m.name: m.optional for m in DECLARATIONS if m.optional}
FROM_WORKER = frozenset(m.name for m in DECLARATIONS if m.sender == WORKER)
CLIENT_REQUESTS = tuple(m.name for m in DECLARATIONS if m.request)
OPEN_TYPES = frozenset(m.name for m in DECLARATIONS if m.open)
_QUICK = {m.name: m.quick for m in DECLARATIONS if not m.open}   # an open one most often carries more


def request_fields(mtype: str) -> dict[str, Kind]:
    """The fields a client request carries for its asker, without the WHO fields: name -> kind."""
    return {f: k for f, k in MESSAGES[mtype].fields.items() if f not in WHO}


def json_size(value) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (what a bound like limits.MAX_PARAM_BYTES counts)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def clean_text(text: str) -> str:
    """Text from an engine or a program made fit for a STR field: NUL and lone surrogates replaced."""
    if "\0" in text:
        text = text.replace("\0", "\ufffd")
    if _lone_surrogate(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def check(msg: dict) -> dict:
    """Validate a message dict in place; return it.  Raise ProtocolError naming the bad field."""
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    mtype = msg.get("type")
    quick = _QUICK.get(mtype) if isinstance(mtype, str) else None
    if quick is not None and quick(msg):
        return msg
    return _check_slowly(msg, mtype)


def _check_slowly(msg: dict, mtype) -> dict:
    """The whole check, naming the first problem found."""
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
        if kind.fits(value):   # replies (open: never quick) go this way
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
    """Build one message of the declared type and check it (``ProtocolError`` names a bad field).

    The one way to build a message, also on the hot path: the quick check is a compiled
    expression (about 1 µs for RunqAck or RunqAssignRun), and only a message it doubts goes
    through the whole check."""
    msg = {"type": mtype, **fields}
    quick = _QUICK.get(mtype)
    if quick is not None and "type" not in fields and quick(msg):
        return msg
    return _check_slowly(msg, msg.get("type"))


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
