"""Small process and port helpers every program and the test and bench harnesses share."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone; another user's process as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # /proc/PID/stat is "pid (comm) STATE ..."; comm may hold ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float = 10.0, interval: float = 0.05, what: str = "condition",
               retry_on=(Exception,), timed_out=AssertionError):
    """Poll `cond()` until it returns a true value (returned); raise `timed_out` after `timeout` s.

    An exception in `retry_on` counts as "not yet" (a server that is not up refuses), except an
    AssertionError, which fails at once: assert inside `cond` for what must never happen.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError:
            raise
        except retry_on as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise timed_out(f"timed out after {timeout:.1f} s waiting for {what}{detail}")
        time.sleep(interval)
