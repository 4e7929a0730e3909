"""Who may see and do what, and the hints a reply carries about it (pure)."""
from __future__ import annotations

from simx import sweep
from . import states


def who(msg) -> tuple[str | None, bool]:
    """(actor, admin) of a request; no actor = a holder of the client secret = admin."""
    actor = msg.get("actor")
    return actor, bool(msg.get("admin", actor is None))


def may_see(row: dict, msg: dict) -> bool:
    actor, admin = who(msg)
    return admin or row.get("owner") == actor


def run_param(batch_row: dict, index: int) -> dict:
    """The param run ``index`` of a stored batch gets: the batch's, with its sweep values set."""
    spec = batch_row.get("sweep")
    return sweep.param_for(batch_row["param"], spec, index) if spec else batch_row["param"]


def hints(reply: dict, msg: dict) -> dict:
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
