"""Timers, kept by deadline (runq/core/timers.py), so a tick costs O(due), not O(fleet).

Kinds: ``lease`` (a busy worker silent too long), ``grace`` (a disconnected worker not back),
``limit`` (a run over its batch's time_limit), ``retry`` (a failed run's backoff is over),
``contact`` (write a worker's last_contact, at most every CONTACT_WRITE_INTERVAL, grouped
on whole slots), ``purge`` (retention), ``summary`` (the periodic activity line).  Each
handler checks the state it guards: a timer may be stale.
"""
from __future__ import annotations

import heapq
import logging
import math

from . import states
from .model import Batch, Run, Worker
from .summary import Summary

log = logging.getLogger("runq.coordinator")

CONTACT_WRITE_INTERVAL = 5.0   # seconds between writes of a worker's last_contact
CONTACT_WRITE_SLOT = 1.0       # contact writes fall due on whole slots: a fleet's are grouped in one commit
PURGE_EVERY = 3600.0           # seconds between retention purges (runq.retention_days > 0)
SUMMARY_EVERY = 60.0           # seconds between activity lines in the log (INFO)
LOGINS_WRITE_EVERY = 1.0       # failed-login counts are written at most this often (a flood is one write a second)


def contact_slot(when: float) -> float:
    """The end of the CONTACT_WRITE_SLOT that `when` falls in."""
    return math.ceil(when / CONTACT_WRITE_SLOT) * CONTACT_WRITE_SLOT


