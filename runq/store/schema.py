"""The database's tables: columns (declared once, in simx/records.py), indexes, migrations.

Only the writer creates and migrates them (through ``dataset``); the reader reflects them.
JSON columns (type ``j``) hold JSON text, decoded when read.
"""
from __future__ import annotations

import json

import sqlalchemy as sa

from simx import records

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
    ("logins", ["key"], "logins_key", True),
]
JSON_COLUMNS = {name: [c for c, t in cols.items() if t == "j"] for name, cols in COLUMNS.items()}


def jdump(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def jload(text):
    return None if text is None else json.loads(text)


def decode(name: str, row: dict) -> dict:
    for col in JSON_COLUMNS[name]:
        if col in row:
            row[col] = jload(row[col])
    return row


def encode(name: str, row: dict) -> dict:
    out = dict(row)
    for col in JSON_COLUMNS[name]:
        if col in out:
            out[col] = jdump(out[col])
    return out


def ensure_tables(db) -> dict[str, sa.Table]:
    """Create what is missing (tables, columns with their backfill, indexes); the tables."""
    types = {"i": db.types.bigint, "f": db.types.float, "s": db.types.text, "j": db.types.text}
    out = {}
    for name, cols in COLUMNS.items():
        has_id = "id" in cols
        # Batches and workers get ids from runq; runs and attempts use an autoincrement
        # surrogate (INTEGER PRIMARY KEY, so SQLite makes it the rowid).
        table = db.create_table(name, primary_id="id", primary_type=db.types.bigint if has_id else db.types.integer,
                                primary_increment=not has_id)
        for col, kind in cols.items():
            if col != "id" and not table.has_column(col):
                table.create_column(col, types[kind])
                if (name, col) in BACKFILL:
                    column = table.table.c[col]
                    with db.engine.begin() as conn:
                        conn.execute(table.table.update().where(column.is_(None)).values({col: BACKFILL[(name, col)]}))
        for tname, icols, iname, unique in INDEXES:
            if tname == name and not table.has_index(icols):
                table.create_index(icols, name=iname, unique=unique)
        out[name] = table.table
    return out


def migrate(engine, tables: dict) -> None:
    """Bring rows written by older versions up to date (idempotent)."""
    b = tables["batches"]
    with engine.begin() as conn:
        # `failed` batch state (issue 8): a batch that ended with failed runs used to say `done`
        conn.execute(b.update().where(sa.and_(b.c.state == "done", b.c.n_failed > 0)).values(state="failed"))
        # owners (issue 6): batches stored before owners existed are owned by their `user` field
        conn.execute(b.update().where(b.c.owner.is_(None)).values(owner=b.c.user))
        # backfills (priority, version, ...): rows written before the column existed
        for (tname, col), value in BACKFILL.items():
            t = tables[tname]
            conn.execute(t.update().where(t.c[col].is_(None)).values({col: value}))


def reflect(engine) -> dict[str, sa.Table]:
    meta = sa.MetaData()
    return {name: sa.Table(name, meta, autoload_with=engine) for name in COLUMNS}
