"""Where things are: the simx root, one supervisord's files, the control machine's cache.

``root()`` does not assume a source checkout: SIMX_ROOT wins, then the checkout
this package sits in (it holds conf/ or pyproject.toml), then the current directory
(an installed package run from a simx directory).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from simx import private

MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes
# supervisord's config templates: the top-level supervisor/ folder (no __init__.py, so it shadows
# nothing).  Rendering happens where fab runs (remote hosts get the rendered file), so they ship
# with the checkout or the SIMX_ROOT directory, as conf/ does.
TEMPLATES = Path(__file__).resolve().parent.parent / "supervisor"


def root(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get("SIMX_ROOT"):
        return Path(env["SIMX_ROOT"]).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "conf").is_dir() or (here / "pyproject.toml").is_file():
        return here
    return Path.cwd()


def cache_dir(env=None) -> Path:
    """The control machine's cache (wheelhouses): SIMX_CACHE, else $XDG_CACHE_HOME/simx, else ~/.cache/simx."""
    env = os.environ if env is None else env
    if env.get("SIMX_CACHE"):
        return Path(env["SIMX_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "simx"


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where one supervisord keeps its files: all under the run-time directory (0700)."""
    var: Path

    @property
    def conf(self) -> Path:
        return self.var / "supervisor" / "supervisord.conf"

    @property
    def pid(self) -> Path:
        return self.var / "supervisor" / "supervisord.pid"

    @property
    def applied(self) -> Path:
        """The settings the last start task applied (ops/settings.py)."""
        return self.var / "supervisor" / "applied.json"

    @property
    def log_dir(self) -> Path:
        return self.var / "log"

    @property
    def secrets(self) -> Path:
        return self.var / "secrets"

    @property
    def sock(self) -> Path:
        path = self.var / "supervisor" / "supervisord.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        # too long for AF_UNIX: a short name in a directory private to this user, one per run-time directory
        digest = hashlib.sha1(str(self.var).encode()).hexdigest()[:12]
        return private_dir() / f"supervisord-{digest}.sock"

    def make(self) -> None:
        """Create the run-time directories, private to this user (parents it creates too: var/ of
        var/demo; parents that exist are left as they are)."""
        old = os.umask(0o077)
        try:
            for d in (self.var, self.conf.parent, self.log_dir):
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o700)
        finally:
            os.umask(old)


def private_dir(env=None) -> Path:
    """A short directory only this user can enter, for sockets whose path var/ makes too long:
    $XDG_RUNTIME_DIR/simx, else <tmp>/simx-<uid>.  Made 0700; one that exists and belongs to
    another user, or that others may enter, is refused (someone could squat the socket's name)."""
    from .control import OpsError   # (control imports this module)
    try:
        return private.ensure(private.runtime_base(env), "supervisord's socket",
                              "remove it, or set SIMX_VAR to a shorter path")
    except private.NotPrivate as exc:
        raise OpsError(str(exc)) from None
