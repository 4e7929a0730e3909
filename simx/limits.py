"""Every bound that more than one program checks, declared once.

runq enforces these; runweb, the CLI and the worker check the same bounds early so a
user gets a clear message before a request travels.  A bound only one program knows
stays in that program's module.  No imports: anything may import this.
"""
from __future__ import annotations

KIB, MIB = 1024, 1024 * 1024

# -- numbers and ids
INT64 = 2 ** 63                  # integers fit a signed 64-bit column (SQLite, PostgreSQL bigint)
MAX_ID = INT64 - 1               # database keys: batches, workers; also offsets
MAX_COUNT = 2 ** 31 - 1          # max_attempts, max_requeues, attempts, pids: anything larger is a typo
MAX_TRAIT = 1e6                  # a worker's cost, speed, priority: finite within [-MAX_TRAIT, MAX_TRAIT]

# -- a batch
MAX_RUNS = 100_000_000           # runs in one batch
MAX_PRIORITY = 1_000_000         # batch priority: an integer within +-MAX_PRIORITY
MAX_PARAM_BYTES = 1 * MIB        # a batch's param as JSON
MAX_DEPTH = 64                   # nesting of arrays/objects inside param and data
MAX_NAME_CHARS = 1000            # name, group, user, engine of a batch
MAX_KEY_CHARS = 200              # an idempotency key
MAX_DESCRIPTION_CHARS = 10_000   # a batch's description (free text)

# -- a run
MAX_RESULT_BYTES = 1 * MIB       # a run's stored result as JSON (runq refuses larger; engines stop there)
MAX_TEXT = 64 * KIB              # characters of a run's message or error a view shows (the rest stays stored)

# -- a worker
MAX_PREFETCH = 64                # runs a worker may hold at once (worker --prefetch, runq's check)

# -- output files of a run (worker/engines/outputs.py sends them, runq/files.py takes them)
FILE_CHUNK = 1 * MIB             # largest chunk a worker sends, decoded
MAX_RUN_FILES_BYTES = 100 * MIB  # bytes of output files per run (conf runq.files_max_run)
MAX_RUN_FILES = 10_000           # output files per run
MAX_FILE_NAME_BYTES = 255        # an output file's name


def file_name_problem(name) -> str | None:
    """Why `name` cannot be a run's output file name (one path component, no NUL, not . or ..,
    no control characters, at most MAX_FILE_NAME_BYTES bytes), or None."""
    if not isinstance(name, str) or not name:
        return "file name must be a non-empty string"
    if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        return f"file name {name[:80]!r}: no path separators, NUL, '.' or '..'"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return f"file name {name[:80]!r}...: longer than {MAX_FILE_NAME_BYTES} bytes"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"file name {name[:80]!r}: control characters"
    return None

# -- listings
DEFAULT_PAGE = 1000              # items per page when the asker names no limit
MAX_PAGE = 10_000                # items per page at most
PAGE_BYTES = 1 * MIB             # a listing page ends early (next_offset) past this much JSON
