"""The SQL store: the only module that writes the database (dataset + SQLAlchemy Core).

``SqlStore`` takes the core's writes by intent (runq/store/writes.py) and writes them in
``commit()``: one transaction, an executemany per statement and set of columns, statements
built once.  It creates and migrates the tables at open, knows the database's instance
(a uuid made with it), and gives the shell what it reads at start-up (``startup_reader``)
and the reader's ``ReadStore`` (``reader()``).  Any SQLAlchemy URL; SQLite in WAL mode.
"""
from __future__ import annotations

import logging
import operator
import sqlite3
import uuid

import dataset
import sqlalchemy as sa

from . import schema
from .read import ReadStore, read_engine
from .writes import Writes

log = logging.getLogger("runq.store")

# How long a commit waits for a lock another process holds before it gives up for this turn
# (runq's loop then answers what depends on no commit and tries again: runq/committer.py).
WRITER_BUSY_MS = 200


class StoreFault(Exception):
    """A commit the database refused for a reason outside runq (a full disk, a lock held by
    another process, the server gone): nothing of it was written; it may work later."""

    KINDS = {"full": 507, "locked": 503, "unavailable": 503}

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail, self.code = kind, detail, self.KINDS[kind]

    @classmethod
    def of(cls, exc: Exception) -> "StoreFault":
        text = str(getattr(exc, "orig", exc)) or exc.__class__.__name__
        low = text.lower()
        if "full" in low or "no space" in low or "disk i/o" in low or "quota" in low:
            return cls("full", text)
        if "locked" in low or "busy" in low:
            return cls("locked", text)
        return cls("unavailable", text)

    def describe(self) -> str:
        return {"full": "its disk is full", "locked": "another process holds a lock on it",
                "unavailable": "it cannot be written"}[self.kind] + f" ({self.detail})"


class SqlStore(Writes):
    def __init__(self, url: str, synchronous: str = "NORMAL"):
        """`synchronous`: SQLite's PRAGMA synchronous (NORMAL, FULL or EXTRA; runq.synchronous)."""
        sqlite = url.startswith("sqlite")
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.db = dataset.connect(
            url, sqlite_wal_mode=sqlite,
            on_connect_statements=[f"PRAGMA synchronous={synchronous}", f"PRAGMA busy_timeout={WRITER_BUSY_MS}"]
            if sqlite else None)
        self.engine = self.db.engine
        self.tables = schema.ensure_tables(self.db)
        schema.migrate(self.engine, self.tables)
        b, r, w = self.tables["batches"], self.tables["runs"], self.tables["workers"]
        self._ins = {n: t.insert() for n, t in self.tables.items() if n != "meta"}
        self._del_login = self.tables["logins"].delete().where(self.tables["logins"].c.key == sa.bindparam("_k"))
        self._upd = {
            "batches": b.update().where(b.c.id == sa.bindparam("_id")),
            "workers": w.update().where(w.c.id == sa.bindparam("_id")),
            "runs": r.update().where(sa.and_(r.c.batch_id == sa.bindparam("_b"),
                                             r.c.batch_index == sa.bindparam("_i"))),
        }
        self._bump = (b.update().where(b.c.id == sa.bindparam("_id"))
                      .values(version=b.c.version + sa.literal_column("1")))
        self._raw = sqlite and self.engine.dialect.paramstyle == "qmark"
        self._compiled: dict = {}
        self._purged: list[int] = []
        self._reset_buffer()

    def defer_checkpoints(self, pages: int) -> None:
        """SQLite: the writer checkpoints the WAL itself only past `pages` pages (another thread
        does it meanwhile: runq/checkpoint.py).  Applies to every connection from now on."""
        @sa.event.listens_for(self.engine, "connect")
        def _autocheckpoint(dbapi_conn, _record):
            dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
        self.engine.dispose()   # connections opened before get it too (they reopen)

    def reader(self) -> ReadStore:
        """A ReadStore over its own engine, sharing the table definitions."""
        return ReadStore(read_engine(self.engine.url), self.tables)

    def startup_reader(self) -> ReadStore:
        """Reads at start-up, before the loop, on the writer's engine."""
        return ReadStore(self.engine, self.tables)

    def instance(self) -> str:
        """This database's identity (a uuid made with it): workers tell a reset database by it."""
        m = self.tables["meta"]
        with self.engine.begin() as conn:
            value = conn.execute(sa.select(m.c.value).where(m.c.name == "instance")).scalar()
            if value is None:
                value = str(uuid.uuid4())
                conn.execute(m.insert(), {"name": "instance", "value": value})
        return value

    # ---- commit
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
                order = tuple(c.positiontup)
                pick = operator.itemgetter(*order) if len(order) > 1 else (lambda row: tuple(row[k] for k in order))
                compiled = self._compiled[(stmt, keys)] = (c.string, pick)
            sql, pick = compiled
            # the DBAPI cursor of this transaction's connection: no SQLAlchemy bookkeeping per call
            conn.connection.driver_connection.cursor().executemany(sql, list(map(pick, group)))

    def commit(self) -> None:
        """Write everything buffered in one transaction."""
        if not self.pending():
            return
        # the batches this commit changes: their rows, or runs of theirs (attempts come with a run)
        changed = set(self._dirty["batches"]) | {b for b, _ in self._dirty["runs"]}
        purged = []
        try:
            self._write(changed, purged)
        except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:   # the buffer stays: tried again
            raise StoreFault.of(exc) from exc
        self._purged += purged
        self._reset_buffer()
        self.commits += 1

    def _write(self, changed: set, purged: list) -> None:
        with self.engine.begin() as conn:
            for name, keyname in (("batches", "_id"), ("workers", "_id"), ("runs", None)):
                inserts, updates = [], {}
                for key, (row, new) in self._dirty[name].items():
                    row = schema.encode(name, row)
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
            if self._logins:   # replaced whole: a delete and an insert per changed key
                conn.execute(self._del_login, [{"_k": k} for k in self._logins])
                rows = [{"key": k, "times": schema.jdump(t)} for k, t in self._logins.items() if t is not None]
                if rows:
                    conn.execute(self._ins["logins"], rows)
            if changed:   # one executemany over the distinct batches, not one per run
                self._execute_many(conn, self._bump, [{"_id": b} for b in sorted(changed)])
            if self._purge_before is not None:
                purged += self._purge(conn, self._purge_before)

    def _purge(self, conn, before: float) -> list[int]:
        b, r, a, w = (self.tables[n] for n in ("batches", "runs", "attempts", "workers"))
        ids = [row[0] for row in conn.execute(
            sa.select(b.c.id).where(sa.and_(b.c.end_time.is_not(None), b.c.end_time < before)))]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            conn.execute(a.delete().where(a.c.batch_id.in_(chunk)))
            conn.execute(r.delete().where(r.c.batch_id.in_(chunk)))
            conn.execute(b.delete().where(b.c.id.in_(chunk)))
        gone = conn.execute(w.delete().where(sa.and_(
            w.c.last_contact < before, w.c.batch_id.is_(None), w.c.state.in_(("disconnected", "gone")))))
        if ids or gone.rowcount:
            log.info("purged %d batches and %d workers that ended before %.0f", len(ids), gone.rowcount, before)
        return ids

    def close(self) -> None:
        self.commit()
        self.db.close()
