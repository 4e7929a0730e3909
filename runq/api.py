"""Client requests to runq (what runweb asks): submit, cancel, drain, ping, metrics, logins,
and the routing of reads.

Changes are checked here (fields, who may ask) and made by the coordinator's
methods (``start_batch``, ``cancel_batch``, ``cancel_run``, ``drain_worker``):
the coordinator is the one owner of runs, batches and workers.  Reads are
``runq/queries.py``: read-only, from committed data, never committing; runq's
server sends them to its reader thread, and this class answers them inline
only for a coordinator driven without a server (tests).

Who asks: a request may carry ``actor`` (the runweb user it acts for) and
``admin``.  A batch is owned by the user who submitted it; a non-admin sees and
controls only batches it owns (another's answers 404, as if it did not exist)
and may not drain workers.  No ``actor`` means a holder of the client secret
(fab, benches, or runweb for a trusted request without credentials): admin.
"""
from __future__ import annotations

import logging

from . import states, submit, views
from simx import protocol
from .errors import BadRequest, Conflict, Forbidden, NotFound
from .queries import (DEFAULT_PAGE, MAX_PAGE, MAX_RESULT_BYTES, PAGE_BYTES, READS, RESULT_STATES,  # noqa: F401
                      RESULTS_BUDGET, Queries, hints, json_size, may_see, run_param, who)
from .throttle import Throttle

log = logging.getLogger("runq.api")

MAX_PRIORITY = 1_000_000     # batch priority: an integer within +-MAX_PRIORITY
MAX_PARAM_BYTES = 1024 * 1024    # a batch's param as JSON


