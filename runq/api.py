"""Client requests to runq (what runweb asks): submit, list, inspect, cancel, drain.

Each request returns one Reply.  Reads go to the store (which commits the
turn's buffered writes first); changes go through the coordinator's steps.

Who asks: a request may carry ``actor`` (the runweb user it acts for) and
``admin``.  A batch is owned by the user who submitted it; a non-admin sees and
controls only batches it owns (another's answers 404, as if it did not exist)
and may not drain workers.  No ``actor`` means a holder of the client secret
(fab, benches, or runweb for a trusted request without credentials): admin.
"""
from __future__ import annotations

import heapq
import json
import logging

import base64

from . import protocol, states, submit, sweep, views
from .errors import BadRequest, Conflict, Forbidden, NotFound
from .files import UploadRefused
from .model import Batch, Run
from .throttle import Throttle

log = logging.getLogger("runq.api")

MAX_PRIORITY = 1_000_000     # batch priority: an integer within +-MAX_PRIORITY
DEFAULT_PAGE, MAX_PAGE = 1000, 10_000
PURGE_EVERY = 3600.0
RESULT_STATES = (states.FINISHED, states.FAILED)   # runs that ended with a verdict
RESULTS_BUDGET = protocol.MAX_FRAME // 4           # bytes of results per BatchResults reply, about
MAX_PARAM_BYTES = 1024 * 1024    # a batch's param as JSON
MAX_RESULT_BYTES = 1024 * 1024   # a run's stored result as JSON (coordinator refuses larger ones)
PAGE_BYTES = 1024 * 1024         # a listing page ends early (next_offset) past this much JSON


