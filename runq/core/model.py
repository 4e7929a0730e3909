"""runq's in-memory records of what is active: batches with runs left, the
materialized non-terminal runs, and workers.  The store persists them; the
coordinator changes them.  Finished runs live only in the database.
"""
from __future__ import annotations

import dataclasses
import heapq

from simx import records, sweep
from . import states


@dataclasses.dataclass(slots=True, eq=False)
class Batch:
    id: int
    group: str
    user: str
    engine: str
    n_runs: int
    param: dict
    max_attempts: int
    max_requeues: int
    time_limit: float | None
    idempotency_key: str | None
    start_time: float
    priority: int = 0              # higher first among the batches of one owner
    owner: str = ""                # who submitted it: sees and controls it, and fair share counts it ("" = user)
    state: str = states.ACTIVE
    next_index: int = 0            # runs at or past this index were never dispatched
    n_waiting: int = 0
    n_running: int = 0
    n_finished: int = 0
    n_failed: int = 0
    n_cancelled: int = 0
    end_time: float | None = None
    sweep: dict | None = None      # {sweep: .., zip: ..} (runq/sweep.py): each run's param from its index
    requeued: list = dataclasses.field(default_factory=list)       # heap of waiting batch_index with rows
    skip_ahead: set = dataclasses.field(default_factory=set)       # never-dispatched indices cancelled alone
    active: set = dataclasses.field(default_factory=set)           # batch_index of runs held in memory
    n_delayed: int = 0             # waiting runs in retry backoff (not in `requeued` until due)
    # the batch's other submit fields (simx/records.py BATCH, role submit: name, ...), which
    # runq stores and shows but does not act on: a field declared there needs no edit here
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def traits(self) -> tuple[str, str, str]:
        return self.engine, self.group, self.user

    @property
    def sharer(self) -> str:
        """The name fair share counts this batch's usage against: its owner, else its user."""
        return self.owner or self.user

    def param_of(self, index: int) -> dict:
        """Run ``index``'s param: the batch's, with its sweep values set (computed, never stored)."""
        return sweep.param_for(self.param, self.sweep, index) if self.sweep else self.param

    def has_waiting(self) -> bool:
        """Runs that may be dispatched now (runs in retry backoff are waiting but not ready)."""
        return self.state == states.ACTIVE and self.n_waiting - self.n_delayed > 0

    def untouched_waiting(self) -> int:
        """Waiting runs never dispatched (they have no row of their own)."""
        return self.n_waiting - len(self.requeued) - self.n_delayed

    def take_next_index(self) -> tuple[int, bool]:
        """The next waiting run to dispatch: (batch_index, materialized?)."""
        if self.requeued:
            return heapq.heappop(self.requeued), True
        while self.next_index in self.skip_ahead:
            self.skip_ahead.discard(self.next_index)
            self.next_index += 1
        index = self.next_index
        self.next_index += 1
        return index, False

    def count(self, state: str, delta: int) -> None:
        name = "n_running" if state == states.ASSIGNED else "n_" + state   # assigned: in flight
        setattr(self, name, getattr(self, name) + delta)

    def settle(self, now: float) -> bool:
        """End the batch (done, failed or cancelled) when no run is left waiting or running; True if it just ended."""
        if self.end_time is None and self.n_waiting == 0 and self.n_running == 0:
            self.end_time = now
            self.state = states.batch_end_state(self.state, self.n_failed)
            return True
        return False

    def counters(self) -> dict:
        """What changes while the batch runs (the rest is written once, at submit)."""
        return {
            "id": self.id, "state": self.state, "next_index": self.next_index,
            "n_waiting": self.n_waiting, "n_running": self.n_running, "n_finished": self.n_finished,
            "n_failed": self.n_failed, "n_cancelled": self.n_cancelled, "end_time": self.end_time,
        }

    def row(self) -> dict:
        """The whole row, as written at submit: what never changes, then the counters."""
        return {
            **self.info, "group": self.group, "user": self.user,
            "engine": self.engine, "n_runs": self.n_runs, "param": self.param,
            "max_attempts": self.max_attempts, "max_requeues": self.max_requeues,
            "time_limit": self.time_limit, "idempotency_key": self.idempotency_key,
            "start_time": self.start_time, "priority": self.priority, "owner": self.owner, "sweep": self.sweep,
            **self.counters(),
        }


