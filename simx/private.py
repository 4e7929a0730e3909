"""Directories only this Unix user can enter, outside the run-time directory.

Some files cannot live under ``var/``: supervisord's socket when var/'s path is too long
for AF_UNIX (ops/paths.py), runweb's request-metrics files, which belong on memory so that
a full disk under var/ cannot reach them (runweb/request_metrics.py).  Such a directory
sits where other users can make names too ($XDG_RUNTIME_DIR is ours, but /tmp and
/dev/shm are everyone's), so one that belongs to another user, is a link, or lets
others in is refused: whoever made it could have planted the socket or the files.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class NotPrivate(Exception):
    """The directory cannot be made, or someone else could have put things in it."""


def runtime_base(env=None, fallback: str | None = None) -> Path:
    """$XDG_RUNTIME_DIR/simx when set, else <fallback or the temporary directory>/simx-UID."""
    env = os.environ if env is None else env
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "simx"
    return Path(fallback or tempfile.gettempdir()) / f"simx-{os.getuid()}"


def ensure(path: Path, what: str, hint: str = "remove it") -> Path:
    """Make `path` (mode 0700) if it is not there; refuse it unless it is this user's own
    directory that no one else may enter.  `what` says what it is for, `hint` what to do."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise NotPrivate(f"cannot make the private directory {path} for {what}: {exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise NotPrivate(f"{path} belongs to another user (uid {info.st_uid}) or is not a directory: it may be a "
                         f"trap for {what}; {hint}")
    if info.st_mode & 0o077:
        raise NotPrivate(f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}): it must be 0700 "
                         "(chmod 700 it, or remove it)")
    return path