class Api:
    def __init__(self, coord, queries: Queries):
        self.coord = coord
        self.queries = queries   # reads answered inline (a coordinator without a server's reader)
        self.logins = Throttle()
        self.handlers = {
            "Ping": self.ping, "StartBatch": self.start_batch, "CancelBatch": self.cancel_batch,
            "CancelRun": self.cancel_run, "DrainWorker": self.drain_worker, "Metrics": self.metrics,
            "LoginThrottle": self.login_throttle,
        }

    def handle(self, msg: dict, now: float) -> dict:
        if msg["type"] in READS:
            return self.queries.handle(msg, now)   # hints added there (the reader's path too)
        handler = self.handlers.get(msg["type"])
        if handler is None:
            raise BadRequest(f"{msg['type']} is not a request runq answers")
        return hints(handler(msg, now), msg)

    # ---- answered from memory, on the loop
    def ping(self, msg, now):
        c = self.coord
        return protocol.reply(runq={
            "version": "0.1.0", "started": views.iso(c.started), "batches_active": len(c.batches),
            "workers_connected": sum(1 for w in c.workers.values() if w.conn is not None),
            "workers_idle": c.matcher.idle_count(), "runs_in_flight": len(c.runs),
            "engines": c.presence.engines(),
        })

    def metrics(self, msg, now):
        c = self.coord
        return protocol.reply(**c.metrics.snapshot(c.batches.values(), c.workers.values(), now))

    # ---- the state a change's reply shows: the coordinator's, as it is now (not yet committed)
    def _batch_row(self, batch_id: int, msg: dict) -> dict:
        """The batch as it is now; NotFound also when the asker (msg) may not see it."""
        row = self.coord.batch_row(batch_id)
        if row is None or not may_see(row, msg):
            raise NotFound(f"no batch {batch_id}")
        return row

    def _batch_view(self, row: dict, now: float) -> dict:
        return views.batch(row, now, served=self.coord.presence.serves((row["engine"], row["group"], row["user"])))

    def _run_view(self, batch_row: dict, index: int) -> dict:
        if not 0 <= index < batch_row["n_runs"]:
            raise NotFound(f"batch {batch_row['id']} has no run {index} (it has {batch_row['n_runs']} runs)")
        row = self.coord.run_row(batch_row["id"], index)
        if row is None:
            view = views.implicit_run(batch_row, index)
        else:
            worker = self.coord.workers.get(row["worker_id"])
            if worker is not None or row["worker_id"] is None:
                view = views.run(row, worker.ipaddr if worker else None)
            else:
                view = views.run(row, self.queries.address(row["worker_id"]))
        view["param"] = run_param(batch_row, index)
        return view

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
        d = self.coord.batch_defaults
        key = msg.get("idempotency_key")
        owner, user = self._owner(msg)
        if key:
            row = self.coord.batch_by_key(key)
            if row is not None and not may_see(row, msg):
                raise Conflict("field 'idempotency_key': another user's batch has this key; choose another")
            if row is not None:
                log.info("batch request with known idempotency key %r: batch %d", key, row["id"])
                return protocol.reply(message="batch exists (same idempotency key)", batch_id=row["id"],
                                      created=False, batch=self._batch_view(row, now))
        n_runs, spec = submit.check(self.coord.catalog, msg)
        max_attempts = d.max_attempts if msg.get("max_attempts") is None else msg["max_attempts"]
        max_requeues = d.max_requeues if msg.get("max_requeues") is None else msg["max_requeues"]
        time_limit = msg.get("time_limit", d.time_limit)
        if max_attempts < 1:
            raise BadRequest("max_attempts must be 1 or more")
        if max_requeues < 0:
            raise BadRequest("max_requeues must be 0 or more")
        if time_limit is not None and time_limit <= 0:
            raise BadRequest("time_limit must be a positive number of seconds")
        size = json_size(msg.get("param") or {})
        if size > MAX_PARAM_BYTES:
            raise BadRequest(f"field 'param' is {size} bytes as JSON, over the {MAX_PARAM_BYTES}-byte limit")
        priority = msg.get("priority") or 0
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise BadRequest(f"priority must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
        batch = self.coord.start_batch(dict(
            name=msg.get("name", ""), group=msg.get("group", ""), user=user, owner=owner, engine=msg["engine"],
            n_runs=n_runs, param=msg.get("param") or {}, max_attempts=max_attempts, max_requeues=max_requeues,
            time_limit=time_limit, idempotency_key=key or None,
            priority=priority, sweep=spec), now)
        return protocol.reply(message="batch started", batch_id=batch.id, created=True,
                              batch=self._batch_view(batch.row(), now))

    def cancel_batch(self, msg, now):
        row = self._batch_row(msg["batch_id"], msg)
        if not self.coord.cancel_batch(row["id"], now):   # retried, or ended meanwhile: change nothing
            return protocol.reply(message=f"batch {row['id']} had already ended ({row['state']}); "
                                          "nothing was cancelled", batch=self._batch_view(row, now))
        return protocol.reply(message="batch cancelled", batch=self._batch_view(self.coord.batch_row(row["id"]), now))

    def cancel_run(self, msg, now):
        b, index = msg["batch_id"], msg["batch_index"]
        row = self._batch_row(b, msg)
        view = self._run_view(row, index)  # 404 for an index out of range
        if view["state"] in states.TERMINAL:
            return protocol.reply(message=f"run {index} of batch {b} had already ended ({view['state']}); "
                                          "nothing was cancelled", run=view, batch=self._batch_view(row, now))
        self.coord.cancel_run(b, index, now)
        row = self.coord.batch_row(b)
        return protocol.reply(message="run cancelled", run=self._run_view(row, index),
                              batch=self._batch_view(row, now))

    def drain_worker(self, msg, now):
        if not who(msg)[1]:
            raise Forbidden("only an admin may drain workers")
        c = self.coord
        worker = c.workers.get(msg["worker_id"])
        if worker is None:
            if not self.queries.store.worker_rows(worker_id=msg["worker_id"]):
                raise NotFound(f"no worker {msg['worker_id']}")
            raise Conflict(f"worker {msg['worker_id']} is gone")
        if worker.conn is None:
            raise Conflict(f"worker {worker.id} is not connected; it cannot be told to drain")
        c.drain_worker(worker)
        view = views.worker(worker.row(), worker.conn is not None, worker.state)
        view["broken"] = worker.broken
        return protocol.reply(message="worker draining", worker=view)

    # ---- logins (runweb keeps no state, so runq counts failures for every runweb process)
    def login_throttle(self, msg, now):
        """Record a failed login (failed: true) and say how long the address or user must wait."""
        keys = ("address " + msg["address"], "user " + msg["user"])
        if msg["failed"]:
            for key in keys:
                self.logins.fail(key, now)
        waits = [w for w in (self.logins.retry_after(k, now) for k in keys) if w is not None]
        return protocol.reply(retry_after=max(waits) if waits else None)

