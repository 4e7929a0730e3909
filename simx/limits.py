"""Bounds that more than one program checks, each declared once."""
from __future__ import annotations

import json

MAX_ID = 2 ** 63 - 1              # ids and indexes: SQLite's signed 64-bit integers
MAX_HELD_RUNS = 64                # runs a prefetching worker may hold (worker --prefetch N)
MAX_RESULT_BYTES = 1024 * 1024    # a run's stored result as JSON (larger ones fail the run)
MAX_PARAM_BYTES = 1024 * 1024     # a batch's param as JSON
MAX_PRIORITY = 1_000_000          # batch priority: an integer within +-MAX_PRIORITY

# output files of a run (worker uploads, runq keeps: runq/files.py)
FILE_CHUNK = 1024 * 1024          # largest chunk a worker may send, decoded [1 MiB]
MAX_FILE_NAME_BYTES = 255


def file_name_problem(name) -> str | None:
    """Why `name` cannot be a run's output file name (one path component, no NUL, not . or ..,
    no control characters, at most 255 bytes), or None."""
    if not isinstance(name, str) or not name:
        return "file name must be a non-empty string"
    if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        return f"file name {name[:80]!r}: no path separators, NUL, '.' or '..'"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return f"file name {name[:80]!r}...: longer than {MAX_FILE_NAME_BYTES} bytes"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"file name {name[:80]!r}: control characters"
    return None


def json_size(value) -> int:
    """Bytes of `value` as compact UTF-8 JSON: what the size limits measure."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
