"""Client commands (what runweb, fab and scripts ask): submit, cancel, drain, ping, metrics,
login counts; and the routing of reads.

A command is checked here (fields, who may ask), changes the model and is answered from
memory.  What memory does not hold is answered by the reader from committed rows
(runq/queries.py): reads, and commands that find nothing to change (cancelling a batch that
has ended, a run that has ended, a known idempotency key of an ended batch, an unknown
worker): the core returns those as reads, after this turn's commit.

Who asks: a request may carry ``actor`` (the runweb user it acts for) and ``admin``.  A
batch is owned by the user who submitted it; a non-admin sees and controls only batches it
owns (another's answers 404, as if it did not exist) and may not drain workers.  No
``actor`` means a holder of the client secret (fab, benches, or runweb for a trusted
request without credentials): admin.
"""
from __future__ import annotations

import heapq
import logging

from simx import limits, protocol
from .. import views
from . import states, submit
from .access import hints, may_see, run_param, who
from .errors import BadRequest, Conflict, Forbidden, NotFound, RunqError
from .model import INFO_DEFAULTS, INFO_FIELDS, Batch, Run
from .throttle import Throttle

log = logging.getLogger("runq.coordinator")

# answered by the reader from committed rows (runq/queries.py has a handler for each)
READS = frozenset({"BatchList", "UserStatus", "BatchStatus", "RunStatus", "WorkerList", "WorkerStatus",
                   "BatchResults", "RunFile"})
FREE = frozenset({"Ping", "Metrics", "LoginThrottle"})   # replies that depend on no commit
CHANGES = frozenset({"StartBatch", "CancelBatch", "CancelRun", "DrainWorker"})   # refused while commits fail


