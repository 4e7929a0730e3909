"""Stored rows -> the dicts the API shows (ISO-8601 UTC times, durations in seconds)."""
from __future__ import annotations

import datetime as dt

from . import states


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def batch(row: dict, now: float, served: bool | None = None) -> dict:
    """`served`: whether a connected worker matches the batch (None: not known here)."""
    end = row.get("end_time")
    return {
        "id": row["id"], "name": row["name"], "group": row["group"], "user": row["user"],
        "engine": row["engine"], "n_runs": row["n_runs"], "param": row["param"], "state": row["state"],
        "n_complete": row["n_finished"], "n_waiting": row["n_waiting"], "n_running": row["n_running"],
        "n_finished": row["n_finished"], "n_failed": row["n_failed"], "n_cancelled": row["n_cancelled"],
        "max_attempts": row["max_attempts"], "max_requeues": row["max_requeues"],
        "time_limit": row["time_limit"], "start_time": iso(row["start_time"]), "end_time": iso(end),
        "execution_time": None if end is None else round(end - row["start_time"], 3),
        "elapsed": round((end if end is not None else now) - row["start_time"], 3),
        "served": served,
        "sweep": row.get("sweep"),   # {sweep, zip} when the runs' params vary (runq/sweep.py), else null
    }


def run(row: dict) -> dict:
    return {
        "batch_id": row["batch_id"], "batch_index": row["batch_index"], "state": row["state"],
        "attempt": row["attempt"], "worker_id": row["worker_id"], "host": row["host"] or None,
        "progress": row["progress"], "message": row["message"], "result": row["result"],
        "error": row["error"], "started": iso(row["started"]), "ended": iso(row["ended"]),
    }


def implicit_run(batch_row: dict, index: int) -> dict:
    """A run that was never dispatched and has no row of its own."""
    state = states.CANCELLED if batch_row["state"] == states.BATCH_CANCELLED else states.WAITING
    return {
        "batch_id": batch_row["id"], "batch_index": index, "state": state, "attempt": 0,
        "worker_id": None, "host": None, "progress": 0.0, "message": None, "result": None,
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
        "id": row["id"], "host": row["host"], "ipaddr": row["ipaddr"], "pid": row["pid"],
        "group": row["group"], "user": row["user"], "engine": row["engine"], "cost": row["cost"],
        "speed": row["speed"], "priority": row["priority"], "state": state, "connected": connected,
        "batch_id": row["batch_id"], "batch_index": row["batch_index"],
        "started": iso(row["started"]), "last_contact": iso(row["last_contact"]),
    }
