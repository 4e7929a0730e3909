"""The records runq stores, each field declared once: batches, runs, attempts, workers.

A field's ``type`` is its column type (``i`` integer, ``f`` float, ``s`` text, ``j`` JSON
text); ``role`` says when it is written: ``key`` (identity), ``submit`` (once, when the
record is created, from what was asked), ``state`` (changes while the record lives).
``backfill`` is the value rows written by an older version get when the column is added.

The store's columns (``COLUMNS``), its migrations (``BACKFILL``), the in-memory rows and the
views derive from these declarations: adding a stored field is one line here.
"""
from __future__ import annotations

import dataclasses

MISSING = object()


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: str                      # i, f, s, j
    role: str = "state"            # key, submit, state
    backfill: object = MISSING     # value for rows written before the column existed
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Record:
    table: str
    fields: tuple[Field, ...]

    def names(self, *roles: str) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not roles or f.role in roles)

    def columns(self) -> dict[str, str]:
        return {f.name: f.type for f in self.fields}

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


F = Field
BATCH = Record("batches", (
    F("id", "i", "key"),
    F("name", "s", "submit", doc="free text naming the batch"),
    F("group", "s", "submit", doc="workers of this group take it ('' = any)"),
    F("user", "s", "submit", doc="workers of this user take it ('' = any)"),
    F("engine", "s", "submit"),
    F("n_runs", "i", "submit"),
    F("param", "j", "submit"),
    F("max_attempts", "i", "submit"),
    F("max_requeues", "i", "submit"),
    F("time_limit", "f", "submit"),
    F("idempotency_key", "s", "submit"),
    F("start_time", "f", "submit"),
    F("priority", "i", "submit", backfill=0, doc="higher first among one owner's batches"),
    F("owner", "s", "submit", doc="the runweb user who submitted it; rows from before owners: their user"),
    F("sweep", "j", "submit", doc="{sweep, zip} (simx/sweep.py), or NULL: every run has the batch's param"),
    F("state", "s"),
    F("next_index", "i", doc="runs at or past this index were never dispatched"),
    F("n_waiting", "i"), F("n_running", "i"), F("n_finished", "i"), F("n_failed", "i"), F("n_cancelled", "i"),
    F("end_time", "f"),
    # +1 by every commit that writes the batch's row or one of its runs: while it stays, a page
    # of its runs is the same (the reader reads only the page's workers again)
    F("version", "i", backfill=0),
))
RUN = Record("runs", (
    F("batch_id", "i", "key"), F("batch_index", "i", "key"),
    F("state", "s"), F("attempt", "i"), F("failures", "i"), F("requeues", "i"),
    F("worker_id", "i"), F("host", "s"), F("progress", "f"), F("message", "s"),
    F("result", "j"), F("error", "s"), F("traceback", "s"), F("started", "f"), F("ended", "f"),
    F("retry_at", "f", doc="waiting out a retry backoff until then (NULL: dispatchable)"),
))
ATTEMPT = Record("attempts", (
    F("batch_id", "i", "key"), F("batch_index", "i", "key"), F("attempt", "i", "key"),
    F("worker_id", "i"), F("host", "s"), F("started", "f"), F("ended", "f"), F("outcome", "s"), F("message", "s"),
))
WORKER = Record("workers", (
    F("id", "i", "key"),
    F("host", "s", "submit"), F("ipaddr", "s"), F("pid", "i", "submit"),
    F("group", "s", "submit"), F("user", "s", "submit"), F("engine", "s", "submit"),
    F("cost", "f", "submit"), F("speed", "f", "submit"), F("priority", "f", "submit"),
    F("state", "s"), F("batch_id", "i"), F("batch_index", "i"), F("started", "f", "submit"),
    F("last_contact", "f"), F("draining", "i"),
    F("key", "s", doc="proof of identity on reconnect (hex)"),
    F("assign_seq", "i", doc="seq of its latest RunqAssignRun"),
    F("broken", "s", doc="why it cannot run its engine (state broken), committed with that state; else NULL"),
))
META = Record("meta", (F("name", "s", "key"), F("value", "s")))

RECORDS = (BATCH, RUN, ATTEMPT, WORKER, META)
COLUMNS = {r.table: r.columns() for r in RECORDS}
BACKFILL = {(r.table, f.name): f.backfill for r in RECORDS for f in r.fields if f.backfill is not MISSING}
