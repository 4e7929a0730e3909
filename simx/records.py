"""The records runq stores, each field declared once: batches, runs, attempts, workers.

A field's ``type`` is its column type (``i`` integer, ``f`` float, ``s`` text, ``j`` JSON
text); ``role`` says when it is written: ``key`` (identity), ``submit`` (once, when the
record is created, from what was asked), ``state`` (changes while the record lives).
``backfill`` is the value rows written by an older version get when the column is added.
``ask`` is the field's kind in the message that creates the record (``StartBatch`` for a
batch, ``WorkerReady``/``WorkerReconnect`` for a worker's traits), wrapped in ``opt()`` when
the asker may leave it out: protocol.py declares those messages' fields from it, and runweb's
request converters, the CLI's request fields and the OpenAPI schemas derive from those.

The store's columns (``COLUMNS``), its migrations (``BACKFILL``), the in-memory rows and the
views derive from these declarations: adding a stored field is one line here (a field a
batch request may give, too: see ``description``).

The vocabulary of the state fields (the values a record's field may hold) is declared here
too, for every program that shows or filters by them; runq/states.py holds the transitions.
"""
from __future__ import annotations

import dataclasses

from .kinds import (MAP, N_RUNS, OPT_ATTEMPT, OPT_COUNT, OPT_INT, OPT_MAP, OPT_SECONDS, OPT_STR,
                    OPT_TEXT, PID, STR, TRAIT, Kind, Opt, opt)

MISSING = object()

# -- the values of state fields
RUN_STATES = ("waiting", "running", "finished", "failed", "cancelled")   # each has a batch counter n_<state>
RUN_ENDED = RUN_STATES[2:]   # a run in one of these never runs again
ASSIGNED = "assigned"   # a prefetched run its worker holds, not started yet (counted in n_running)
BATCH_STATES = ("active", "done", "failed", "cancelled")
BATCH_ENDED = BATCH_STATES[1:]   # runq/states.py batch_end_state picks one of them
FAILURE_KINDS = ("run", "worker", "transient")   # WorkerFailedRun.kind: whose fault (absent = transient)


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: str                      # i, f, s, j
    role: str = "state"            # key, submit, state
    backfill: object = MISSING     # value for rows written before the column existed
    doc: str = ""
    ask: Kind | Opt | None = None  # its kind in the message that creates the record (None: not asked)
    shown: bool = True             # False: stored, never in a view (keys, proofs, bookkeeping)


@dataclasses.dataclass(frozen=True)
class Record:
    table: str
    fields: tuple[Field, ...]

    def names(self, *roles: str) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not roles or f.role in roles)

    def asked(self) -> dict[str, Kind | Opt]:
        """The fields the creating message carries, in order: name -> kind (``opt(kind)`` if optional)."""
        return {f.name: f.ask for f in self.fields if f.ask is not None}

    def shown(self, *roles: str) -> tuple[Field, ...]:
        """The fields views show (of these roles), in order."""
        return tuple(f for f in self.fields if f.shown and (not roles or f.role in roles))

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
    F("name", "s", "submit", doc="free text naming the batch", ask=opt(STR)),
    F("description", "s", "submit", doc="free text describing the batch", ask=opt(OPT_TEXT)),
    F("group", "s", "submit", doc="workers of this group take it ('' = any)", ask=opt(STR)),
    F("user", "s", "submit", doc="workers of this user take it ('' = any)", ask=opt(STR)),
    F("engine", "s", "submit", ask=STR),
    F("n_runs", "i", "submit", ask=opt(N_RUNS), doc="derived from sweep/zip when they are given"),
    F("param", "j", "submit", ask=opt(MAP)),
    F("max_attempts", "i", "submit", ask=opt(OPT_ATTEMPT)),
    F("max_requeues", "i", "submit", ask=opt(OPT_COUNT)),
    F("time_limit", "f", "submit", ask=opt(OPT_SECONDS)),
    F("idempotency_key", "s", "submit", ask=opt(OPT_STR), shown=False),
    F("start_time", "f", "submit"),
    F("priority", "i", "submit", backfill=0, doc="higher first among one owner's batches", ask=opt(OPT_INT)),
    F("owner", "s", "submit", doc="the runweb user who submitted it; rows from before owners: their user"),
    # the request's sweep and zip (simx/sweep.py; n_runs is derived) are stored together as {sweep, zip}
    F("sweep", "j", "submit", doc="{sweep, zip} (simx/sweep.py), or NULL: every run has the batch's param",
      ask=opt(OPT_MAP)),
    F("state", "s"),
    F("next_index", "i", doc="runs at or past this index were never dispatched", shown=False),
    F("n_waiting", "i"), F("n_running", "i"), F("n_finished", "i"), F("n_failed", "i"), F("n_cancelled", "i"),
    F("end_time", "f"),
    # +1 by every commit that writes the batch's row or one of its runs: while it stays, a page
    # of its runs is the same (the reader reads only the page's workers again)
    F("version", "i", backfill=0, shown=False),
))
RUN = Record("runs", (
    F("batch_id", "i", "key"), F("batch_index", "i", "key"),
    F("state", "s"), F("attempt", "i"), F("failures", "i"), F("requeues", "i"),
    F("worker_id", "i"), F("host", "s"), F("progress", "f"), F("message", "s"),
    F("result", "j"), F("error", "s"), F("traceback", "s"), F("started", "f"), F("ended", "f"),
    F("retry_at", "f", doc="waiting out a retry backoff until then (NULL: dispatchable)", shown=False),
))
ATTEMPT = Record("attempts", (
    F("batch_id", "i", "key"), F("batch_index", "i", "key"), F("attempt", "i", "key"),
    F("worker_id", "i"), F("host", "s"), F("started", "f"), F("ended", "f"), F("outcome", "s"), F("message", "s"),
))
WORKER = Record("workers", (
    F("id", "i", "key"),
    # its traits (WorkerReady, WorkerReconnect): what runq matches runs on
    F("host", "s", "submit", ask=STR), F("ipaddr", "s"), F("pid", "i", "submit", ask=PID),
    F("group", "s", "submit", ask=STR), F("user", "s", "submit", ask=STR), F("engine", "s", "submit", ask=STR),
    F("cost", "f", "submit", ask=TRAIT), F("speed", "f", "submit", ask=TRAIT), F("priority", "f", "submit", ask=TRAIT),
    F("state", "s"), F("batch_id", "i"), F("batch_index", "i"), F("started", "f", "submit"),
    F("last_contact", "f"), F("draining", "i"),
    F("key", "s", doc="proof of identity on reconnect (hex)", shown=False),
    F("assign_seq", "i", doc="seq of its latest RunqAssignRun", shown=False),
    F("broken", "s", doc="why it cannot run its engine (state broken), committed with that state; else NULL"),
))
META = Record("meta", (F("name", "s", "key"), F("value", "s")))
# failed logins per key (runq/core/throttle.py): a restart forgets no count
LOGIN = Record("logins", (F("key", "s", "key"), F("times", "j", doc="the failures' times in the window")))

RECORDS = (BATCH, RUN, ATTEMPT, WORKER, META, LOGIN)
COLUMNS = {r.table: r.columns() for r in RECORDS}
BACKFILL = {(r.table, f.name): f.backfill for r in RECORDS for f in r.fields if f.backfill is not MISSING}
