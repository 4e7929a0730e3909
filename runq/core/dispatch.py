"""Dispatch: which idle worker gets which waiting run, and prefetch.

``dispatch_batch`` hands a batch's waiting runs to idle matching workers (one each first,
then more in turn to those that prefetch) and indexes the rest; ``dispatch_worker`` gives a
connected worker its next run (a prefetching one: up to its prefetch) or indexes it idle,
and sets its state from the table in runq/core/states.py.  A prefetching worker holds
runs unstarted (``assigned``); an idle worker with nothing to take may take back the oldest
run a busy one holds behind the run it computes.  The choice itself is runq/core/matching.py.
"""
from __future__ import annotations

import logging

from simx import protocol
from . import states
from .model import Batch, Run, Worker

log = logging.getLogger("runq.coordinator")


class Dispatch:
    def __init__(self, coord):
        self.c = coord
        self.batches, self.runs, self.workers = coord.batches, coord.runs, coord.workers
        self.matcher, self.store = coord.matcher, coord.store
        self.prefetched: dict[str, dict] = {}   # engine -> keys of assigned (held, unstarted) runs, oldest first

    def dispatch_batch(self, batch: Batch, now: float) -> None:
        """A batch has waiting runs: hand them to idle matching workers, index the rest."""
        more = []   # workers given a run that have room for another (prefetch)
        while batch.has_waiting():
            wid = self.matcher.take_worker_for(batch.traits)
            if wid is None:
                break
            worker = self.workers[wid]
            self.assign(worker, batch, now)
            if self.has_room(worker):
                more.append(worker)
        while more and batch.has_waiting():
            worker = more.pop(0)
            self.assign(worker, batch, now)
            if self.has_room(worker):
                more.append(worker)
        if batch.has_waiting():
            self.matcher.add_ready(batch.id, batch.traits, batch.sharer, batch.priority)
        else:
            self.matcher.remove_ready(batch.id)

    def dispatch_worker(self, worker: Worker, now: float) -> None:
        """Give a connected worker with nothing to do its next run (a prefetching one: up to its
        prefetch), or index it as idle; its state follows what it holds."""
        if worker.conn is None:
            return
        if worker.prefetch and not worker.draining and worker.aborting is None:
            while self.has_room(worker):
                batch_id = self.matcher.batch_for(worker.traits)
                if batch_id is None:
                    break
                self.assign(worker, self.batches[batch_id], now)
        new = states.worker_state(worker.run is not None or bool(worker.held), worker.aborting is not None,
                                  worker.draining, worker.broken is not None)
        if new == states.IDLE:
            batch_id = self.matcher.batch_for(worker.traits)
            if batch_id is None and worker.prefetch:
                batch_id = self.take_back_for(worker, now)
            if batch_id is not None:
                self.assign(worker, self.batches[batch_id], now)
                return
            self.matcher.add_idle(worker.id, worker.traits, worker.cost, worker.speed, worker.priority)
        if new != worker.state:
            worker.state = new
            self.store.update_worker(worker.state_row())

    @staticmethod
    def has_room(worker: Worker) -> bool:
        return (worker.prefetch > 0 and worker.conn is not None and not worker.draining
                and worker.broken is None and worker.aborting is None
                and len(worker.held) + (worker.run is not None) < worker.prefetch)

    def assign(self, worker: Worker, batch: Batch, now: float) -> None:
        index, materialized = batch.take_next_index()
        run = self.runs.get((batch.id, index)) if materialized else None
        new = run is None
        if new:
            run = Run(batch_id=batch.id, batch_index=index)
            self.runs[run.key] = run
            batch.active.add(index)
        self.c.metrics.dispatched(now - (batch.start_time if run.ended is None else run.ended))
        run.attempt, run.worker_id, run.host = run.attempt + 1, worker.id, worker.host
        run.ended, run.progress, run.message = None, 0.0, None
        batch.count(states.WAITING, -1)
        batch.count(states.RUNNING, +1)   # assigned runs count as running (in flight)
        if not batch.has_waiting():
            self.matcher.remove_ready(batch.id)
        worker.state = states.BUSY
        worker.assign_seq += 1
        if worker.prefetch:   # held until it says WorkerStartedRun; revocable until then
            run.state, run.started = states.ASSIGNED, None
            worker.held[run.key] = worker.assign_seq
            self.prefetched.setdefault(batch.engine, {})[run.key] = None
        else:                 # an old worker starts it at once
            run.state, run.started = states.RUNNING, now
            worker.run, worker.run_seq = run.key, worker.assign_seq
            self.c.deadlines.arm_lease(worker, now)
            self.c.deadlines.arm_limit(run, batch)
            self.c.fairshare.started(run.key, batch.sharer, now)
            self.matcher.rerank(batch.sharer)
        self.store.assign_run(run.row(), new)
        self.store.update_batch(batch.counters())
        self.store.update_worker(worker.state_row())
        self.c.send(worker.conn, protocol.message(
            "RunqAssignRun", batch_id=batch.id, batch_index=index, attempt=run.attempt, seq=worker.assign_seq,
            engine=batch.engine, param=batch.param_of(index), time_limit=batch.time_limit))

    def unindex_prefetched(self, run: Run) -> None:
        held = self.prefetched.get(self.batches[run.batch_id].engine)
        if held is not None:
            held.pop(run.key, None)

    def take_back_for(self, idle: Worker, now: float) -> int | None:
        """An idle prefetching worker and no waiting run for it: take back the oldest run another
        worker holds unstarted behind a run it computes (this one can start it now).  The batch
        it went back to, or None."""
        e, g, u = idle.traits
        for key in self.prefetched.get(e, ()):
            run, batch = self.runs[key], self.batches[key[0]]
            holder = self.workers.get(run.worker_id)
            if (holder is None or holder is idle or holder.run is None or (g and g != batch.group)
                    or (u and u != batch.user)):
                continue
            log.info("run %s taken back from worker %d (busy) for idle worker %d", key, holder.id, idle.id)
            # the holder gets more when it next reports (filling it now would take this run straight back)
            self.c.lifecycle.revoke(holder, key, "taken back for an idle worker that can start it now", now)
            return self.matcher.batch_for(idle.traits)
        return None

    # ---- worker state
    def disconnected(self, conn, now: float, silent: bool = False) -> None:
        """The worker's connection closed: the grace timer starts (runq/core/deadlines.py); if
        runq closed it for silence (`silent`), its lease runs on too and the earlier one decides."""
        wid = self.c.conns.pop(conn, None)
        worker = self.workers.get(wid)
        if worker is None or worker.conn != conn:
            return
        worker.conn = None
        worker.disconnected_at = now
        worker.cut_off = silent
        worker.state = states.DISCONNECTED
        self.c.timers.set("grace", worker.id, now + self.c.config.grace)
        self.matcher.remove_idle(worker.id)
        self.note_presence(worker)
        self.store.update_worker(worker.state_row())
        log.info("worker %d disconnected%s", worker.id, f" holding run {worker.run}" if worker.run else "")

    def set_draining(self, worker: Worker) -> None:
        if not worker.draining:
            log.info("worker %d draining: no new runs", worker.id)
        worker.draining = True
        self.matcher.remove_idle(worker.id)
        if worker.conn is not None:
            worker.state = states.DRAINING
        self.note_presence(worker)
        self.store.update_worker(worker.state_row())

    def set_broken(self, worker: Worker, why: str) -> None:
        """The worker cannot run its engine here: no more runs for it until it restarts
        (a restarted worker process registers anew), so one bad host cannot fail every run."""
        log.warning("worker %d (%s) cannot run engine %s: no more runs for it until it restarts (%s)",
                    worker.id, worker.host, worker.engine, why)
        worker.broken = why
        self.matcher.remove_idle(worker.id)
        self.note_presence(worker)
        self.store.update_worker(worker.state_row())

    def note_presence(self, worker: Worker) -> None:
        """Keep the presence index (batch `served`, engines in Ping) in step with the worker."""
        self.c.presence.update(worker.id, worker.traits,
                               worker.conn is not None and not worker.draining and not worker.broken)
