"""Client reads (listings, a batch and its runs, results, a run, workers): read-only.

A ``Queries`` answers from committed data through its own read connection
(``Store.reader()``) and never commits or changes anything; the in-memory facts
a view needs and the database does not hold (a worker's `connected` and live
state, its address while known, whether a batch is `served`) come from
``Facts``, the coordinator's published view.  runq's server runs it on a reader
thread (runq/reader.py) so a big page never stalls dispatch; a coordinator
without a server (tests) answers it inline.

Who asks: a request may carry ``actor`` (the runweb user it acts for) and
``admin``.  A non-admin sees only batches it owns (another's answers 404, as if
it did not exist).  No ``actor`` means a holder of the client secret: admin.
"""
from __future__ import annotations

import base64

from simx import limits, protocol
from simx.protocol import json_size
from . import views
from .core import states
from .core.access import hints, may_see, run_param, who  # noqa: F401  (who: the reader's callers)
from .core.commands import READS
from .core.errors import BadRequest, Conflict, Forbidden, NotFound, UploadRefused
from .files import Files

DEFAULT_PAGE, MAX_PAGE = limits.DEFAULT_PAGE, limits.MAX_PAGE
RESULT_STATES = (states.FINISHED, states.FAILED)   # runs that ended with a verdict
RESULTS_BUDGET = protocol.MAX_FRAME // 4           # bytes of results per BatchResults reply, about
MAX_RESULT_BYTES = limits.MAX_RESULT_BYTES
PAGE_BYTES = limits.PAGE_BYTES   # a listing page ends early (next_offset) past this much JSON

# the batch view's fields that change while its runs do not (bounded in size: numbers, times, state)
VOLATILE = frozenset({"state", "n_complete", "n_waiting", "n_running", "n_finished", "n_failed", "n_cancelled",
                      "end_time", "execution_time", "elapsed", "served", "can_cancel"})
HEADER_SLACK = 1024
SEEN_PAGES = 4096   # pages whose digest a reader remembers (about 200 bytes each)


class Facts:
    """What reads take from runq's memory rather than the database: which (engine, group, user)
    keys have a connected, non-draining worker (a batch's `served`).  Everything else a read
    shows is committed: a worker's state is written with every change (so `connected` is
    its state being neither disconnected nor gone), its address at registration.

    In runq's server this is a copy the loop keeps current in the reader process
    (runq/reader.py); a coordinator without a server reads its own index."""

    def __init__(self, presence=None):
        self._presence = presence
        self.keys: frozenset = frozenset()   # the copy, when there is no index to read

    def present_keys(self) -> frozenset:
        """The (engine, group, user) keys with a present worker: what a copy needs."""
        return self._presence.present_keys() if self._presence is not None else self.keys

    def served(self, traits: tuple[str, str, str]) -> bool:
        if self._presence is not None:
            return self._presence.serves(traits)
        e, g, u = traits
        return any(key in self.keys for key in ((e, g, u), (e, g, ""), (e, "", u), (e, "", "")))


