"""The body of POST /batch/new: raw bytes of YAML -> the fields of a StartBatch message.

Pure (no HTTP, no runq), so every rule is a row of a table-driven test.  Any
problem raises InvalidRequest with a message naming the field.  Only fields
the request gives are passed on; runq fills in the defaults (conf batch:).

The fields are StartBatch's (declared once, with the batch record: simx/records.py).
Each gets a converter chosen by its kind (``BY_KIND``) unless it needs its own
(``BY_FIELD``), so a new batch field of a known kind needs no edit here.
"""
from __future__ import annotations

import datetime
import math
import unicodedata

import yaml

from simx import kinds, limits, protocol
from simx.limits import (MAX_COUNT, MAX_DEPTH, MAX_KEY_CHARS, MAX_NAME_CHARS, MAX_PARAM_BYTES, MAX_PRIORITY,
                         MAX_RUNS)
from simx.protocol import json_size

from . import yaml_loader
from .errors import InvalidRequest
from .yaml_loader import NotDecimal

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
EXAMPLE = "runweb/example/batch-req.yaml"


def load_yaml(body: bytes):
    """One YAML document from UTF-8 bytes; InvalidRequest("malformed YAML: ...") with line and column."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"malformed YAML: not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml_loader.load(text)
    except yaml_loader.TooLarge as exc:
        raise InvalidRequest(f"request body: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = ", ".join(s for s in (exc.context, exc.problem) if s)  # PyYAML writes them as one sentence
        raise InvalidRequest(f"malformed YAML: {where}{what}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"malformed YAML: {exc}") from None
    except RecursionError:
        raise InvalidRequest("malformed YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp like 2020-13-45
        raise InvalidRequest(f"malformed YAML: {exc}") from None


def describe(value) -> str:
    """A value as an error message shows it, with a hint where YAML surprises people."""
    if value is None:
        return "null"
    if isinstance(value, NotDecimal):
        return (f"{str(value)[:40]!r}, which is not a plain decimal number (write integers as 1000, "
                "not 0x3e8, 1_000 or 16:40; quote it for a string)")
    if isinstance(value, bool):
        return f"{str(value).lower()} (YAML reads yes/no/on/off/true/false as booleans; quote it for a string)"
    if isinstance(value, datetime.date):
        return f"the date/time {value.isoformat()} (quote it for a string)"
    if isinstance(value, str):
        return f"the string {value[:40] + '...' if len(value) > 40 else value!r}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a YAML {type(value).__name__}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plain_text(label: str, value: str, limit: int = MAX_NAME_CHARS, lines: bool = False) -> str:
    """A name as people read it: no NUL or other control characters, no bidi overrides (they make
    a name look like another), no lone surrogates (not text at all); at most `limit` characters.
    ``lines``: free text, which may hold line breaks and tabs."""
    if len(value) > limit:
        raise InvalidRequest(f"{label} is longer than {limit} characters")
    for ch in value:
        if lines and ch in "\n\t":
            continue
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
            what = ("a lone surrogate" if unicodedata.category(ch) == "Cs" else
                    "a bidirectional-text control" if ch in BIDI_CONTROLS else "a control character")
            raise InvalidRequest(f"{label} contains {what} (U+{ord(ch):04X}); names must be plain text")
    return value


def _text(label: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return plain_text(label, str(value))
    if _is_int(value):
        return str(value)
    raise InvalidRequest(f"{label} must be a string, not {describe(value)}")


def _free_text(label: str, value) -> str:
    """A description: free text over lines, bounded by its kind (limits.MAX_DESCRIPTION_CHARS)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{label} must be a string, not {describe(value)}")
    return plain_text(label, str(value), limits.MAX_DESCRIPTION_CHARS, lines=True)


def _engine(label: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{label} must be a non-empty string, not {describe(value)}")
    return plain_text(label, str(value))


def _int_in(low: int, high: int):
    def convert(label: str, value) -> int:
        if not _is_int(value):
            raise InvalidRequest(f"{label} must be an integer, not {describe(value)}")
        if not low <= value <= high:
            bound = f"at least {low}" if value < low else f"at most {high}"
            raise InvalidRequest(f"{label} must be {bound}, not {value}")
        return value
    return convert


def _time_limit(label: str, value) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{label} must be a number of seconds or null, not {describe(value)}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"{label} must be a number of seconds > 0, not {value}")
    return value


def _key(label: str, value) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{label} must be a string, not {describe(value)}")
    if not 1 <= len(value) <= MAX_KEY_CHARS:
        raise InvalidRequest(f"{label} must be 1 to {MAX_KEY_CHARS} characters long, not {len(value)}")
    return plain_text(label, str(value))


