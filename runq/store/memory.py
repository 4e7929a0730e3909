"""``MemoryStore``: the SQL store's twin in memory, for tests of the core and tools.

The same write port (runq/store/writes.py), the same reads as ``ReadStore`` and the same
start-up reads, on dicts; JSON columns go through JSON text as in SQL, so values read back
are copies with SQL's types.  tests/test_store_contract.py runs the same operations on this,
SQLite and PostgreSQL, so it cannot drift from SQL.
"""
from __future__ import annotations

import itertools
import uuid

from . import schema
from .writes import Writes

ACTIVE_RUN_STATES = ("waiting", "running", "assigned", "cancelled")


class MemoryStore(Writes):
    def __init__(self, instance: str | None = None):
        self._instance = instance or str(uuid.uuid4())   # a new store is a new database
        self.batches: dict[int, dict] = {}
        self.runs: dict[tuple[int, int], dict] = {}
        self.attempts: list[dict] = []
        self.workers: dict[int, dict] = {}
        self.logins: dict[str, str] = {}
        self._attempt_ids = itertools.count(1)
        self._purged: list[int] = []
        self.reads = 0   # read calls (tests count them)
        self._reset_buffer()

    def reader(self) -> "MemoryStore":
        return self   # reads see committed rows only

    def startup_reader(self) -> "MemoryStore":
        return self

    def instance(self) -> str:
        return self._instance

    def close(self) -> None:
        self.commit()

    # ---- commit
    def commit(self) -> None:
        if not self.pending():
            return
        changed = set(self._dirty["batches"]) | {b for b, _ in self._dirty["runs"]}
        tables = {"batches": self.batches, "runs": self.runs, "workers": self.workers}
        for name, table in tables.items():
            for key, (row, new) in self._dirty[name].items():
                row = schema.encode(name, row)
                if new:
                    if key in table:
                        raise ValueError(f"{name}: {key} exists already")   # as SQL's unique keys
                    full = dict.fromkeys(schema.COLUMNS[name])
                    full.update(row)
                    if name == "batches":
                        full["version"] = 0
                    table[key] = full
                elif key in table:
                    table[key].update(row)
        for row in self._attempts:
            full = dict.fromkeys(schema.COLUMNS["attempts"])
            full.update(schema.encode("attempts", row))
            full["_id"] = next(self._attempt_ids)
            self.attempts.append(full)
        for b in changed:
            if b in self.batches:
                self.batches[b]["version"] = (self.batches[b]["version"] or 0) + 1
        for key, times in self._logins.items():
            if times is None:
                self.logins.pop(key, None)
            else:
                self.logins[key] = schema.jdump(times)
        if self._purge_before is not None:
            self._purged += self._purge(self._purge_before)
        self._reset_buffer()
        self.commits += 1

    def _purge(self, before: float) -> list[int]:
        ids = sorted(i for i, b in self.batches.items() if b["end_time"] is not None and b["end_time"] < before)
        gone = set(ids)
        for i in ids:
            del self.batches[i]
        for key in [k for k in self.runs if k[0] in gone]:
            del self.runs[key]
        self.attempts = [a for a in self.attempts if a["batch_id"] not in gone]
        for wid in [w["id"] for w in self.workers.values()
                    if w["last_contact"] is not None and w["last_contact"] < before and w["batch_id"] is None
                    and w["state"] in ("disconnected", "gone")]:
            del self.workers[wid]
        return ids

    # ---- reads (committed rows, decoded copies)
    def _out(self, name: str, row: dict | None) -> dict | None:
        self.reads += 1
        if row is None:
            return None
        return schema.decode(name, {k: v for k, v in row.items() if k != "_id"})

    def _run_out(self, row: dict) -> dict:
        return self._out("runs", row)

    def batch_row(self, batch_id: int) -> dict | None:
        return self._out("batches", self.batches.get(batch_id))

    def batch_by_key(self, key: str) -> dict | None:
        return next((self._out("batches", b) for b in self.batches.values() if b["idempotency_key"] == key), None)

    def batch_rows(self, user=None, states=None, offset: int = 0, limit: int | None = None, owner=None) -> list[dict]:
        rows = [b for _, b in sorted(self.batches.items())
                if (user is None or b["user"] == user) and (owner is None or b["owner"] == owner)
                and (not states or b["state"] in states)]
        rows = rows[offset:] if limit is None else rows[offset:offset + limit]
        return [self._out("batches", b) for b in rows]

    def run_row(self, batch_id: int, batch_index: int) -> dict | None:
        row = self.runs.get((batch_id, batch_index))
        return None if row is None else self._run_out(row)

    def _runs(self, batch_id: int, state=None, lo: int = 0, hi: int | None = None, not_state=None) -> list[dict]:
        return [r for (b, i), r in sorted(self.runs.items()) if b == batch_id and i >= lo
                and (hi is None or i < hi) and (state is None or r["state"] == state)
                and (not_state is None or r["state"] != not_state)]

    def run_rows(self, batch_id: int, lo: int, hi: int) -> list[dict]:
        return [self._run_out(r) for r in self._runs(batch_id, lo=lo, hi=hi)]

    def run_page(self, batch_id: int, lo: int, hi: int):
        stored = self.run_rows(batch_id, lo, hi)
        return (lambda: stored), None, frozenset(r["worker_id"] for r in stored if r["worker_id"] is not None)

    def worker_addresses(self, worker_ids) -> dict:
        self.reads += 1
        return {i: (self.workers[i]["ipaddr"] if i in self.workers else None) for i in sorted(set(worker_ids))}

    def runs_in_state(self, batch_id: int, state: str, lo: int = 0, hi: int | None = None,
                      offset: int = 0, limit: int | None = None) -> list[dict]:
        rows = self._runs(batch_id, state, lo, hi)
        rows = rows[offset:] if limit is None else rows[offset:offset + limit]
        return [self._run_out(r) for r in rows]

    def count_runs_in_state(self, batch_id: int, state: str, lo: int = 0, hi: int | None = None) -> int:
        self.reads += 1
        return len(self._runs(batch_id, state, lo, hi))

    def run_indexes_not_in(self, batch_id: int, state: str, lo: int) -> list[int]:
        self.reads += 1
        return [r["batch_index"] for r in self._runs(batch_id, lo=lo, not_state=state)]

    def result_rows(self, batch_id: int, states: tuple[str, ...], after: int, limit: int) -> list[dict]:
        self.reads += 1
        rows = [r for r in self._runs(batch_id, lo=after + 1) if r["state"] in states][:limit]
        return [{"batch_index": r["batch_index"], "state": r["state"], "result": schema.jload(r["result"]),
                 "error": r["error"], "size": len(r["result"] or "") + len(r["error"] or "")} for r in rows]

    def active_run_rows(self, batch_ids: list[int]) -> list[dict]:
        ids = set(batch_ids)
        return [self._run_out(r) for (b, _), r in sorted(self.runs.items())
                if b in ids and r["state"] in ACTIVE_RUN_STATES]

    def attempt_rows(self, batch_id: int, batch_index: int) -> list[dict]:
        rows = sorted((a for a in self.attempts if a["batch_id"] == batch_id and a["batch_index"] == batch_index),
                      key=lambda a: (a["attempt"], a["_id"]))
        return [self._out("attempts", a) for a in rows]

    def worker_rows(self, offset: int = 0, limit: int | None = None, worker_id: int | None = None) -> list[dict]:
        rows = [w for _, w in sorted(self.workers.items()) if worker_id is None or w["id"] == worker_id]
        rows = rows[offset:] if limit is None else rows[offset:offset + limit]
        return [self._out("workers", w) for w in rows]

    # ---- start-up
    def max_ids(self) -> tuple[int, int]:
        return max(self.batches, default=0), max(self.workers, default=0)

    def ended_batch_totals(self) -> dict:
        out: dict = {}
        for b in self.batches.values():
            if b["end_time"] is None:
                continue
            t = out.setdefault(b["state"], {"batches": 0, "finished": 0, "failed": 0, "cancelled": 0})
            t["batches"] += 1
            for s in ("finished", "failed", "cancelled"):
                t[s] += b["n_" + s] or 0
        return out

    def batch_keys(self) -> dict:
        return {b["idempotency_key"]: (i, b["owner"] or "") for i, b in self.batches.items()
                if b["idempotency_key"] is not None}

    def usage_history(self, since: float, width: float) -> list[tuple[str, float, float, int]]:
        slots: dict = {}
        for a in self.attempts:
            if a["ended"] is None or a["ended"] < since or a["started"] is None:
                continue
            b = self.batches.get(a["batch_id"])
            if b is None:
                continue
            key = (b["owner"] or b["user"] or "", int(a["ended"] // width) * width)
            sec, n = slots.get(key, (0.0, 0))
            slots[key] = (sec + a["ended"] - a["started"], n + 1)
        return [(o, k, sec, n) for (o, k), (sec, n) in slots.items()]

    def login_rows(self) -> list[tuple[str, list]]:
        return [(k, schema.jload(t)) for k, t in self.logins.items()]

    def recent_attempts(self, limit: int) -> list[dict]:
        return [{k: a[k] for k in ("batch_id", "batch_index", "attempt", "worker_id", "outcome")}
                for a in self.attempts[-limit:]]