def json_size(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def who(msg) -> tuple[str | None, bool]:
    """(actor, admin) of a request; no actor = a holder of the client secret = admin."""
    actor = msg.get("actor")
    return actor, bool(msg.get("admin", actor is None))


class Api:
    def __init__(self, coord):
        self.coord = coord
        self.store = coord.store
        self.last_purge = 0.0
        self.logins = Throttle()
        self.handlers = {
            "Ping": self.ping, "StartBatch": self.start_batch, "BatchList": self.batch_list,
            "UserStatus": self.user_status, "BatchStatus": self.batch_status, "RunStatus": self.run_status,
            "WorkerList": self.worker_list, "WorkerStatus": self.worker_status, "CancelBatch": self.cancel_batch, "CancelRun": self.cancel_run,
            "DrainWorker": self.drain_worker, "Metrics": self.metrics, "BatchResults": self.batch_results,
            "LoginThrottle": self.login_throttle, "RunFile": self.run_file,
        }

    def handle(self, msg: dict, now: float) -> dict:
        handler = self.handlers.get(msg["type"])
        if handler is None:
            raise BadRequest(f"{msg['type']} is not a request runq answers")
        return self._hints(handler(msg, now), msg)

    @staticmethod
    def _hints(reply: dict, msg: dict) -> dict:
        """What the asker may do, on each view of the reply, so a dashboard shows only the buttons
        that would work: batches and runs `can_cancel` (their owner or an admin, until they end),
        workers `can_drain` (admins, while connected).  runq still checks each change itself."""
        actor, admin = who(msg)
        batch = reply.get("batch")
        for b in [batch, *(reply.get("batches") or ())]:
            if isinstance(b, dict) and "state" in b:
                b["can_cancel"] = (admin or b.get("owner") == actor) and b["state"] == states.ACTIVE
        # a run is shown only to who may see its batch (its owner or an admin): without the
        # batch in the reply (RunStatus), that is enough to cancel it
        mine = admin or not isinstance(batch, dict) or batch.get("owner") == actor
        for r in [reply.get("run"), *(reply.get("runs") or ())]:
            if isinstance(r, dict) and "state" in r:
                r["can_cancel"] = mine and r["state"] not in states.TERMINAL
        for w in [reply.get("worker"), *(reply.get("workers") or ())]:
            if isinstance(w, dict) and "connected" in w:
                w["can_drain"] = admin and bool(w["connected"])
        return reply

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
                self.coord.files.purge(lambda batch_id: self.store.batch_row(batch_id) is not None)
            if n_batches or n_workers:
                log.info("purged %d batches and %d workers older than %s days", n_batches, n_workers, days)

    # ---- reads
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

    def _batch_row(self, batch_id: int, msg: dict | None = None) -> dict:
        """The stored batch; NotFound also when the asker (msg) may not see it."""
        row = self.store.batch_row(batch_id)
        if row is None or (msg is not None and not self._may_see(row, msg)):
            raise NotFound(f"no batch {batch_id}")
        return row

    def _batch_view(self, row: dict, now: float) -> dict:
        return views.batch(row, now, served=self.coord.presence.serves((row["engine"], row["group"], row["user"])))

    @staticmethod
    def _may_see(row: dict, msg: dict) -> bool:
        actor, admin = who(msg)
        return admin or row.get("owner") == actor

    @staticmethod
    def _page(msg, low: int = 1) -> tuple[int, int]:
        offset, limit = msg.get("offset", 0), msg.get("limit", DEFAULT_PAGE)
        if offset < 0:
            raise BadRequest("offset must be 0 or more")
        if not low <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between {low} and {MAX_PAGE}")
        return offset, limit

    @staticmethod
    def _fill(items, budget: int = PAGE_BYTES) -> list:
        """The views of a page, ending early (at least one) once they pass `budget` bytes of JSON,
        so stored params and results never make a reply too large to send."""
        out = []
        for item in items:
            budget -= json_size(item)
            if out and budget < 0:
                break
            out.append(item)
        return out

    def _paged(self, name: str, rows: list, offset: int, limit: int, view) -> dict:
        """A page of a listing: one row more than asked tells whether another page follows."""
        page = self._fill(view(r) for r in rows[:limit])
        more = len(rows) > len(page)
        return protocol.reply(**{name: page}, offset=offset, limit=limit,
                              next_offset=offset + len(page) if more else None)

    def batch_list(self, msg, now):
        offset, limit = self._page(msg)
        actor, admin = who(msg)
        rows = self.store.batch_rows(user=msg.get("user"), owner=None if admin else actor,
                                     offset=offset, limit=limit + 1)
        return self._paged("batches", rows, offset, limit, lambda r: self._batch_view(r, now))

    def user_status(self, msg, now):
        """The batches owned by one user: your own, or anyone's for an admin."""
        actor, admin = who(msg)
        if not admin and msg["user"] != actor:
            raise Forbidden(f"you may list only your own batches (/user/{actor})")
        offset, limit = self._page(msg)
        rows = self.store.batch_rows(owner=msg["user"], offset=offset, limit=limit + 1)
        return self._paged("batches", rows, offset, limit, lambda r: self._batch_view(r, now))

    def batch_status(self, msg, now):
        """The batch and a page of its runs; limit 0: the batch alone; `state`: only runs in it
        (offset and next_offset then count those runs)."""
        row = self._batch_row(msg["batch_id"], msg)
        offset, limit = self._page(msg, low=0)
        state = msg.get("state")
        if state is not None and state not in states.RUN_STATES:
            raise BadRequest(f"state must be one of {', '.join(states.RUN_STATES)}, not {state[:40]!r}")
        if limit == 0:
            return protocol.reply(batch=self._batch_view(row, now))
        batch = self._batch_view(row, now)
        if state is None:
            hi = min(row["n_runs"], offset + limit)
            stored = {r["batch_index"]: r for r in self.store.run_rows(row["id"], offset, hi)}
            runs = [self._run(stored[i]) if i in stored else views.implicit_run(row, i) for i in range(offset, hi)]
            more = hi < row["n_runs"]
        else:
            runs, more = self._runs_in_state(row, state, offset, limit)
        for run in runs:
            run["param"] = run_param(row, run["batch_index"])
        # a page ends early (next_offset) before the reply passes PAGE_BYTES: stored params and
        # results never make a reply too large to send
        page = self._fill(runs, PAGE_BYTES - json_size(batch))
        more = more or len(page) < len(runs)
        return protocol.reply(batch=batch, runs=page, offset=offset, limit=limit,
                              next_offset=offset + len(page) if more else None)

    def _runs_in_state(self, row: dict, state: str, offset: int, limit: int) -> tuple[list, bool]:
        """A page of the runs in `state`, without looking at the runs in other states.

        Runs below the batch's `next_index` were dispatched and all have rows: their part
        comes from the (batch_id, state, batch_index) index.  From `next_index` on, runs are
        implicit (waiting, or cancelled with their batch) except the few cancelled alone,
        which have rows: that tail is walked arithmetically, skipping the rows in other states.
        """
        b, ni, n = row["id"], row["next_index"], row["n_runs"]
        head = self.store.runs_in_state(b, state, hi=ni, offset=offset, limit=limit + 1)
        runs = [self._run(r) for r in head[:limit]]
        if len(head) > limit:
            return runs, True
        implicit = states.CANCELLED if row["state"] == states.BATCH_CANCELLED else states.WAITING
        room = limit - len(runs)
        # where the page starts in the tail: past the head's runs in `state` if this page has none
        p = 0 if head else max(0, offset - self.store.count_runs_in_state(b, state, hi=ni))
        if state != implicit:   # in the tail only rows (runs cancelled alone) can be in `state`
            tail = self.store.runs_in_state(b, state, lo=ni, offset=p, limit=room + 1)
            return runs + [self._run(r) for r in tail[:room]], len(tail) > room
        # the tail's p-th run in `state` is ni + p, pushed on past each stored run in another state
        holes = self.store.run_indexes_not_in(b, state, ni)
        index, h = ni + p, 0
        while h < len(holes) and holes[h] <= index:
            index, h = index + 1, h + 1
        want = []
        while len(want) < room + 1 and index < n:
            want.append(index)
            index += 1
            while h < len(holes) and holes[h] == index:
                index, h = index + 1, h + 1
        page, more = want[:room], len(want) > room
        if page:
            stored = {r["batch_index"]: r for r in self.store.run_rows(b, page[0], page[-1] + 1)}
            runs += [self._run(stored[i]) if i in stored else views.implicit_run(row, i) for i in page]
        return runs, more

    def batch_results(self, msg, now):
        """A page of results (finished and failed runs, or those of `state`) from batch_index `start` on,
        in index order; `next_start` continues it.  A page stops early before the reply grows past
        RESULTS_BUDGET bytes, so big results never make a reply too large for a frame."""
        row = self._batch_row(msg["batch_id"], msg)
        start, limit = msg.get("start", 0), msg.get("limit", DEFAULT_PAGE)
        if start < 0:
            raise BadRequest("start must be 0 or more")
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
        state = msg.get("state")
        if state is not None and state not in RESULT_STATES:
            raise BadRequest(f"state must be one of {', '.join(RESULT_STATES)}, not {state[:40]!r}")
        rows = self.store.result_rows(row["id"], (state,) if state else RESULT_STATES, start - 1, limit + 1)
        results, budget = [], RESULTS_BUDGET
        for r in rows[:limit]:
            budget -= r.pop("size") + 100
            if results and budget < 0:
                break
            results.append(r)
        more = len(results) < len(rows)
        return protocol.reply(results=results, start=start, limit=limit,
                              next_start=results[-1]["batch_index"] + 1 if more else None)

    def _run_view(self, batch_row: dict, index: int) -> dict:
        if not 0 <= index < batch_row["n_runs"]:
            raise NotFound(f"batch {batch_row['id']} has no run {index} (it has {batch_row['n_runs']} runs)")
        row = self.store.run_row(batch_row["id"], index)
        run = self._run(row) if row else views.implicit_run(batch_row, index)
        run["param"] = run_param(batch_row, index)
        return run

    def _run(self, row: dict) -> dict:
        return views.run(row, self._address(row["worker_id"]))

    def _address(self, worker_id: int | None) -> str | None:
        """The address a run's worker connects from: in memory while known, else its stored row."""
        if worker_id is None:
            return None
        worker = self.coord.workers.get(worker_id)
        if worker is not None:
            return worker.ipaddr
        rows = self.store.worker_rows(worker_id=worker_id)
        return rows[0]["ipaddr"] if rows else None

    def run_status(self, msg, now):
        row = self._batch_row(msg["batch_id"], msg)
        run = self._run_view(row, msg["batch_index"])
        stored = self.store.run_row(row["id"], msg["batch_index"])
        # only here: it can be long
        run["traceback"] = views.clip(stored["traceback"], MAX_RESULT_BYTES) if stored else None
        run["attempts"] = [views.attempt(a) for a in self.store.attempt_rows(row["id"], msg["batch_index"])]
        return protocol.reply(run=run)

    def run_file(self, msg, now):
        """A piece of a finished run's output file: ``file`` {name, size, sha256}, ``data`` (base64 of
        up to files.READ_CHUNK bytes from ``offset``), ``next_offset`` (null at the end)."""
        row = self._batch_row(msg["batch_id"], msg)
        run = self._run_view(row, msg["batch_index"])
        result, name, offset = run["result"], msg["name"], msg.get("offset", 0)
        listed = result.get("files") if isinstance(result, dict) and run["state"] == states.FINISHED else None
        entry = next((f for f in listed if isinstance(f, dict) and f.get("name") == name), None) \
            if isinstance(listed, list) else None
        if entry is None:
            raise NotFound(f"run {msg['batch_index']} of batch {row['id']} has no file {name[:100]!r}"
                           + ("" if run["state"] == states.FINISHED else f" (it is {run['state']})"))
        if not 0 <= offset <= entry["size"]:
            raise BadRequest(f"offset must be between 0 and the file's size {entry['size']}")
        try:
            data = self.coord.files.read((row["id"], msg["batch_index"], run["attempt"]), name, offset)
        except (OSError, ValueError, UploadRefused) as exc:
            raise NotFound(f"file {name[:100]!r} of run {msg['batch_index']} of batch {row['id']} is not "
                           f"in runq's files directory ({exc.__class__.__name__})") from None
        end = offset + len(data)
        return protocol.reply(file=entry, offset=offset, data=base64.b64encode(data).decode("ascii"),
                              next_offset=end if end < entry["size"] and data else None)

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
            row = self.store.batch_by_key(key)
            if row is not None and not self._may_see(row, msg):
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
        c = self.coord
        c.last_batch_id += 1
        batch = Batch(id=c.last_batch_id, name=msg.get("name", ""), group=msg.get("group", ""),
                      user=user, engine=msg["engine"], n_runs=n_runs, param=msg.get("param") or {},
                      max_attempts=max_attempts, max_requeues=max_requeues, time_limit=time_limit,
                      idempotency_key=key or None, start_time=now, n_waiting=n_runs, priority=priority,
                      owner=owner, sweep=spec)
        c.batches[batch.id] = batch
        self.store.add_batch(batch.row())
        log.info("batch %d started: %d runs of %s (group %r, user %r, owner %r)", batch.id, n_runs, batch.engine,
                 batch.group, batch.user, owner)
        c.make_ready(batch, now)
        return protocol.reply(message="batch started", batch_id=batch.id, created=True,
                              batch=self._batch_view(batch.row(), now))

    def cancel_batch(self, msg, now):
        c = self.coord
        row = self._batch_row(msg["batch_id"], msg)
        batch = c.batches.get(msg["batch_id"])
        if batch is None:  # retried, or ended meanwhile: say what it is, change nothing
            return protocol.reply(message=f"batch {row['id']} had already ended ({row['state']}); "
                                          "nothing was cancelled", batch=self._batch_view(row, now))
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
        return protocol.reply(message="batch cancelled", batch=self._batch_view(row, now))

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
        row = self._batch_row(b, msg)
        view = self._run_view(row, index)  # 404 for an index out of range
        if view["state"] in states.TERMINAL:
            return protocol.reply(message=f"run {index} of batch {b} had already ended ({view['state']}); "
                                          "nothing was cancelled", run=view, batch=self._batch_view(row, now))
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
                              batch=self._batch_view(row, now))

    def drain_worker(self, msg, now):
        if not who(msg)[1]:
            raise Forbidden("only an admin may drain workers")
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

    # ---- logins (runweb keeps no state, so runq counts failures for every runweb process)
    def login_throttle(self, msg, now):
        """Record a failed login (failed: true) and say how long the address or user must wait."""
        keys = ("address " + msg["address"], "user " + msg["user"])
        if msg["failed"]:
            for key in keys:
                self.logins.fail(key, now)
        waits = [w for w in (self.logins.retry_after(k, now) for k in keys) if w is not None]
        return protocol.reply(retry_after=max(waits) if waits else None)


def run_param(batch_row: dict, index: int) -> dict:
    """The param run ``index`` of a stored batch gets: the batch's, with its sweep values set."""
    spec = batch_row.get("sweep")
    return sweep.param_for(batch_row["param"], spec, index) if spec else batch_row["param"]
