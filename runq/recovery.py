"""Rebuild runq's in-memory model from the database at start-up.

Active batches, their non-terminal run rows and known workers are loaded.
Workers are all disconnected now; the ones holding a run keep it for the grace
period (``Coordinator.tick`` requeues it after that), so a worker that
reconnects in time, proving its identity with the key stored in its row,
carries on with its computation.  A row without a key (written before
protocol v2) cannot be proved: that worker registers as new and its run goes
back to the queue after the grace period.
"""
from __future__ import annotations

import heapq
import logging

from . import states
from .model import Batch, Run, Worker

log = logging.getLogger("runq.recovery")

_BATCH_FIELDS = [f for f in Batch.__dataclass_fields__
                 if f not in ("requeued", "skip_ahead", "active", "n_delayed")]
_RUN_FIELDS = [f for f in Run.__dataclass_fields__ if f != "retry_at"]


def recover(coord, now: float) -> None:
    store = coord.store
    coord.last_batch_id, coord.last_worker_id = store.max_ids()
    # a cancel ends its batch at once (running runs are taken back), so only active ones have runs left
    for row in store.batch_rows(states=(states.ACTIVE,)):
        # columns a newer runq adds may be missing in rows written before (priority: 0)
        batch = Batch(**{f: row[f] for f in _BATCH_FIELDS if f in row})
        coord.batches[batch.id] = batch
    for row in store.active_run_rows(list(coord.batches)):
        batch = coord.batches[row["batch_id"]]
        if row["state"] == states.CANCELLED:
            if row["batch_index"] >= batch.next_index:
                batch.skip_ahead.add(row["batch_index"])
            continue
        run = Run(**{f: row[f] for f in _RUN_FIELDS})
        coord.runs[run.key] = run
        batch.active.add(run.batch_index)
        if run.state == states.WAITING:
            heapq.heappush(batch.requeued, run.batch_index)
    for row in store.worker_rows():
        if row["state"] == states.GONE and row["batch_id"] is None:
            continue
        worker = Worker(id=row["id"], host=row["host"], ipaddr=row["ipaddr"], pid=row["pid"],
                        group=row["group"], user=row["user"], engine=row["engine"], cost=row["cost"],
                        speed=row["speed"], priority=row["priority"], started=row["started"],
                        state=states.DISCONNECTED, draining=bool(row["draining"]),
                        last_contact=row["last_contact"] or now, disconnected_at=now,
                        key=row["key"], assign_seq=row["assign_seq"] or 0)
        if row["batch_id"] is not None:
            worker.run = (row["batch_id"], row["batch_index"])
        coord.workers[worker.id] = worker
    # A running run belongs to the worker whose row names it; any other is requeued now.
    holders = {w.run: w for w in coord.workers.values() if w.run is not None}
    for run in list(coord.runs.values()):
        if run.state != states.RUNNING:
            continue
        worker = holders.get(run.key)
        if worker is None or worker.id != run.worker_id:
            log.warning("run %s had no worker holding it: requeued", run.key)
            coord.end_attempt(run, states.OUTCOME_LOST, "runq restarted; no worker held the run", now)
    for worker in coord.workers.values():
        if worker.run is not None and worker.run not in coord.runs:
            worker.run = None
    for batch in list(coord.batches.values()):
        coord.finish_batch_if_done(batch, now)
        if batch.id in coord.batches:
            coord.make_ready(batch, now)
    store.commit()
    log.info("recovered %d active batches, %d runs in flight, %d known workers",
             len(coord.batches), len(coord.runs), len(coord.workers))
