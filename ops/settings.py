"""The settings a start task applied, recorded under the run-time directory and reused.

`RUNQ_PORT=4949 fab local` records RUNQ_PORT=4949 in ``var/supervisor/applied.json``;
a later plain `fab local` or `fab local.status` merges that record with its own
environment, so it agrees with what runs instead of reverting it.  A variable set
to a different value wins, and is named in a note; set to "" it is dropped (back
to conf/simx.yaml).  A task touches only the programs it names: a setting that
only other programs use keeps its recorded value, with a one-line note (`fab local`
ignores a changed RUNWEB_PORT; `fab runweb.restart` applies it).  Values are not
shown for variables that may hold a secret.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .render import SETTINGS_ENV

_HIDDEN = ("TOKEN", "SECRET", "KEY", "DB_URL", "USERS")
_APPLIES = {"runq": "fab runq.restart", "runweb": "fab runweb.restart", "worker": "fab local"}  # by program


def shown(key: str, value: str) -> str:
    return "(hidden)" if any(h in key for h in _HIDDEN) else repr(value)


def load(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    env = raw.get("env") if isinstance(raw, dict) else None
    return {str(k): str(v) for k, v in env.items() if k in SETTINGS_ENV} if isinstance(env, dict) else {}


def merge(recorded: dict, env, keep=None) -> tuple[dict, list[str]]:
    """(settings to apply, notes on what differs from the record).  Pure.

    `keep`: settings only programs the task does not start use (render.used_only_by_others) -> those
    programs; a different value of one is noted and ignored: the task leaves them as they run."""
    keep = keep or {}
    out = dict(recorded)
    notes = []
    for key in SETTINGS_ENV:
        if key not in env:
            continue
        value = str(env[key])
        if key in keep and recorded.get(key, "") != value:
            programs = " and ".join(keep[key])
            notes.append(f"setting {key}={shown(key, value)} ignored: only {programs} use{'s' * (len(keep[key]) == 1)} "
                         f"it and this task does not start {programs} (`{_APPLIES[keep[key][0]]}` applies it)")
        elif value == "":
            if key in out:
                notes.append(f"setting {key} unset (was {shown(key, out.pop(key))}): applied to the programs using it")
        elif out.get(key) != value:
            if key in recorded:
                notes.append(f"setting {key} changed from {shown(key, recorded[key])} to {shown(key, value)}: "
                             f"applied to the programs using it")
            out[key] = value
    return out, notes


def effective_env(env, applied: dict) -> dict:
    """The environment to read conf with: the caller's, with the simx settings replaced by `applied`."""
    out = {k: v for k, v in env.items() if k not in SETTINGS_ENV}
    out.update(applied)
    return out


def save(path: Path, applied: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump({"env": dict(sorted(applied.items()))}, f, indent=1)
    tmp.replace(path)
