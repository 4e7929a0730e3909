"""Reads of committed rows, for runq's reader (runq/queries.py) and for start-up: never a write.

A ``ReadStore`` has its own engine (SQLite: ``query_only``) and never commits; SQLite in WAL
mode and PostgreSQL let it read while the writer writes.  One path, SQLAlchemy Core, with
one shortcut measured to matter: on a SQLite file, a batch's row and a page of its runs go
through a kept DBAPI connection (SQLAlchemy's per-call work was half of the reader's CPU
per not-modified page).
"""
from __future__ import annotations

import sqlalchemy as sa

from . import schema


def read_engine(url):
    url = sa.engine.make_url(url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA query_only=1")
        cur.close()
    return engine


class ReadStore:
    def __init__(self, engine, tables: dict | None = None):
        self.engine = engine
        self.tables = tables if tables is not None else schema.reflect(engine)
        b, r, a = self.tables["batches"], self.tables["runs"], self.tables["attempts"]
        self._q_run = r.select().where(sa.and_(r.c.batch_id == sa.bindparam("b"), r.c.batch_index == sa.bindparam("i")))
        self._q_runs = (r.select().where(sa.and_(r.c.batch_id == sa.bindparam("b"), r.c.batch_index >= sa.bindparam("lo"),
                                                 r.c.batch_index < sa.bindparam("hi"))).order_by(r.c.batch_index))
        self._q_attempts = (a.select().where(sa.and_(a.c.batch_id == sa.bindparam("b"), a.c.batch_index == sa.bindparam("i")))
                            .order_by(a.c.attempt, a.c.id))
        self._q_batch = b.select().where(b.c.id == sa.bindparam("b"))
        self._q_key = b.select().where(b.c.idempotency_key == sa.bindparam("k"))

    @classmethod
    def open(cls, url) -> "ReadStore":
        """For another process (runq's reader): its own engine, the tables reflected."""
        return cls(read_engine(url))

    def _rows(self, stmt, name: str, **params) -> list[dict]:
        with self.engine.connect() as conn:
            result = conn.execute(stmt, params)
            keys = list(result.keys())
            rows = [dict(zip(keys, r)) for r in result]
        surrogate = name in ("runs", "attempts")   # their `id` is the database's, not a record field
        for row in rows:
            if surrogate:
                row.pop("id", None)
            for col in schema.JSON_COLUMNS[name]:
                row[col] = schema.jload(row[col])
        return rows

    def batch_row(self, batch_id: int) -> dict | None:
        if self._fast_reads():
            return self._fast_batch_row(batch_id)
        rows = self._rows(self._q_batch, "batches", b=batch_id)
        return rows[0] if rows else None

    def _fast_reads(self) -> bool:
        """Whether reads of one batch go through a kept DBAPI connection (SQLite files, read-only
        stores): every page asks for its batch row first (conditional reads, issue 10) and
        SQLAlchemy's per-call work was about half of the reader's CPU per not-modified answer.
        Outside a transaction each SELECT sees the latest commit, as through SQLAlchemy."""
        fast = getattr(self, "_fast", None)
        if fast is None:
            url = self.engine.url
            fast = self._fast = (url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
                                 and self.engine.dialect.paramstyle == "qmark")
            if fast:
                self._fast_conn = self.engine.raw_connection()   # kept for this store's life
                cols = list(self.tables["batches"].c.keys())
                self._fast_sql = (f"SELECT {', '.join(self.engine.dialect.identifier_preparer.quote(c) for c in cols)}"
                                  f" FROM batches WHERE id = ?")
                self._fast_cols = cols
                q = self.engine.dialect.identifier_preparer.quote
                self._fast_run_cols = [c for c in self.tables["runs"].c.keys() if c != "id"]
                self._fast_runs_sql = (f"SELECT {', '.join(q(c) for c in self._fast_run_cols)} FROM runs"
                                       f" WHERE batch_id = ? AND batch_index >= ? AND batch_index < ?"
                                       f" ORDER BY batch_index")
        return fast

    def run_page(self, batch_id: int, lo: int, hi: int) -> tuple[object, int | None, frozenset]:
        """(rows, digest, worker ids): rows() gives the stored runs with lo <= batch_index < hi
        (as run_rows); digest is of them as stored (None where there is no kept connection):
        equal digests, equal rows; the ids of their workers.  A read can so tell that a page
        did not change although its batch did (issue 10) without making dicts of the rows
        (about half the cost of the read)."""
        if not self._fast_reads():
            stored = self.run_rows(batch_id, lo, hi)
            return (lambda: stored), None, frozenset(r["worker_id"] for r in stored if r["worker_id"] is not None)
        cur = self._fast_conn.driver_connection.execute(self._fast_runs_sql, (batch_id, lo, hi))
        found = cur.fetchall()
        cur.close()
        cols, jcols, w = self._fast_run_cols, schema.JSON_COLUMNS["runs"], self._fast_run_cols.index("worker_id")

        def rows() -> list[dict]:
            out = [dict(zip(cols, r)) for r in found]
            for row in out:
                for col in jcols:
                    row[col] = schema.jload(row[col])
            return out
        return rows, hash(tuple(found)), frozenset(r[w] for r in found if r[w] is not None)

    def worker_addresses(self, worker_ids) -> dict[int, str | None]:
        """worker id -> the address it registered from, for the ids given (one query)."""
        ids = sorted(set(worker_ids))
        if not ids:
            return {}
        if not self._fast_reads():
            return {i: (rows[0]["ipaddr"] if rows else None) for i in ids
                    for rows in [self.worker_rows(worker_id=i)]}
        found = {}
        for start in range(0, len(ids), 500):   # SQLite's bound on parameters
            part = ids[start:start + 500]
            cur = self._fast_conn.driver_connection.execute(
                f"SELECT id, ipaddr FROM workers WHERE id IN ({', '.join('?' * len(part))})", part)
            found.update(cur.fetchall())
            cur.close()
        return {i: found.get(i) for i in ids}

    def _fast_batch_row(self, batch_id: int) -> dict | None:
        cur = self._fast_conn.driver_connection.execute(self._fast_sql, (batch_id,))
        found = cur.fetchone()
        cur.close()
        if found is None:
            return None
        row = dict(zip(self._fast_cols, found))
        for col in schema.JSON_COLUMNS["batches"]:
            row[col] = schema.jload(row[col])
        return row

    def batch_by_key(self, key: str) -> dict | None:
        """The stored batch with this idempotency key."""
        rows = self._rows(self._q_key, "batches", k=key)
        return rows[0] if rows else None

    def batch_rows(self, user: str | None = None, states: tuple[str, ...] | None = None,
                   offset: int = 0, limit: int | None = None, owner: str | None = None) -> list[dict]:
        b = self.tables["batches"]
        stmt = b.select().order_by(b.c.id)
        if user is not None:
            stmt = stmt.where(b.c.user == user)
        if owner is not None:
            stmt = stmt.where(b.c.owner == owner)
        if states:
            stmt = stmt.where(b.c.state.in_(states))
        if offset or limit is not None:
            stmt = stmt.offset(offset).limit(limit)
        return self._rows(stmt, "batches")

    def run_row(self, batch_id: int, batch_index: int) -> dict | None:
        rows = self._rows(self._q_run, "runs", b=batch_id, i=batch_index)
        return rows[0] if rows else None

    def run_rows(self, batch_id: int, lo: int, hi: int) -> list[dict]:
        return self._rows(self._q_runs, "runs", b=batch_id, lo=lo, hi=hi)

    def _runs_where(self, batch_id: int, state: str | None, lo: int, hi: int | None, *cols):
        r = self.tables["runs"]
        stmt = sa.select(*cols) if cols else r.select()
        stmt = stmt.where(r.c.batch_id == batch_id)
        if state is not None:
            stmt = stmt.where(r.c.state == state)
        if lo:
            stmt = stmt.where(r.c.batch_index >= lo)
        if hi is not None:
            stmt = stmt.where(r.c.batch_index < hi)
        return stmt

    def runs_in_state(self, batch_id: int, state: str, lo: int = 0, hi: int | None = None,
                      offset: int = 0, limit: int | None = None) -> list[dict]:
        """Stored runs of a batch in one state with lo <= batch_index < hi, in index order, paged."""
        r = self.tables["runs"]
        stmt = self._runs_where(batch_id, state, lo, hi).order_by(r.c.batch_index)
        if offset or limit is not None:
            stmt = stmt.offset(offset).limit(limit)
        return self._rows(stmt, "runs")

    def count_runs_in_state(self, batch_id: int, state: str, lo: int = 0, hi: int | None = None) -> int:
        stmt = self._runs_where(batch_id, state, lo, hi, sa.func.count())
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar() or 0

    def run_indexes_not_in(self, batch_id: int, state: str, lo: int) -> list[int]:
        """batch_index of the stored runs at or past `lo` whose state is not `state`, ascending."""
        r = self.tables["runs"]
        stmt = (self._runs_where(batch_id, None, lo, None, r.c.batch_index).where(r.c.state != state)
                .order_by(r.c.batch_index))
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(stmt)]

    def result_rows(self, batch_id: int, states: tuple[str, ...], after: int, limit: int) -> list[dict]:
        """Up to `limit` stored runs in `states` with batch_index > after: batch_index, state, result
        (decoded), error, and `size`, the length of the stored result text (to bound a reply)."""
        r = self.tables["runs"]
        stmt = (sa.select(r.c.batch_index, r.c.state, r.c.result, r.c.error)
                .where(sa.and_(r.c.batch_id == batch_id, r.c.state.in_(states), r.c.batch_index > after))
                .order_by(r.c.batch_index).limit(limit))
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
        for row in rows:
            text = row["result"]
            row["size"] = len(text or "") + len(row["error"] or "")
            row["result"] = schema.jload(text)
        return rows

    def active_run_rows(self, batch_ids: list[int]) -> list[dict]:
        """Non-terminal run rows of the given batches, plus their individually cancelled
        never-dispatched runs (for recovery)."""
        r = self.tables["runs"]
        out = []
        for i in range(0, len(batch_ids), 500):
            stmt = r.select().where(r.c.batch_id.in_(batch_ids[i:i + 500]))
            stmt = stmt.where(r.c.state.in_(("waiting", "running", "assigned", "cancelled")))
            stmt = stmt.order_by(r.c.batch_id, r.c.batch_index)
            out += self._rows(stmt, "runs")
        return out

    def attempt_rows(self, batch_id: int, batch_index: int) -> list[dict]:
        return self._rows(self._q_attempts, "attempts", b=batch_id, i=batch_index)

    def worker_rows(self, offset: int = 0, limit: int | None = None, worker_id: int | None = None) -> list[dict]:
        w = self.tables["workers"]
        stmt = w.select().order_by(w.c.id)
        if worker_id is not None:
            stmt = stmt.where(w.c.id == worker_id)
        if offset or limit is not None:
            stmt = stmt.offset(offset).limit(limit)
        return self._rows(stmt, "workers")

    # ---- what the shell reads once at start-up (runq/startup.py)
    def max_ids(self) -> tuple[int, int]:
        b, w = self.tables["batches"], self.tables["workers"]
        with self.engine.connect() as conn:
            mb = conn.execute(sa.select(sa.func.max(b.c.id))).scalar() or 0
            mw = conn.execute(sa.select(sa.func.max(w.c.id))).scalar() or 0
        return mb, mw

    def ended_batch_totals(self) -> dict[str, dict[str, int]]:
        """Ended batches by state: {state: {"batches": n, "finished": runs, "failed": .., "cancelled": ..}}."""
        b = self.tables["batches"]
        stmt = (sa.select(b.c.state, sa.func.count(), sa.func.sum(b.c.n_finished), sa.func.sum(b.c.n_failed),
                          sa.func.sum(b.c.n_cancelled))
                .where(b.c.end_time.is_not(None)).group_by(b.c.state))
        with self.engine.connect() as conn:
            return {state: {"batches": n, "finished": int(f or 0), "failed": int(x or 0), "cancelled": int(c or 0)}
                    for state, n, f, x, c in conn.execute(stmt)}

    def batch_keys(self) -> dict[str, tuple[int, str]]:
        """idempotency key -> (batch id, owner), for every stored batch that has one."""
        b = self.tables["batches"]
        stmt = sa.select(b.c.idempotency_key, b.c.id, b.c.owner).where(b.c.idempotency_key.is_not(None))
        with self.engine.connect() as conn:
            return {k: (i, o or "") for k, i, o in conn.execute(stmt)}

    def usage_history(self, since: float, width: float) -> list[tuple[str, float, float, int]]:
        """Worker-seconds of attempts that ended since `since`, per batch owner (else user) and
        slot of `width` seconds: (owner, slot start, seconds, attempts), for fair share."""
        a, b = self.tables["attempts"], self.tables["batches"]
        ratio = a.c.ended / width
        slot = sa.cast(ratio, sa.Integer) if self.engine.dialect.name == "sqlite" else sa.func.floor(ratio)
        owner = sa.func.coalesce(sa.func.nullif(b.c.owner, ""), b.c.user)
        stmt = (sa.select(owner, slot, sa.func.sum(a.c.ended - a.c.started), sa.func.count())
                .select_from(a.join(b, b.c.id == a.c.batch_id))
                .where(sa.and_(a.c.ended >= since, a.c.started.is_not(None)))
                .group_by(owner, slot))
        with self.engine.connect() as conn:
            return [(o or "", int(k) * width, float(sec or 0.0), int(n)) for o, k, sec, n in conn.execute(stmt)]

    def login_rows(self) -> list[tuple[str, list]]:
        """Failed-login counts: (key, failure times)."""
        t = self.tables["logins"]
        with self.engine.connect() as conn:
            return [(k, schema.jload(times)) for k, times in conn.execute(sa.select(t.c.key, t.c.times))]

    def recent_attempts(self, limit: int) -> list[dict]:
        """The latest `limit` attempts (batch_id, batch_index, attempt, worker_id, outcome), oldest first."""
        a = self.tables["attempts"]
        stmt = (sa.select(a.c.batch_id, a.c.batch_index, a.c.attempt, a.c.worker_id, a.c.outcome)
                .order_by(a.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        return rows[::-1]

    def close(self) -> None:
        if getattr(self, "_fast", None):
            self._fast_conn.close()
        self.engine.dispose()