class Commands:
    def __init__(self, coord):
        self.c = coord
        logins = coord.config.logins
        self.logins = Throttle(logins.pair, logins.address, logins.user, logins.window)
        self.fault = None   # why the database refuses commits, while it does (Coordinator.store_fault)
        self.handlers = {
            "Ping": self.ping, "StartBatch": self.start_batch, "CancelBatch": self.cancel_batch,
            "CancelRun": self.cancel_run, "DrainWorker": self.drain_worker, "Metrics": self.metrics,
            "LoginThrottle": self.login_throttle,
        }

    def handle(self, conn, msg: dict, now: float) -> None:
        mtype = msg["type"]
        if mtype in READS:
            self.c.out.read(conn, msg)
            return
        handler = self.handlers.get(mtype)
        if handler is None:
            raise BadRequest(f"{mtype} is not a request runq answers")
        if self.fault is not None and mtype in CHANGES:
            raise RunqError(f"runq takes no new work now: its database refuses commits: {self.fault.describe()}; "
                            "it carries on by itself once it can write again", self.fault.code)
        reply = handler(msg, now)
        if reply is None:   # nothing in memory to change or show: the reader answers
            self.c.out.read(conn, msg)
        else:
            self.c.send(conn, hints(reply, msg), free=mtype in FREE)

    # ---- answered from memory
    def ping(self, msg, now):
        c = self.c
        return protocol.reply(runq={
            "version": "0.1.0", "started": views.iso(c.started), "batches_active": len(c.batches),
            "workers_connected": len(c.conns), "workers_idle": c.matcher.idle_count(),
            "runs_in_flight": len(c.runs), "engines": c.presence.engines(),
            "store": "ok" if self.fault is None else f"{self.fault.kind}: {self.fault.describe()}",
        })

    def metrics(self, msg, now):
        c = self.c
        return protocol.reply(**c.metrics.snapshot(c.batches.values(), c.workers.values(), now, self.engine_label))

    def engine_label(self, engine: str) -> str:
        """A metric label: a declared engine's name (a declared class gives its engine's), else "other"."""
        catalog = self.c.catalog
        if catalog is None or engine in catalog.engines or engine == submit.UNCHECKED:
            return engine
        declared = submit.declared_class(catalog, engine) if ":" in engine else None
        return declared.name if declared is not None else "other"

    def login_throttle(self, msg, now):
        """Record a failed login (failed: true) and say how long the address or user must wait
        (runweb keeps no state, so runq counts failures for every runweb process)."""
        if msg["failed"]:
            self.logins.fail(msg["address"], msg["user"], now)
            self.c.deadlines.logins_changed(now)
        return protocol.reply(retry_after=self.logins.retry_after(msg["address"], msg["user"], now))

    # ---- views of what is in memory
    def _batch_view(self, batch: Batch, now: float) -> dict:
        return views.batch(batch.row(), now, served=self.c.presence.serves(batch.traits))

    def _run_view(self, batch: Batch, run: Run) -> dict:
        worker = self.c.workers.get(run.worker_id) if run.worker_id is not None else None
        view = views.run(run.row(), worker.ipaddr if worker else None)
        view["param"] = run_param(batch.row(), run.batch_index)
        return view

    def _active(self, batch_id: int, msg) -> Batch | None:
        """The active batch the asker may see, else None (the reader answers: ended, or 404)."""
        batch = self.c.batches.get(batch_id)
        return batch if batch is not None and may_see({"owner": batch.owner}, msg) else None

    # ---- changes
    def _owner(self, msg) -> tuple[str, str]:
        """(owner, user) of a new batch.  `user` (for matching) defaults to the owner; only an
        admin may name another.  Without an actor (trusted, no credentials) the owner is `user`."""
        actor, admin = who(msg)
        user = msg.get("user") or ""
        if actor is None:
            return user, user
        if user and user != actor and not admin:
            raise Forbidden(f"field 'user': only an admin may submit as another user ({user!r}); "
                            f"leave it out or write {actor!r}")
        return actor, user or actor

    def start_batch(self, msg, now):
        c, d = self.c, self.c.batch_defaults
        key = msg.get("idempotency_key") or None
        owner, user = self._owner(msg)
        if key and key in c.keys:
            batch_id, key_owner = c.keys[key]
            if not may_see({"owner": key_owner}, msg):
                raise Conflict("field 'idempotency_key': another user's batch has this key; choose another")
            log.info("batch request with known idempotency key %r: batch %d", key, batch_id)
            batch = c.batches.get(batch_id)
            if batch is None:
                return None   # ended: the reader shows it
            return protocol.reply(message="batch exists (same idempotency key)", batch_id=batch_id,
                                  created=False, batch=self._batch_view(batch, now))
        n_runs, spec = submit.check(c.catalog, msg, c.config.allow_undeclared_engines)
        c.quotas.check_submit(owner, c.batches.values(), n_runs)
        max_attempts = d.max_attempts if msg.get("max_attempts") is None else msg["max_attempts"]
        max_requeues = d.max_requeues if msg.get("max_requeues") is None else msg["max_requeues"]
        time_limit = msg.get("time_limit", d.time_limit)
        if max_attempts < 1:
            raise BadRequest("max_attempts must be 1 or more")
        if max_requeues < 0:
            raise BadRequest("max_requeues must be 0 or more")
        if time_limit is not None and time_limit <= 0:
            raise BadRequest("time_limit must be a positive number of seconds")
        size = protocol.json_size(msg.get("param") or {})
        if size > limits.MAX_PARAM_BYTES:
            raise BadRequest(f"field 'param' is {size} bytes as JSON, over the {limits.MAX_PARAM_BYTES}-byte limit")
        priority = msg.get("priority") or 0
        if not -limits.MAX_PRIORITY <= priority <= limits.MAX_PRIORITY:
            raise BadRequest(f"priority must be an integer from {-limits.MAX_PRIORITY} to {limits.MAX_PRIORITY}")
        c.last_batch_id += 1
        batch = Batch(id=c.last_batch_id, group=msg.get("group", ""), user=user, owner=owner, engine=msg["engine"],
                      n_runs=n_runs, param=msg.get("param") or {}, max_attempts=max_attempts,
                      max_requeues=max_requeues, time_limit=time_limit, idempotency_key=key, priority=priority,
                      sweep=spec, start_time=now, n_waiting=n_runs,
                      info={f: INFO_DEFAULTS[f] if msg.get(f) is None else msg[f]   # name, description: any
                            for f in INFO_FIELDS})                                     # declared field
        c.batches[batch.id] = batch
        if key:
            c.keys[key] = (batch.id, owner)
        c.store.add_batch(batch.row())
        log.info("batch %d started: %d runs of %s (group %r, user %r, owner %r)", batch.id, batch.n_runs,
                 batch.engine, batch.group, batch.user, batch.owner)
        c.dispatch.dispatch_batch(batch, now)
        return protocol.reply(message="batch started", batch_id=batch.id, created=True,
                              batch=self._batch_view(batch, now))

    def cancel_batch(self, msg, now):
        """Cancel an active batch: waiting runs cancelled, running ones aborted."""
        batch = self._active(msg["batch_id"], msg)
        if batch is None:
            return None   # ended (nothing to cancel) or not there: the reader says which
        c = self.c
        log.info("cancelling batch %d", batch.id)
        batch.state = states.BATCH_CANCELLED
        c.matcher.remove_ready(batch.id)
        never_dispatched = batch.untouched_waiting()
        batch.count(states.WAITING, -never_dispatched)
        batch.count(states.CANCELLED, +never_dispatched)
        for index in sorted(batch.active):
            c.lifecycle.cancel_active(c.runs[(batch.id, index)], "batch cancelled", now)
        batch.requeued.clear()
        c.lifecycle.finish_batch_if_done(batch, now)
        c.store.update_batch(batch.counters())
        return protocol.reply(message="batch cancelled", batch=self._batch_view(batch, now))

    def cancel_run(self, msg, now):
        """Cancel one run of an active batch (waiting: it never starts; running: aborted)."""
        b, index = msg["batch_id"], msg["batch_index"]
        batch = self._active(b, msg)
        if batch is None:
            return None
        if not 0 <= index < batch.n_runs:
            raise NotFound(f"batch {b} has no run {index} (it has {batch.n_runs} runs)")
        c = self.c
        run = c.runs.get((b, index))
        if run is not None:
            if run.state == states.WAITING and run.retry_at is None:   # else: in backoff, not in the heap
                batch.requeued.remove(index)
                heapq.heapify(batch.requeued)
            c.lifecycle.cancel_active(run, "run cancelled", now)
        elif index >= batch.next_index and index not in batch.skip_ahead:
            batch.skip_ahead.add(index)
            run = Run(b, index, state=states.CANCELLED, ended=now)
            c.store.cancel_unstarted(run.row())
            batch.count(states.WAITING, -1)
            batch.count(states.CANCELLED, +1)
            if not batch.has_waiting():
                c.matcher.remove_ready(b)
            c.lifecycle.finish_batch_if_done(batch, now)
            c.store.update_batch(batch.counters())
        else:
            return None   # it has ended: its committed row says how
        return protocol.reply(message="run cancelled", run=self._run_view(batch, run),
                              batch=self._batch_view(batch, now))

    def drain_worker(self, msg, now):
        if not who(msg)[1]:
            raise Forbidden("only an admin may drain workers")
        worker = self.c.workers.get(msg["worker_id"])
        if worker is None:
            return None   # gone or unknown: the reader says which
        if worker.conn is None:
            raise Conflict(f"worker {worker.id} is not connected; it cannot be told to drain")
        self.c.dispatch.set_draining(worker)
        self.c.send(worker.conn, protocol.message("RunqDrain"))
        view = views.worker(worker.row(), True, worker.state)
        view["broken"] = worker.broken
        return protocol.reply(message="worker draining", worker=view)