def _param(label: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{label} must be a mapping, not {describe(value)}")
    _check_json(value, "param")
    size = json_size(value)
    if size > MAX_PARAM_BYTES:
        raise InvalidRequest(f"field 'param' is {size} bytes as JSON, over the {MAX_PARAM_BYTES}-byte limit")
    return value


def _encodable(root: str, path: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"field '{root}': {path} holds a lone surrogate (U+{ord(text[exc.start]):04X}), "
                             "which is not text") from None


def _check_json(value, root: str) -> None:
    """Refuse what JSON (the wire) cannot carry unchanged; bound the size with aliases expanded."""
    budget = MAX_PARAM_BYTES
    stack = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"field '{root}' is nested more than {MAX_DEPTH} levels deep (at {path})")
        if isinstance(item, NotDecimal):
            raise InvalidRequest(f"field '{root}': {path} is {describe(item)}")
        if isinstance(item, str):
            _encodable(root, path, item)
            budget -= len(item.encode("utf-8")) + 3
        elif isinstance(item, int) and not isinstance(item, bool) and not -limits.INT64 <= item < limits.INT64:
            raise InvalidRequest(f"field '{root}': {path} is {item}, outside the 64-bit integers runq stores "
                                 f"(-2^63 to 2^63-1); quote it if you mean text")
        elif item is None or isinstance(item, (bool, int)):
            budget -= 6
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"field '{root}': {path} is {item}, which JSON cannot carry")
            budget -= 12
        elif isinstance(item, dict):
            budget -= 2
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidRequest(f"field '{root}': key {describe(key)} in {path} is not a string; quote it")
                _encodable(root, path, key)
                budget -= len(key.encode("utf-8")) + 4
                stack.append((sub, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            budget -= 2
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        else:
            raise InvalidRequest(f"field '{root}': {path} is {describe(item)}, which JSON cannot carry")
        if budget < 0:
            raise InvalidRequest(f"field '{root}' is larger than the {MAX_PARAM_BYTES}-byte limit as JSON "
                                 "(YAML aliases are expanded)")


def _sweep_table(label: str, value) -> dict | None:
    """sweep: / zip: a mapping of param names (dotted for nested keys) to lists of values; runq checks
    the rest (runq/sweep.py, the engine's schema)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{label} must be a mapping of param names to lists of values, not {describe(value)}")
    for key, values in value.items():
        if not isinstance(values, list):
            raise InvalidRequest(f"{label}: {key} must be a list of values, not {describe(values)}")
    _check_json(value, label.split("'")[1] if "'" in label else label)
    return value


# The converter of a field of each kind (StartBatch's kinds: simx/kinds.py) ...
BY_KIND = {
    kinds.STR: _text, kinds.OPT_STR: _text, kinds.TEXT: _free_text, kinds.OPT_TEXT: _free_text,
    kinds.MAP: _param, kinds.OPT_MAP: _sweep_table, kinds.OPT_SECONDS: _time_limit,
}
# ... and of the fields that need their own (tighter bounds than their kind's).
BY_FIELD = {
    "engine": _engine, "n_runs": _int_in(1, MAX_RUNS),
    "max_attempts": _int_in(1, MAX_COUNT), "max_requeues": _int_in(0, MAX_COUNT), "idempotency_key": _key,
    "priority": _int_in(-MAX_PRIORITY, MAX_PRIORITY),   # higher first among one owner's batches
}
# field -> converter, in StartBatch order: every field StartBatch declares for its asker.
FIELDS = {field: BY_FIELD.get(field) or BY_KIND[kind] for field, kind in protocol.request_fields("StartBatch").items()}
REQUIRED = tuple(f for f in FIELDS if f not in protocol.OPTIONAL["StartBatch"])   # and n_runs, unless a sweep or zip gives it
DEFAULT_WHEN_NULL = frozenset({"max_attempts", "max_requeues", "idempotency_key", "priority"})  # null: leave it to runq


def parse(body: bytes, idempotency_header: str | None = None) -> dict:
    """StartBatch fields from a YAML request body and the optional Idempotency-Key header."""
    doc = load_yaml(body)
    if doc is None:
        raise InvalidRequest(f"the request body is empty; send a YAML batch request like {EXAMPLE}")
    if not isinstance(doc, dict):
        raise InvalidRequest(f"a batch request must be a YAML mapping of fields like {EXAMPLE}, "
                             f"not {describe(doc)}")
    for key in doc:
        if key not in FIELDS:
            raise InvalidRequest(f"unknown field {key!r}; known fields: {', '.join(FIELDS)}")
    for field in REQUIRED:
        if field not in doc:
            raise InvalidRequest(f"field '{field}' is required")
    if "n_runs" not in doc and doc.get("sweep") is None and doc.get("zip") is None:
        raise InvalidRequest("field 'n_runs' is required (or a sweep or zip, from which it is derived)")
    fields = {}
    for field, convert in FIELDS.items():
        if field in doc and not (doc[field] is None and field in DEFAULT_WHEN_NULL):
            fields[field] = convert(f"field '{field}'", doc[field])
    if idempotency_header is not None:
        header = _key("header 'Idempotency-Key'", idempotency_header)
        if fields.get("idempotency_key", header) != header:
            raise InvalidRequest("header 'Idempotency-Key' and field 'idempotency_key' differ")
        fields["idempotency_key"] = header
    return fields
