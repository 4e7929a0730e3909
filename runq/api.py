"""Client requests to runq (what runweb asks): submit, list, inspect, cancel, drain.

Each request returns one Reply.  Reads go to the store (which commits the
turn's buffered writes first); changes go through the coordinator's steps.
"""
from __future__ import annotations

import heapq
import logging

from . import protocol, states, views
from .errors import BadRequest, Conflict, NotFound
from .model import Batch, Run

log = logging.getLogger("runq.api")

MAX_RUNS = 100_000_000
MAX_PRIORITY = 1_000_000     # batch priority: an integer within +-MAX_PRIORITY
DEFAULT_PAGE, MAX_PAGE = 1000, 10_000
PURGE_EVERY = 3600.0


class Api:
    def __init__(self, coord):
        self.coord = coord
        self.store = coord.store
        self.last_purge = 0.0
        self.handlers = {
            "Ping": self.ping, "StartBatch": self.start_batch, "BatchList": self.batch_list,
            "UserStatus": self.user_status, "BatchStatus": self.batch_status, "RunStatus": self.run_status,
            "WorkerList": self.worker_list, "WorkerStatus": self.worker_status, "CancelBatch": self.cancel_batch, "CancelRun": self.cancel_run,
            "DrainWorker": self.drain_worker, "Metrics": self.metrics,
        }

    def handle(self, msg: dict, now: float) -> dict:
        handler = self.handlers.get(msg["type"])
        if handler is None:
            raise BadRequest(f"{msg['type']} is not a request runq answers")
        return handler(msg, now)

    def tick(self, now: float) -> None:
        days = self.coord.config.retention_days
        if days > 0 and now - self.last_purge > PURGE_EVERY:
            self.last_purge = now
            n_batches, n_workers = self.store.purge(now - days * 86400)
            for wid in [w.id for w in self.coord.workers.values()
                        if w.conn is None and w.run is None and w.last_contact < now - days * 86400]:
                del self.coord.workers[wid]
            if n_batches:
                self.coord.metrics.load_ended(self.store.ended_batch_totals())
            if n_batches or n_workers:
                log.info("purged %d batches and %d workers older than %s days", n_batches, n_workers, days)

    # ---- reads
    def ping(self, msg, now):
        c = self.coord
        return protocol.reply(runq={
            "version": "0.1.0", "started": views.iso(c.started), "batches_active": len(c.batches),
            "workers_connected": sum(1 for w in c.workers.values() if w.conn is not None),
            "workers_idle": c.matcher.idle_count(), "runs_in_flight": len(c.runs),
        })

    def metrics(self, msg, now):
        c = self.coord
        return protocol.reply(**c.metrics.snapshot(c.batches.values(), c.workers.values(), now))

    def _batch_row(self, batch_id: int) -> dict:
        row = self.store.batch_row(batch_id)
        if row is None:
            raise NotFound(f"no batch {batch_id}")
        return row

    @staticmethod
    def _page(msg) -> tuple[int, int]:
        offset, limit = msg.get("offset", 0), msg.get("limit", DEFAULT_PAGE)
        if offset < 0:
            raise BadRequest("offset must be 0 or more")
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
        return offset, limit

    def _paged(self, name: str, rows: list, offset: int, limit: int, view) -> dict:
        """A page of a listing: one row more than asked tells whether another page follows."""
        more = len(rows) > limit
        return protocol.reply(**{name: [view(r) for r in rows[:limit]]}, offset=offset, limit=limit,
                              next_offset=offset + limit if more else None)

    def batch_list(self, msg, now):
        offset, limit = self._page(msg)
        rows = self.store.batch_rows(user=msg.get("user"), offset=offset, limit=limit + 1)
        return self._paged("batches", rows, offset, limit, lambda r: views.batch(r, now))

    def user_status(self, msg, now):
        return self.batch_list(msg, now)

    def batch_status(self, msg, now):
        row = self._batch_row(msg["batch_id"])
        offset, limit = self._page(msg)
        hi = min(row["n_runs"], offset + limit)
        stored = {r["batch_index"]: r for r in self.store.run_rows(row["id"], offset, hi)}
        runs = [views.run(stored[i]) if i in stored else views.implicit_run(row, i) for i in range(offset, hi)]
        return protocol.reply(batch=views.batch(row, now), runs=runs, offset=offset, limit=limit,
                              next_offset=hi if hi < row["n_runs"] else None)

    def _run_view(self, batch_row: dict, index: int) -> dict:
        if not 0 <= index < batch_row["n_runs"]:
            raise NotFound(f"batch {batch_row['id']} has no run {index} (it has {batch_row['n_runs']} runs)")
        row = self.store.run_row(batch_row["id"], index)
        return views.run(row) if row else views.implicit_run(batch_row, index)

    def run_status(self, msg, now):
        row = self._batch_row(msg["batch_id"])
        run = self._run_view(row, msg["batch_index"])
        stored = self.store.run_row(row["id"], msg["batch_index"])
        run["traceback"] = stored["traceback"] if stored else None   # only here: it can be long
        run["attempts"] = [views.attempt(a) for a in self.store.attempt_rows(row["id"], msg["batch_index"])]
        return protocol.reply(run=run)

    def _worker_view(self, row: dict) -> dict:
        w = self.coord.workers.get(row["id"])
        view = views.worker(row, w is not None and w.conn is not None, w.state if w else row["state"])
        view["broken"] = w.broken if w is not None else None   # why it gets no runs (state "broken")
        return view

    def worker_list(self, msg, now):
        offset, limit = self._page(msg)
        rows = self.store.worker_rows(offset=offset, limit=limit + 1)
        return self._paged("workers", rows, offset, limit, self._worker_view)

    def worker_status(self, msg, now):
        rows = self.store.worker_rows(worker_id=msg["worker_id"])
        if not rows:
            raise NotFound(f"no worker {msg['worker_id']}")
        return protocol.reply(worker=self._worker_view(rows[0]))

    # ---- changes
    def start_batch(self, msg, now):
        d = self.coord.batch_defaults
        key = msg.get("idempotency_key")
        if key:
            row = self.store.batch_by_key(key)
            if row is not None:
                log.info("batch request with known idempotency key %r: batch %d", key, row["id"])
                return protocol.reply(message="batch exists (same idempotency key)", batch_id=row["id"],
                                      created=False, batch=views.batch(row, now))
        n_runs = msg["n_runs"]
        if not 1 <= n_runs <= MAX_RUNS:
            raise BadRequest(f"n_runs must be an integer from 1 to {MAX_RUNS}")
        if not msg["engine"]:
            raise BadRequest("engine must not be empty")
        max_attempts = d.max_attempts if msg.get("max_attempts") is None else msg["max_attempts"]
        max_requeues = d.max_requeues if msg.get("max_requeues") is None else msg["max_requeues"]
        time_limit = msg.get("time_limit", d.time_limit)
        if max_attempts < 1:
            raise BadRequest("max_attempts must be 1 or more")
        if max_requeues < 0:
            raise BadRequest("max_requeues must be 0 or more")
        if time_limit is not None and time_limit <= 0:
            raise BadRequest("time_limit must be a positive number of seconds")
        priority = msg.get("priority") or 0
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise BadRequest(f"priority must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
        c = self.coord
        c.last_batch_id += 1
        batch = Batch(id=c.last_batch_id, name=msg.get("name", ""), group=msg.get("group", ""),
                      user=msg.get("user", ""), engine=msg["engine"], n_runs=n_runs, param=msg.get("param") or {},
                      max_attempts=max_attempts, max_requeues=max_requeues, time_limit=time_limit,
                      idempotency_key=key or None, start_time=now, n_waiting=n_runs, priority=priority)
        c.batches[batch.id] = batch
        self.store.add_batch(batch.row())
        log.info("batch %d started: %d runs of %s (group %r, user %r)", batch.id, n_runs, batch.engine,
                 batch.group, batch.user)
        c.make_ready(batch, now)
        return protocol.reply(message="batch started", batch_id=batch.id, created=True,
                              batch=views.batch(batch.row(), now))

    def cancel_batch(self, msg, now):
        c = self.coord
        batch = c.batches.get(msg["batch_id"])
        if batch is not None:
            log.info("cancelling batch %d", batch.id)
            batch.state = states.BATCH_CANCELLED
            c.matcher.remove_ready(batch.id)
            virgin = batch.untouched_waiting()
            batch.count(states.WAITING, -virgin)
            batch.count(states.CANCELLED, +virgin)
            for index in sorted(batch.active):
                self._cancel_active(c.runs[(batch.id, index)], "batch cancelled", now)
            batch.requeued.clear()
            c.finish_batch_if_done(batch, now)
            self.store.save_batch(batch.counters())
        row = self._batch_row(msg["batch_id"])
        return protocol.reply(message="batch cancelled", batch=views.batch(row, now))

    def _cancel_active(self, run: Run, why: str, now: float) -> None:
        c = self.coord
        if run.state == states.WAITING:
            c.move_run(run, states.CANCELLED, now)
        elif run.state == states.RUNNING:
            worker = c.workers.get(run.worker_id)
            if worker is not None and worker.run == run.key:
                c.take_back(worker, states.OUTCOME_CANCELLED, why, now)
            else:
                c.end_attempt(run, states.OUTCOME_CANCELLED, why, now)

    def cancel_run(self, msg, now):
        c = self.coord
        b, index = msg["batch_id"], msg["batch_index"]
        batch = c.batches.get(b)
        row = self._batch_row(b)
        self._run_view(row, index)  # 404 for an index out of range
        if batch is not None:
            run = c.runs.get((b, index))
            if run is not None:
                if run.state == states.WAITING and run.retry_at is None:   # else: in backoff, not in the heap
                    batch.requeued.remove(index)
                    heapq.heapify(batch.requeued)
                self._cancel_active(run, "run cancelled", now)
            elif index >= batch.next_index and index not in batch.skip_ahead:
                batch.skip_ahead.add(index)
                self.store.save_run(Run(b, index, state=states.CANCELLED, ended=now).row(), new=True)
                batch.count(states.WAITING, -1)
                batch.count(states.CANCELLED, +1)
                if not batch.has_waiting():
                    c.matcher.remove_ready(b)
                c.finish_batch_if_done(batch, now)
                self.store.save_batch(batch.counters())
        row = self._batch_row(b)
        return protocol.reply(message="run cancelled", run=self._run_view(row, index),
                              batch=views.batch(row, now))

    def drain_worker(self, msg, now):
        c = self.coord
        worker = c.workers.get(msg["worker_id"])
        if worker is None:
            if not self.store.worker_rows(worker_id=msg["worker_id"]):
                raise NotFound(f"no worker {msg['worker_id']}")
            raise Conflict(f"worker {msg['worker_id']} is gone")
        if worker.conn is None:
            raise Conflict(f"worker {worker.id} is not connected; it cannot be told to drain")
        c.set_draining(worker)
        c.send(worker.conn, protocol.message("RunqDrain"))
        return protocol.reply(message="worker draining",
                              worker=self._worker_view(self.store.worker_rows(worker_id=worker.id)[0]))

