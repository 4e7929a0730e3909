"""The run lifecycle: how an attempt starts and ends, and where its run goes next.

The rules are tables in runq/core/states.py: ``ATTEMPT_END`` (an outcome's budget and the
state it puts the run in), ``KIND_BUDGET`` (a failure's kind), ``RUN_TRANSITIONS`` (the
legal edges, each with its reason, enforced by ``move_run``).  A batch ends when no run is
left waiting or running.
"""
from __future__ import annotations

import heapq
import logging

from simx import protocol
from . import states
from .model import Batch, Run, Worker

log = logging.getLogger("runq.coordinator")


class Lifecycle:
    def __init__(self, coord):
        self.c = coord
        self.batches, self.runs, self.store = coord.batches, coord.runs, coord.store

    def start_run(self, worker: Worker, run: Run, now: float) -> None:
        """assigned -> running: the worker computes it now; its time limit starts."""
        states.check_transition(run.state, states.RUNNING)
        worker.run_seq = worker.held.pop(run.key)
        self.c.dispatch.unindex_prefetched(run)
        run.state, run.started = states.RUNNING, now
        worker.run, worker.state = run.key, states.BUSY
        self.store.start_run(run.batch_id, run.batch_index, now)
        self.store.update_worker(worker.state_row())
        self.c.deadlines.arm_lease(worker, now)
        batch = self.batches[run.batch_id]
        self.c.deadlines.arm_limit(run, batch)
        self.c.fairshare.started(run.key, batch.sharer, now)   # its fair-share usage starts now
        self.c.matcher.rerank(batch.sharer)

    def end_attempt(self, run: Run, outcome: str, message: str | None, now: float,
                    result=None, traceback: str | None = None, kind: str = states.KIND_TRANSIENT) -> None:
        """Record how a running (or held) attempt ended and move the run to its next state."""
        batch = self.batches[run.batch_id]
        owner = self.c.fairshare.ended(run.key, now)
        if owner is not None:
            self.c.matcher.rerank(owner)
        self.store.end_attempt({"batch_id": run.batch_id, "batch_index": run.batch_index, "attempt": run.attempt,
                                "worker_id": run.worker_id, "host": run.host, "started": run.started,
                                "ended": now, "outcome": outcome, "message": message})
        self.c.recent.add((run.batch_id, run.batch_index, run.attempt), run.worker_id, outcome)
        run.ended = now
        budget, new = states.ATTEMPT_END[outcome]
        if outcome == states.OUTCOME_FAILED:
            budget = states.KIND_BUDGET.get(kind, "attempt")
        if new == states.FINISHED:
            run.result, run.progress, run.error = result, 1.0, None
        elif outcome in (states.OUTCOME_FAILED, states.OUTCOME_TIMEOUT):
            run.error, run.traceback = message, traceback
        if budget == "fatal":
            run.failures += 1
            new = states.FAILED
        elif budget == "attempt":
            run.failures += 1
            new = states.FAILED if run.failures >= batch.max_attempts else states.WAITING
            if new == states.WAITING and outcome == states.OUTCOME_FAILED:
                run.retry_at = now + self.c.backoff.delay(run.failures)
        elif budget == "requeue":
            run.requeues += 1
            if run.requeues > batch.max_requeues:
                new, run.error = states.FAILED, f"lost too often ({run.requeues} times; last: {message})"
            else:
                new = states.WAITING
        elif new is None:   # free: back to the queue (the worker could not run the engine)
            new = states.WAITING
        run.message = message if message is not None else run.message
        if new == states.WAITING:   # a new attempt starts from scratch
            run.progress, run.message = 0.0, None
        self.c.metrics.attempt_ended(outcome, new)
        if outcome != states.OUTCOME_REVOKED:   # a held run taken back is no activity
            self.c.deadlines.summary.ended(batch.engine, new, now)
        self.move_run(run, new, now)

    def move_run(self, run: Run, new: str, now: float) -> None:
        batch = self.batches[run.batch_id]
        states.check_transition(run.state, new)
        if run.state == states.WAITING and run.retry_at is not None:   # leaves its backoff (cancelled)
            self.end_backoff(run, batch)
        batch.count(run.state, -1)
        batch.count(new, +1)
        run.state = new
        self.store.save_run(run.row())
        if new == states.WAITING and run.retry_at is not None:
            batch.n_delayed += 1
            self.c.timers.set("retry", run.key, run.retry_at)
        elif new == states.WAITING:
            heapq.heappush(batch.requeued, run.batch_index)
            if batch.state == states.ACTIVE:
                self.c.dispatch.dispatch_batch(batch, now)
        else:
            if new in states.TERMINAL:
                del self.runs[run.key]
                batch.active.discard(run.batch_index)
            self.finish_batch_if_done(batch, now)
        self.store.update_batch(batch.counters())

    def end_backoff(self, run: Run, batch: Batch) -> None:
        self.c.timers.cancel("retry", run.key)
        run.retry_at = None
        batch.n_delayed -= 1

    def finish_batch_if_done(self, batch: Batch, now: float) -> None:
        if batch.settle(now):
            log.info("batch %d %s: %d finished, %d failed, %d cancelled in %.1fs", batch.id, batch.state,
                     batch.n_finished, batch.n_failed, batch.n_cancelled, now - batch.start_time)
            self.c.metrics.batch_ended(batch)
            self.c.matcher.remove_ready(batch.id)
            del self.batches[batch.id]
            self.store.update_batch(batch.counters())

    # ---- attempts ended by runq, not by the worker's report
    def take_back(self, worker: Worker, outcome: str, message: str, now: float, abort: bool = True) -> None:
        """End the worker's current attempt without its report (lease, grace, timeout, cancel)."""
        run = self.runs.get(worker.run) if worker.run else None
        worker.run = None
        if run is None:
            return
        if abort and worker.conn is not None:
            worker.aborting = (run.batch_id, run.batch_index, run.attempt)
            self.c.send(worker.conn, protocol.message("RunqAbortRun", batch_id=run.batch_id,
                                                      batch_index=run.batch_index, attempt=run.attempt,
                                                      reason=message))
        self.end_attempt(run, outcome, message, now)
        self.c.dispatch.dispatch_worker(worker, now)

    def revoke(self, holder: Worker, key: tuple[int, int], why: str, now: float, abort: bool = True) -> None:
        """assigned -> waiting: a run a worker holds unstarted goes back to the queue, costing
        neither an attempt nor a requeue.  The worker drops it (RunqAbortRun) without a word."""
        holder.held.pop(key, None)
        run = self.runs[key]
        self.c.dispatch.unindex_prefetched(run)
        if abort and holder.conn is not None:
            self.c.send(holder.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                      attempt=run.attempt, reason=why))
        self.end_attempt(run, states.OUTCOME_REVOKED, why, now)

    def release_all(self, worker: Worker, outcome: str, why: str, now: float, abort: bool = True) -> None:
        """The worker is lost (lease, grace): its running run is taken back, its held ones revoked."""
        for key in list(worker.held):
            self.revoke(worker, key, why, now, abort=abort)
        if worker.run:
            self.take_back(worker, outcome, why, now, abort=abort)

    def cancel_active(self, run: Run, why: str, now: float) -> None:
        """Cancel a run held in memory: waiting, held by a prefetching worker, or running."""
        if run.state == states.WAITING:
            self.move_run(run, states.CANCELLED, now)
        elif run.state == states.ASSIGNED:
            holder = self.c.workers.get(run.worker_id)
            if holder is not None and run.key in holder.held:
                holder.held.pop(run.key)
                self.c.send(holder.conn, protocol.message("RunqAbortRun", batch_id=run.batch_id,
                                                          batch_index=run.batch_index, attempt=run.attempt,
                                                          reason=why))
            self.c.dispatch.unindex_prefetched(run)
            self.end_attempt(run, states.OUTCOME_CANCELLED, why, now)
            if holder is not None:
                self.c.dispatch.dispatch_worker(holder, now)
        elif run.state == states.RUNNING:
            worker = self.c.workers.get(run.worker_id)
            if worker is not None and worker.run == run.key:
                self.take_back(worker, states.OUTCOME_CANCELLED, why, now)
            else:
                self.end_attempt(run, states.OUTCOME_CANCELLED, why, now)