class Queries:
    def __init__(self, store, facts: Facts, files_dir=None, files: Files | None = None):
        self.store, self.facts = store, facts
        self.files = files if files is not None else Files(files_dir)   # read here: pieces of output files
        self._addresses: dict = {}
        self._seen: dict = {}   # (batch id, offset, hi) -> (version, digest, worker ids) of the page last read
        self.handlers = {
            "BatchList": self.batch_list, "UserStatus": self.user_status, "BatchStatus": self.batch_status,
            "RunStatus": self.run_status, "WorkerList": self.worker_list, "WorkerStatus": self.worker_status,
            "BatchResults": self.batch_results, "RunFile": self.run_file,
            # commands the core found nothing in memory to change for (runq/core/commands.py)
            "StartBatch": self.known_key, "CancelBatch": self.ended_batch, "CancelRun": self.ended_run,
            "DrainWorker": self.unknown_worker,
        }
        assert READS <= set(self.handlers)

    def _batch_row(self, batch_id: int, msg: dict | None = None) -> dict:
        """The stored batch; NotFound also when the asker (msg) may not see it."""
        row = self.store.batch_row(batch_id)
        if row is None or (msg is not None and not may_see(row, msg)):
            raise NotFound(f"no batch {batch_id}")
        return row

    def _batch_view(self, row: dict, now: float) -> dict:
        return views.batch(row, now, served=self.facts.served((row["engine"], row["group"], row["user"])))

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
        items = list(items)
        if json_size(items) <= budget:   # the common case: one encoding of the whole page
            return items
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
        # conditional read (if_page): the page (runs, offset, next_offset) depends on its stored runs,
        # their workers' addresses and what makes implicit runs; its `page` tag covers exactly those
        # and is answered `not_modified` while it holds.  The header (`served`, `elapsed`, hints)
        # is always rebuilt and sent.
        known = msg.get("if_page")
        tag = {} if known is None else {"version": row["version"]}
        if state is None:
            hi = min(row["n_runs"], offset + limit)
            rows, page_tag = self._page_tag(row, offset, hi, known)
            if page_tag is not None and known is not None:
                tag["page"] = page_tag
                if page_tag == known:
                    return protocol.reply(batch=batch, **tag, not_modified=True)
            stored = {r["batch_index"]: r for r in rows}
            runs = [self._run(stored[i]) if i in stored else views.implicit_run(row, i) for i in range(offset, hi)]
            more = hi < row["n_runs"]
        else:
            runs, more = self._runs_in_state(row, state, offset, limit)
        for run in runs:
            run["param"] = run_param(row, run["batch_index"])
        # a page ends early (next_offset) before the reply passes PAGE_BYTES: stored params and
        # results never make a reply too large to send.  The budget leaves out what changes in the
        # batch's view (counters, times, state: under HEADER_SLACK bytes), so where a page ends
        # depends only on what its `page` tag covers
        fixed = {k: v for k, v in batch.items() if k not in VOLATILE}
        page = self._fill(runs, PAGE_BYTES - json_size(fixed) - HEADER_SLACK)
        more = more or len(page) < len(runs)
        return protocol.reply(batch=batch, runs=page, offset=offset, limit=limit,
                              next_offset=offset + len(page) if more else None, **tag)

    def _page_tag(self, row: dict, offset: int, hi: int, known: str | None) -> tuple[list, str | None]:
        """(stored runs of the page, its tag or None); sets self._addresses for the page's workers;
        no runs when the tag is `known` (not modified).

        While the batch's `version` is the one a page was last read at, its runs are the same
        (every commit writing one bumps it), so only its workers' addresses are read again
        (a worker may reconnect from elsewhere): the cheap path of a dashboard polling an ended
        batch.  Runs read after the batch row may be newer than its version, never older; the
        tag returned with rows is always the tag of those rows."""
        key = (row["id"], offset, hi)
        seen = self._seen.get(key)
        if seen is not None and seen[0] == row["version"]:
            self._addresses = self.store.worker_addresses(seen[2])
            page_tag = self._tag(row, offset, hi, seen[1])
            if page_tag == known:
                return [], page_tag   # not modified: the caller needs no runs
        rows, digest, workers = self.store.run_page(row["id"], offset, hi)
        if digest is None:
            return rows(), None
        if len(self._seen) >= SEEN_PAGES:
            self._seen.clear()
        self._seen[key] = (row["version"], digest, workers)
        self._addresses = self.store.worker_addresses(workers)
        page_tag = self._tag(row, offset, hi, digest)
        return ([] if page_tag == known else rows()), page_tag

    def _tag(self, row: dict, offset: int, hi: int, digest: int) -> str:
        # runs from next_index on are implicit (waiting, or cancelled with the batch): only a page
        # that reaches there depends on next_index and the batch's state (dispatch moves next_index
        # every turn; the first pages of a running batch must not change with it)
        implicit = (row["next_index"], row["state"]) if row["next_index"] < hi else None
        return format(hash((digest, implicit, row["n_runs"], offset, hi,
                            tuple(sorted(self._addresses.items())))) & (2**64 - 1), "016x")

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

    def handle(self, msg: dict, now: float) -> dict:
        self._addresses = {}   # worker id -> address, for this reply
        return hints(self.handlers[msg["type"]](msg, now), msg)

    def _address(self, worker_id: int | None) -> str | None:
        """The address a run's worker connects from (its stored row; once per worker per reply)."""
        if worker_id is None:
            return None
        if worker_id not in self._addresses:
            self._addresses[worker_id] = self.address(worker_id)
        return self._addresses[worker_id]

    def address(self, worker_id: int) -> str | None:
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
            data = self.files.read((row["id"], msg["batch_index"], run["attempt"]), name, offset)
        except (OSError, ValueError, UploadRefused) as exc:
            raise NotFound(f"file {name[:100]!r} of run {msg['batch_index']} of batch {row['id']} is not "
                           f"in runq's files directory ({exc.__class__.__name__})") from None
        end = offset + len(data)
        return protocol.reply(file=entry, offset=offset, data=base64.b64encode(data).decode("ascii"),
                              next_offset=end if end < entry["size"] and data else None)

    def _worker_view(self, row: dict) -> dict:
        view = views.worker(row, row["state"] not in (states.DISCONNECTED, states.GONE), row["state"])
        view["broken"] = row.get("broken")   # why it gets no runs (state "broken"), committed with the state
        return view

    def _hide_others_work(self, rows: list[dict], msg) -> list[dict]:
        """A plain user sees a worker busy with another user's batch as busy, without its ids."""
        actor, admin = who(msg)
        if admin:
            return rows
        owners = {b: (self.store.batch_row(b) or {}).get("owner") for b in {r["batch_id"] for r in rows} - {None}}
        return [r if r["batch_id"] is None or owners.get(r["batch_id"]) == actor
                else {**r, "batch_id": None, "batch_index": None} for r in rows]

    def worker_list(self, msg, now):
        offset, limit = self._page(msg)
        rows = self._hide_others_work(self.store.worker_rows(offset=offset, limit=limit + 1), msg)
        return self._paged("workers", rows, offset, limit, self._worker_view)

    def worker_status(self, msg, now):
        rows = self.store.worker_rows(worker_id=msg["worker_id"])
        if not rows:
            raise NotFound(f"no worker {msg['worker_id']}")
        return protocol.reply(worker=self._worker_view(self._hide_others_work(rows, msg)[0]))

    # ---- commands that change nothing (answered from committed rows)
    def known_key(self, msg, now):
        """StartBatch with the idempotency key of a batch that has ended: that batch."""
        row = self.store.batch_by_key(msg["idempotency_key"])
        if row is None:   # purged meanwhile: the asker may submit again
            raise Conflict("field 'idempotency_key': this key named a batch that was purged; choose another")
        if not may_see(row, msg):
            raise Conflict("field 'idempotency_key': another user's batch has this key; choose another")
        return protocol.reply(message="batch exists (same idempotency key)", batch_id=row["id"], created=False,
                              batch=self._batch_view(row, now))

    def ended_batch(self, msg, now):
        row = self._batch_row(msg["batch_id"], msg)
        return protocol.reply(message=f"batch {row['id']} had already ended ({row['state']}); nothing was cancelled",
                              batch=self._batch_view(row, now))

    def ended_run(self, msg, now):
        row = self._batch_row(msg["batch_id"], msg)
        index = msg["batch_index"]
        view = self._run_view(row, index)   # 404 for an index out of range
        return protocol.reply(message=f"run {index} of batch {row['id']} had already ended ({view['state']}); "
                                      "nothing was cancelled", run=view, batch=self._batch_view(row, now))

    def unknown_worker(self, msg, now):
        if not self.store.worker_rows(worker_id=msg["worker_id"]):
            raise NotFound(f"no worker {msg['worker_id']}")
        raise Conflict(f"worker {msg['worker_id']} is gone")