class Deadlines:
    def __init__(self, coord, summary_every: float = SUMMARY_EVERY):
        self.c = coord
        self.timers, self.config = coord.timers, coord.config
        self.summary = Summary(summary_every)
        self.handlers = {"lease": self.lease_due, "grace": self.grace_due, "limit": self.limit_due,
                         "contact": self.contact_due, "purge": self.purge_due, "retry": self.retry_due,
                         "summary": self.summary_due, "logins": self.logins_due}

    def start(self, now: float) -> None:
        if self.config.retention_days > 0:
            self.timers.set("purge", None, now)
        self.timers.set("summary", None, now + self.summary.every)

    def tick(self, now: float) -> None:
        for kind, key in self.timers.due(now):
            self.handlers[kind](key, now)
        fairshare = self.c.fairshare
        if fairshare.due(now):
            fairshare.renormalize(now)
            self.c.matcher.rerank_all()

    def next_deadline(self) -> float:
        return min(self.timers.next_deadline(), self.c.fairshare.due_at())

    # ---- arming
    def arm_lease(self, worker: Worker, now: float) -> None:
        if self.timers.when("lease", worker.id) is None:
            self.timers.set("lease", worker.id, now + self.config.lease)

    def arm_limit(self, run: Run, batch: Batch) -> None:
        if batch.time_limit and run.started is not None:
            self.timers.set("limit", run.key, run.started + batch.time_limit)

    def heard_from(self, worker: Worker, now: float) -> None:
        """The worker spoke: its lease runs from now; its last_contact is written in a while."""
        worker.last_contact = now
        if ("contact", worker.id) not in self.timers.live:
            self.timers.set("contact", worker.id,
                            contact_slot(max(now, worker.saved_contact + CONTACT_WRITE_INTERVAL)))

    # ---- handlers
    def retry_due(self, key: tuple[int, int], now: float) -> None:
        """A run's retry backoff is over: back to its batch's waiting runs."""
        run = self.c.runs.get(key)
        if run is None or run.state != states.WAITING or run.retry_at is None:
            return
        batch = self.c.batches[run.batch_id]
        run.retry_at = None
        batch.n_delayed -= 1
        heapq.heappush(batch.requeued, run.batch_index)
        if batch.state == states.ACTIVE:
            self.c.dispatch.dispatch_batch(batch, now)

    def lease_due(self, wid: int, now: float) -> None:
        """The lease runs from the last word of the worker or the dispatch, whichever is later.

        It runs while the worker is connected, and on after runq closed the connection for
        silence (``Worker.cut_off``: a cut network is silence, and the idle cut-off comes at
        about the same time as the lease with the default settings, 3 x 10 s and 30 s).  A
        connection that closed otherwise leaves the run to the grace timer."""
        worker = self.c.workers.get(wid)
        if worker is None or not worker.run or (worker.conn is None and not worker.cut_off):
            return   # idle (no lease), or disconnected by its own side (the grace timer decides)
        run = self.c.runs.get(worker.run)
        if run is None:
            return
        due = max(worker.last_contact, run.started or 0.0) + self.config.lease
        if due > now:
            self.timers.set("lease", wid, due)
            return
        log.warning("worker %d silent for %.0fs (lease %.0fs): requeueing run %s",
                    worker.id, now - worker.last_contact, self.config.lease, worker.run)
        self.c.lifecycle.release_all(worker, states.OUTCOME_LOST, "worker lease expired", now)
        if worker.conn is None:   # dispatch_worker writes a connected worker's row
            self.c.store.update_worker(worker.state_row())

    def grace_due(self, wid: int, now: float) -> None:
        worker = self.c.workers.get(wid)
        if worker is None or worker.conn is not None or worker.state == states.GONE:
            return
        if worker.disconnected_at is None or worker.disconnected_at + self.config.grace > now:
            return
        if worker.run or worker.held:
            log.warning("worker %d not back within %.0fs: requeueing run %s%s", worker.id, self.config.grace,
                        worker.run, f" and {len(worker.held)} held" if worker.held else "")
            self.c.lifecycle.release_all(worker, states.OUTCOME_LOST, "worker disconnected past the grace period",
                                         now)
        worker.state = states.GONE
        self.c.store.update_worker(worker.state_row())

    def limit_due(self, key: tuple[int, int], now: float) -> None:
        run = self.c.runs.get(key)
        batch = self.c.batches.get(key[0])
        if (run is None or run.state != states.RUNNING or batch is None or not batch.time_limit
                or run.started is None):
            return
        if run.started + batch.time_limit > now:
            self.timers.set("limit", key, run.started + batch.time_limit)
            return
        worker = self.c.workers.get(run.worker_id)
        log.warning("run %s over its %ss time limit: aborting", run.key, batch.time_limit)
        why = f"time limit of {batch.time_limit}s exceeded"
        if worker is not None and worker.run == run.key:
            self.c.lifecycle.take_back(worker, states.OUTCOME_TIMEOUT, why, now)
        else:
            self.c.lifecycle.end_attempt(run, states.OUTCOME_TIMEOUT, why, now)

    def contact_due(self, wid: int, now: float) -> None:
        worker = self.c.workers.get(wid)
        if worker is not None and worker.last_contact > worker.saved_contact:
            worker.saved_contact = worker.last_contact
            self.c.store.save_contact(wid, worker.last_contact)

    def purge_due(self, _key, now: float) -> None:
        """Retention: batches ended and workers gone more than runq.retention_days ago.  The
        store deletes them with the turn's commit; the shell tells the core which batches went
        (Coordinator.committed) and removes their files."""
        self.timers.set("purge", None, now + PURGE_EVERY)
        cutoff = now - self.config.retention_days * 86400
        self.c.store.purge(cutoff)
        workers = self.c.workers
        for wid in [w.id for w in workers.values()
                    if w.conn is None and w.run is None and not w.held and w.last_contact < cutoff]:
            del workers[wid]

    def logins_changed(self, now: float) -> None:
        """Failed-login counts changed: written within LOGINS_WRITE_EVERY, all the changes at once."""
        if self.timers.when("logins", None) is None:
            self.timers.set("logins", None, now + LOGINS_WRITE_EVERY)

    def logins_due(self, _key, now: float) -> None:
        self.c.store.save_logins(self.c.commands.logins.take_changes())

    def summary_due(self, _key, now: float) -> None:
        self.timers.set("summary", None, now + self.summary.every)
        line = self.summary.line(now, len(self.c.batches), len(self.c.conns))
        if line:
            log.info("%s", line)