# the submit fields of simx.records.BATCH that live in Batch.info
BATCH_FIELDS = frozenset(f.name for f in dataclasses.fields(Batch))
INFO_FIELDS = tuple(n for n in records.BATCH.names("submit") if n not in BATCH_FIELDS)
INFO_DEFAULTS = {n: "" if records.BATCH[n].type == "s" else None for n in INFO_FIELDS}   # when not asked


@dataclasses.dataclass(slots=True, eq=False)
class Run:
    batch_id: int
    batch_index: int
    state: str = states.WAITING
    attempt: int = 0          # number of the latest dispatch; 0 = never dispatched
    failures: int = 0         # engine failures so far (max_attempts)
    requeues: int = 0         # attempts lost without a verdict (max_requeues)
    worker_id: int | None = None
    host: str = ""
    progress: float = 0.0
    message: str | None = None
    result: object = None
    error: str | None = None
    traceback: str | None = None
    started: float | None = None
    ended: float | None = None
    retry_at: float | None = None   # waiting out a retry backoff until then (stored: a restart keeps it)

    @property
    def key(self) -> tuple[int, int]:
        return self.batch_id, self.batch_index

    def row(self) -> dict:
        return {
            "batch_id": self.batch_id, "batch_index": self.batch_index, "state": self.state,
            "attempt": self.attempt, "failures": self.failures, "requeues": self.requeues,
            "worker_id": self.worker_id, "host": self.host, "progress": self.progress,
            "message": self.message, "result": self.result, "error": self.error,
            "traceback": self.traceback, "started": self.started, "ended": self.ended,
            "retry_at": self.retry_at,
        }


@dataclasses.dataclass(slots=True, eq=False)
class Worker:
    id: int
    host: str
    ipaddr: str
    pid: int
    group: str
    user: str
    engine: str
    cost: float
    speed: float
    priority: float
    started: float
    state: str = states.IDLE
    conn: object = None                     # connection id while connected
    run: tuple[int, int] | None = None      # (batch_id, batch_index) it is running
    aborting: tuple[int, int, int] | None = None  # attempt taken back, until the worker lets go
    draining: bool = False
    broken: str | None = None               # why it cannot run its engine (until it restarts)
    last_contact: float = 0.0
    disconnected_at: float | None = None
    cut_off: bool = False                   # runq closed its connection for silence: the lease still runs
    saved_contact: float = 0.0              # last_contact as last written
    key: str | None = None                  # proves the worker on reconnect (hex); None: cannot reconnect
    assign_seq: int = 0                     # seq of its latest RunqAssignRun (its current run's, if any)
    prefetch: int = 0                       # runs it may hold (announced); 0 = an old worker: one, started at once
    held: dict = dataclasses.field(default_factory=dict)   # assigned, not started: (batch_id, batch_index) -> seq
    run_seq: int = 0                        # seq of the assignment of its current run
    last_report: tuple | None = None        # ((batch_id, batch_index, attempt), outcome) of its last accepted report

    @property
    def traits(self) -> tuple[str, str, str]:
        return self.engine, self.group, self.user

    def state_row(self) -> dict:
        """The columns that change with its state (what reads show of it, what recovery needs)."""
        run = self.run or (None, None)
        return {"id": self.id, "state": self.state, "batch_id": run[0], "batch_index": run[1],
                "draining": int(self.draining), "broken": self.broken, "assign_seq": self.assign_seq}

    def row(self) -> dict:
        run = self.run or (None, None)
        return {
            "id": self.id, "host": self.host, "ipaddr": self.ipaddr, "pid": self.pid,
            "group": self.group, "user": self.user, "engine": self.engine, "cost": self.cost,
            "speed": self.speed, "priority": self.priority, "state": self.state,
            "batch_id": run[0], "batch_index": run[1], "started": self.started,
            "last_contact": self.last_contact, "draining": int(self.draining),
            "key": self.key, "assign_seq": self.assign_seq, "broken": self.broken,
        }
