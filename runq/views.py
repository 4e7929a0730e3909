"""Stored rows -> the dicts the API shows (ISO-8601 UTC times, durations in seconds).

Free text a worker sent (a run's message and error) is clipped to MAX_TEXT characters
here, so one chatty worker cannot make a listing page too large to send.
"""
from __future__ import annotations

import datetime as dt

from simx import limits, records

from .core import states

MAX_TEXT = limits.MAX_TEXT  # characters of a run's message or error shown (the full error stays in the database)

# A batch's view: the shown fields asked at submit (records.BATCH), as stored, then what runq adds
# (owner, state, counters, times).  A new asked field shows without an edit here.
BATCH_ASKED = tuple(f.name for f in records.BATCH.shown("submit")
                    if f.ask is not None and f.name not in ("priority", "sweep"))   # defaulted, shown last


# A worker's view starts with its traits (records.WORKER's asked fields): a new trait shows without an edit here.
WORKER_TRAITS = tuple(records.WORKER.asked())


def clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def batch(row: dict, now: float, served: bool | None = None) -> dict:
    """`served`: whether a connected worker matches the batch (None: not known here)."""
    end = row.get("end_time")
    return {
        "id": row["id"], **{name: row.get(name) for name in BATCH_ASKED},
        "owner": row.get("owner", row["user"]), "state": row["state"],
        "priority": row.get("priority") or 0,
        "n_complete": row["n_finished"], "n_waiting": row["n_waiting"], "n_running": row["n_running"],
        "n_finished": row["n_finished"], "n_failed": row["n_failed"], "n_cancelled": row["n_cancelled"],
        "start_time": iso(row["start_time"]), "end_time": iso(end),
        "execution_time": None if end is None else round(end - row["start_time"], 3),
        "elapsed": round((end if end is not None else now) - row["start_time"], 3),
        "served": served,
        "sweep": row.get("sweep"),   # {sweep, zip} when the runs' params vary (simx/sweep.py), else null
    }


def run(row: dict, address: str | None = None) -> dict:
    """`address`: the IP address runq sees the run's worker connect from (None when unknown)."""
    return {
        "batch_id": row["batch_id"], "batch_index": row["batch_index"], "state": row["state"],
        "attempt": row["attempt"], "worker_id": row["worker_id"], "host": row["host"] or None,
        "address": address or None,
        "progress": row["progress"], "message": clip(row["message"]), "result": row["result"],
        "error": clip(row["error"]), "started": iso(row["started"]), "ended": iso(row["ended"]),
    }


def implicit_run(batch_row: dict, index: int) -> dict:
    """A run that was never dispatched and has no row of its own."""
    state = states.CANCELLED if batch_row["state"] == states.BATCH_CANCELLED else states.WAITING
    return {
        "batch_id": batch_row["id"], "batch_index": index, "state": state, "attempt": 0,
        "worker_id": None, "host": None, "address": None, "progress": 0.0, "message": None, "result": None,
        "error": None, "started": None, "ended": None,
    }


def attempt(row: dict) -> dict:
    return {
        "attempt": row["attempt"], "worker_id": row["worker_id"], "host": row["host"] or None,
        "started": iso(row["started"]), "ended": iso(row["ended"]), "outcome": row["outcome"],
        "message": row["message"],
    }


def worker(row: dict, connected: bool, state: str) -> dict:
    return {
        "id": row["id"], **{name: row[name] for name in WORKER_TRAITS}, "ipaddr": row["ipaddr"],
        "state": state, "connected": connected,
        "batch_id": row["batch_id"], "batch_index": row["batch_index"],
        "started": iso(row["started"]), "last_contact": iso(row["last_contact"]),
    }
