"""The only module that touches the database (dataset + SQLAlchemy Core).

Writes are buffered by intent (``add_batch``, ``save_run``, ``add_attempt``,
``save_worker``) and written by ``commit()`` in one transaction with
executemany of statements built once at start-up; runq's server calls it once
per loop turn, before sending the turn's messages.  Reads never commit: they
see committed rows.  ``reader()`` gives a read-only Store over its own
connection for the API's reads (runq/queries.py, on runq's reader thread;
SQLite in WAL mode and PostgreSQL let it read while the writer writes).
``current()`` and ``batch_by_key()`` also see this turn's buffered writes, for
the coordinator's own replies.
"""
from __future__ import annotations

import json
import logging
import uuid

import dataset
import sqlalchemy as sa

from simx import records

log = logging.getLogger("runq.store")

# The columns of each table and the values older rows get: declared once, in simx/records.py.
COLUMNS = records.COLUMNS
BACKFILL = records.BACKFILL
INDEXES = [
    ("runs", ["batch_id", "batch_index"], "runs_key", True),
    ("attempts", ["batch_id", "batch_index", "attempt"], "attempts_key", False),
    ("batches", ["user"], "batches_user", False),
    ("batches", ["owner"], "batches_owner", False),
    ("batches", ["idempotency_key"], "batches_idempotency_key", True),
    ("batches", ["state"], "batches_state", False),
    ("runs", ["batch_id", "state", "batch_index"], "runs_state", False),   # ?state= filters, results
    ("meta", ["name"], "meta_name", True),
]


def _jdump(value):
    return json.dumps(value, ensure_ascii=False)


def _jload(text):
    return None if text is None else json.loads(text)


class ReadOnly(RuntimeError):
    pass


