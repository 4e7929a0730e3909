"""runq's model rebuilt from stored rows at start-up: ``recover(...) -> Start``.

The shell reads the rows before the loop (runq/startup.py); this builds from them a
``Start`` value (pure: nothing here reads the database, changes a coordinator or writes a
row).  Active batches, their non-terminal run rows and known workers become the model;
with them come the database's instance, the highest ids given out, the idempotency keys of
stored batches, the latest attempts' outcomes (re-sent reports) and the totals of ended
batches (metrics).  The
coordinator adopts it (``Coordinator.adopt``): workers are all disconnected
now; the ones holding a run keep it for the grace period, so a worker that
reconnects in time, proving its identity with the key stored in its row,
carries on with its computation; running runs no worker holds (``orphans``)
are requeued.  A row without a key (written before protocol v2) cannot be
proved: that worker registers as new and its run goes back to the queue after
the grace period.
"""
from __future__ import annotations

import dataclasses
import heapq

from . import states
from .model import INFO_DEFAULTS, INFO_FIELDS, Batch, Run, Worker

_BATCH_FIELDS = [f for f in Batch.__dataclass_fields__
                 if f not in ("requeued", "skip_ahead", "active", "n_delayed", "info")]
_RUN_FIELDS = list(Run.__dataclass_fields__)


@dataclasses.dataclass
class Start:
    instance: str = "test-instance"
    batches: dict = dataclasses.field(default_factory=dict)   # id -> Batch (active)
    runs: dict = dataclasses.field(default_factory=dict)      # (batch_id, batch_index) -> Run (not terminal)
    workers: dict = dataclasses.field(default_factory=dict)   # id -> Worker
    last_batch_id: int = 0
    last_worker_id: int = 0
    orphans: list = dataclasses.field(default_factory=list)   # running runs no worker's row names, assigned ones
    keys: dict = dataclasses.field(default_factory=dict)      # idempotency key -> (batch id, owner)
    recent: list = dataclasses.field(default_factory=list)    # the latest attempt rows, oldest first
    ended_totals: dict = dataclasses.field(default_factory=dict)   # store.ended_batch_totals()
    usage: list = dataclasses.field(default_factory=list)     # fair share: (owner, slot, worker-seconds, n)
    logins: list = dataclasses.field(default_factory=list)    # failed logins: (key, times)


def recover(now: float, instance: str, max_ids: tuple[int, int], batch_rows, run_rows, worker_rows,
            keys=(), recent=(), ended_totals=None, usage=(), logins=()) -> Start:
    """The model from the stored rows: active batches, their non-terminal (and individually
    cancelled never-dispatched) runs, known workers."""
    last_batch_id, last_worker_id = max_ids
    batches: dict[int, Batch] = {}
    runs: dict[tuple[int, int], Run] = {}
    workers: dict[int, Worker] = {}
    # a cancel ends its batch at once (running runs are taken back), so only active ones have runs left
    for row in batch_rows:
        # columns a newer runq adds may be missing in rows written before (priority: 0)
        batch = Batch(**{f: row[f] for f in _BATCH_FIELDS if f in row},
                      info={f: INFO_DEFAULTS[f] if row.get(f) is None else row[f] for f in INFO_FIELDS})
        batches[batch.id] = batch
    for row in run_rows:
        batch = batches[row["batch_id"]]
        if row["state"] == states.CANCELLED:
            if row["batch_index"] >= batch.next_index:
                batch.skip_ahead.add(row["batch_index"])
            continue
        run = Run(**{f: row.get(f) for f in _RUN_FIELDS})
        runs[run.key] = run
        batch.active.add(run.batch_index)
        if run.state == states.WAITING and run.retry_at is not None:
            batch.n_delayed += 1   # still backing off: the coordinator arms its retry timer
        elif run.state == states.WAITING:
            heapq.heappush(batch.requeued, run.batch_index)
    for row in worker_rows:
        if row["state"] == states.GONE and row["batch_id"] is None:
            continue
        worker = Worker(id=row["id"], host=row["host"], ipaddr=row["ipaddr"], pid=row["pid"],
                        group=row["group"], user=row["user"], engine=row["engine"], cost=row["cost"],
                        speed=row["speed"], priority=row["priority"], started=row["started"],
                        state=states.DISCONNECTED, draining=bool(row["draining"]),
                        last_contact=row["last_contact"] or now, disconnected_at=now,
                        key=row["key"], assign_seq=row["assign_seq"] or 0, broken=None)
        worker.saved_contact = worker.last_contact
        if row["batch_id"] is not None:
            worker.run, worker.run_seq = (row["batch_id"], row["batch_index"]), worker.assign_seq
        workers[worker.id] = worker
    # A running run belongs to the worker whose row names it; any other is an orphan.
    holders = {w.run: w for w in workers.values() if w.run is not None}
    orphans = []
    for run in runs.values():
        if run.state == states.ASSIGNED:   # prefetched, never started: back to the queue
            orphans.append(run)
        elif run.state == states.RUNNING:
            worker = holders.get(run.key)
            if worker is None or worker.id != run.worker_id:
                orphans.append(run)
    for worker in workers.values():
        held = runs.get(worker.run) if worker.run is not None else None
        if held is None or held.state != states.RUNNING or held.worker_id != worker.id:
            worker.run = None
    return Start(instance, batches, runs, workers, last_batch_id, last_worker_id, orphans, dict(keys),
                 list(recent), ended_totals or {}, list(usage), list(logins))