class Store:
    read_only = False
    commits = 0          # transactions written by commit() (tests count them)

    def __init__(self, url: str, synchronous: str = "NORMAL"):
        """`synchronous`: SQLite's PRAGMA synchronous (NORMAL, FULL or EXTRA; runq.synchronous)."""
        sqlite = url.startswith("sqlite")
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.db = dataset.connect(
            url,
            sqlite_wal_mode=sqlite,
            on_connect_statements=[f"PRAGMA synchronous={synchronous}", "PRAGMA busy_timeout=10000"]
            if sqlite else None,
        )
        self.engine = self.db.engine
        self._types = {"i": self.db.types.bigint, "f": self.db.types.float, "s": self.db.types.text,
                       "j": self.db.types.text}
        self.tables = {name: self._ensure_table(name, cols) for name, cols in COLUMNS.items()}
        self._json_cols = {name: [c for c, t in cols.items() if t == "j"] for name, cols in COLUMNS.items()}
        self._build_statements()
        self._reset_buffer()
        self._migrate()
        self._raw = sqlite and self.engine.dialect.paramstyle == "qmark"
        self._compiled: dict = {}

    def defer_checkpoints(self, pages: int) -> None:
        """SQLite: the writer checkpoints the WAL itself only past `pages` pages (another thread
        does it meanwhile: runq/checkpoint.py).  Applies to every connection from now on."""
        @sa.event.listens_for(self.engine, "connect")
        def _autocheckpoint(dbapi_conn, _record):
            dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
        self.engine.dispose()   # connections opened before get it too (they reopen)

    def reader(self) -> "Store":
        """A read-only Store over its own engine and connection, sharing the table definitions."""
        return Store._read_only(self.engine.url, self.tables)

    @staticmethod
    def open_reader(url) -> "Store":
        """A read-only Store for another process (runq's reader): tables reflected, nothing written."""
        engine = Store._read_engine(sa.engine.make_url(url))
        meta = sa.MetaData()
        tables = {name: sa.Table(name, meta, autoload_with=engine) for name in COLUMNS}
        return Store._read_only(engine.url, tables, engine)

    @staticmethod
    def _read_engine(url):
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

    @staticmethod
    def _read_only(url, tables: dict, engine=None) -> "Store":
        r = object.__new__(Store)
        r.read_only, r.db = True, None
        r.engine = engine if engine is not None else Store._read_engine(url)
        r.tables = tables
        r._json_cols = {name: [c for c, t in cols.items() if t == "j"] for name, cols in COLUMNS.items()}
        r._build_statements()
        r._reset_buffer()
        return r

    def _migrate(self):
        """Bring rows written by older versions up to date (idempotent)."""
        b = self.tables["batches"]
        with self.engine.begin() as conn:
            # `failed` batch state (issue 8): a batch that ended with failed runs used to say `done`
            conn.execute(b.update().where(sa.and_(b.c.state == "done", b.c.n_failed > 0)).values(state="failed"))
            # owners (issue 6): batches stored before owners existed are owned by their `user` field
            conn.execute(b.update().where(b.c.owner.is_(None)).values(owner=b.c.user))
            # priority (issue 9): rows written before it (or without it) have priority 0
            conn.execute(b.update().where(b.c.priority.is_(None)).values(priority=0))
            # version (issue 10): rows written before it start at 0
            conn.execute(b.update().where(b.c.version.is_(None)).values(version=0))

    # ---- schema
    def _ensure_table(self, name: str, cols: dict) -> sa.Table:
        has_id = "id" in cols
        # Batches and workers get ids from runq; runs and attempts use an autoincrement
        # surrogate (INTEGER PRIMARY KEY, so SQLite makes it the rowid).
        table = self.db.create_table(name, primary_id="id",
                                     primary_type=self.db.types.bigint if has_id else self.db.types.integer,
                                     primary_increment=not has_id)
        for col, kind in cols.items():
            if col != "id" and not table.has_column(col):
                table.create_column(col, self._types[kind])
                if (name, col) in BACKFILL:
                    column = table.table.c[col]
                    with self.engine.begin() as conn:
                        conn.execute(table.table.update().where(column.is_(None)).values({col: BACKFILL[(name, col)]}))
        for tname, icols, iname, unique in INDEXES:
            if tname == name and not table.has_index(icols):
                table.create_index(icols, name=iname, unique=unique)
        return table.table

    def _build_statements(self):
        b, r, a, w = (self.tables[n] for n in ("batches", "runs", "attempts", "workers"))
        self._ins = {n: t.insert() for n, t in self.tables.items() if n != "meta"}
        self._upd = {
            "batches": b.update().where(b.c.id == sa.bindparam("_id")),
            "workers": w.update().where(w.c.id == sa.bindparam("_id")),
            "runs": r.update().where(sa.and_(r.c.batch_id == sa.bindparam("_b"),
                                             r.c.batch_index == sa.bindparam("_i"))),
        }
        self._q_run = r.select().where(sa.and_(r.c.batch_id == sa.bindparam("b"), r.c.batch_index == sa.bindparam("i")))
        self._q_runs = (r.select().where(sa.and_(r.c.batch_id == sa.bindparam("b"), r.c.batch_index >= sa.bindparam("lo"),
                                                 r.c.batch_index < sa.bindparam("hi"))).order_by(r.c.batch_index))
        self._q_attempts = (a.select().where(sa.and_(a.c.batch_id == sa.bindparam("b"), a.c.batch_index == sa.bindparam("i")))
                            .order_by(a.c.attempt, a.c.id))
        self._q_batch = b.select().where(b.c.id == sa.bindparam("b"))
        self._q_key = b.select().where(b.c.idempotency_key == sa.bindparam("k"))
        self._bump = (b.update().where(b.c.id == sa.bindparam("_id"))
                      .values(version=b.c.version + sa.literal_column("1")))

    # ---- buffered writes
    def _reset_buffer(self):
        # name -> key -> (row, is_new); rows keep the latest snapshot per key
        self._dirty: dict[str, dict] = {"batches": {}, "runs": {}, "workers": {}}
        self._attempts: list[dict] = []

    def _mark(self, name: str, key, row: dict, new: bool):
        if self.read_only:
            raise ReadOnly(f"a write to {name} on a read-only store")
        old = self._dirty[name].get(key)
        if old is not None:   # a later, possibly partial, snapshot of the same row
            row, new = {**old[0], **row}, new or old[1]
        self._dirty[name][key] = (row, new)

    def add_batch(self, row: dict):
        self._mark("batches", row["id"], row, True)

    def save_batch(self, row: dict):
        """Update a stored batch: ``row`` holds its id and the columns that changed (Batch.counters())."""
        self._mark("batches", row["id"], row, False)

    def save_run(self, row: dict, new: bool = False):
        self._mark("runs", (row["batch_id"], row["batch_index"]), row, new)

    def add_attempt(self, row: dict):
        self._attempts.append(row)

    def save_worker(self, row: dict, new: bool = False):
        self._mark("workers", row["id"], row, new)

    def pending(self) -> bool:
        return bool(self._attempts or any(self._dirty.values()))

    def _encode(self, name: str, row: dict) -> dict:
        out = dict(row)
        for col in self._json_cols[name]:
            if col in out:
                out[col] = _jdump(out[col])
        return out

    def _execute_many(self, conn, stmt, rows: list[dict]) -> None:
        """executemany.  On SQLite the statement is compiled once per set of columns and run with
        plain tuples on the transaction's DBAPI cursor, skipping SQLAlchemy's per-row parameter
        processing and per-call bookkeeping (together about a third of runq's CPU per run);
        other databases go through SQLAlchemy."""
        if not self._raw:
            conn.execute(stmt, rows)
            return
        groups: dict[tuple, list] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for keys, group in groups.items():
            compiled = self._compiled.get((stmt, keys))
            if compiled is None:
                c = stmt.compile(dialect=self.engine.dialect, column_keys=list(keys))
                compiled = self._compiled[(stmt, keys)] = (c.string, tuple(c.positiontup))
            sql, order = compiled
            # the DBAPI cursor of this transaction's connection: no SQLAlchemy bookkeeping per call
            conn.connection.driver_connection.cursor().executemany(sql, [tuple(row[k] for k in order)
                                                                         for row in group])

    def commit(self) -> None:
        """Write everything buffered in one transaction."""
        if not self.pending():
            return
        # the batches this commit changes: their rows, or runs of theirs (attempts come with a run)
        changed = {b for b in self._dirty["batches"]} | {b for b, _ in self._dirty["runs"]}
        with self.engine.begin() as conn:
            for name, keyname in (("batches", "_id"), ("workers", "_id"), ("runs", None)):
                inserts, updates = [], {}
                for key, (row, new) in self._dirty[name].items():
                    row = self._encode(name, row)
                    if new:
                        if name == "batches":
                            row["version"] = 0   # bumped to 1 below, with every batch changed
                        inserts.append(row)
                        continue
                    if keyname:
                        row["_id"] = row.pop("id")
                    else:
                        row["_b"], row["_i"] = row.pop("batch_id"), row.pop("batch_index")
                    # one executemany per set of columns (rows may be partial)
                    updates.setdefault(tuple(row), []).append(row)
                if inserts:
                    self._execute_many(conn, self._ins[name], inserts)
                for rows in updates.values():
                    self._execute_many(conn, self._upd[name], rows)
            if self._attempts:
                self._execute_many(conn, self._ins["attempts"], self._attempts)
            if changed:   # one executemany over the distinct batches, not one per run
                self._execute_many(conn, self._bump, [{"_id": b} for b in sorted(changed)])
        self._reset_buffer()
        self.commits += 1

    # ---- reads (committed rows; never a commit)
    def current(self, name: str, key) -> dict | None:
        """A batch (key: id) or run (key: (batch_id, batch_index)) as committed, with this turn's
        buffered changes over it: what the coordinator's replies show."""
        if name == "batches":
            rows = self._rows(self._q_batch, "batches", b=key)
        else:
            rows = self._rows(self._q_run, "runs", b=key[0], i=key[1])
        pending = self._dirty[name].get(key)
        if pending is None:
            return rows[0] if rows else None
        return {**(rows[0] if rows else {}), **pending[0]}

    def _rows(self, stmt, name: str, **params) -> list[dict]:
        with self.engine.connect() as conn:
            result = conn.execute(stmt, params)
            keys = list(result.keys())
            rows = [dict(zip(keys, r)) for r in result]
        for row in rows:
            for col in self._json_cols[name]:
                row[col] = _jload(row[col])
        return rows

    def batch_row(self, batch_id: int) -> dict | None:
        if self.read_only and self._fast_reads():
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
        if not (self.read_only and self._fast_reads()):
            stored = self.run_rows(batch_id, lo, hi)
            return (lambda: stored), None, frozenset(r["worker_id"] for r in stored if r["worker_id"] is not None)
        cur = self._fast_conn.driver_connection.execute(self._fast_runs_sql, (batch_id, lo, hi))
        found = cur.fetchall()
        cur.close()
        cols, jcols, w = self._fast_run_cols, self._json_cols["runs"], self._fast_run_cols.index("worker_id")

        def rows() -> list[dict]:
            out = [dict(zip(cols, r)) for r in found]
            for row in out:
                for col in jcols:
                    row[col] = _jload(row[col])
            return out
        return rows, hash(tuple(found)), frozenset(r[w] for r in found if r[w] is not None)

    def worker_addresses(self, worker_ids) -> dict[int, str | None]:
        """worker id -> the address it registered from, for the ids given (one query)."""
        ids = sorted(set(worker_ids))
        if not ids:
            return {}
        if not (self.read_only and self._fast_reads()):
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
        for col in self._json_cols["batches"]:
            row[col] = _jload(row[col])
        return row

    def batch_by_key(self, key: str) -> dict | None:
        """The batch with this idempotency key, including one buffered in this turn."""
        for row, new in self._dirty["batches"].values():
            if new and row.get("idempotency_key") == key:
                return dict(row)
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
            row["result"] = _jload(text)
        return rows

    def active_run_rows(self, batch_ids: list[int]) -> list[dict]:
        """Non-terminal run rows of the given batches, plus their individually cancelled
        never-dispatched runs (for recovery)."""
        r = self.tables["runs"]
        out = []
        for i in range(0, len(batch_ids), 500):
            stmt = r.select().where(r.c.batch_id.in_(batch_ids[i:i + 500]))
            stmt = stmt.where(r.c.state.in_(("waiting", "running", "assigned", "cancelled")))
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

    def instance(self) -> str:
        """This database's identity (a uuid made with it): workers tell a reset database by it."""
        self.commit()
        m = self.tables["meta"]
        with self.engine.begin() as conn:
            value = conn.execute(sa.select(m.c.value).where(m.c.name == "instance")).scalar()
            if value is None:
                value = str(uuid.uuid4())
                conn.execute(m.insert(), {"name": "instance", "value": value})
        return value

    def max_ids(self) -> tuple[int, int]:
        self.commit()
        b, w = self.tables["batches"], self.tables["workers"]
        with self.engine.connect() as conn:
            mb = conn.execute(sa.select(sa.func.max(b.c.id))).scalar() or 0
            mw = conn.execute(sa.select(sa.func.max(w.c.id))).scalar() or 0
        return mb, mw

    def ended_batch_totals(self) -> dict[str, dict[str, int]]:
        """Ended batches by state: {state: {"batches": n, "finished": runs, "failed": .., "cancelled": ..}}
        (for runq/metrics.py; one aggregate query)."""
        self.commit()
        b = self.tables["batches"]
        stmt = (sa.select(b.c.state, sa.func.count(), sa.func.sum(b.c.n_finished), sa.func.sum(b.c.n_failed),
                          sa.func.sum(b.c.n_cancelled))
                .where(b.c.end_time.is_not(None)).group_by(b.c.state))
        with self.engine.connect() as conn:
            return {state: {"batches": n, "finished": int(f or 0), "failed": int(x or 0), "cancelled": int(c or 0)}
                    for state, n, f, x, c in conn.execute(stmt)}

    # ---- retention
    def purge(self, before: float) -> tuple[int, int]:
        """Delete batches that ended before `before` (with their runs and attempts) and
        workers last heard from before it that hold no run.  Returns (batches, workers)."""
        self.commit()
        b, r, a, w = (self.tables[n] for n in ("batches", "runs", "attempts", "workers"))
        with self.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(
                sa.select(b.c.id).where(sa.and_(b.c.end_time.is_not(None), b.c.end_time < before)))]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                conn.execute(a.delete().where(a.c.batch_id.in_(chunk)))
                conn.execute(r.delete().where(r.c.batch_id.in_(chunk)))
                conn.execute(b.delete().where(b.c.id.in_(chunk)))
            gone = conn.execute(w.delete().where(sa.and_(
                w.c.last_contact < before, w.c.batch_id.is_(None), w.c.state.in_(("disconnected", "gone")))))
        return len(ids), gone.rowcount

    def close(self):
        if self.read_only:
            if getattr(self, "_fast", None):
                self._fast_conn.close()
            self.engine.dispose()
            return
        self.commit()
        self.db.close()
