"""Helpers the bench scripts share: the simx root on sys.path, free ports, polling."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PY = sys.executable

from simx import process  # noqa: E402
from simx.client import RunqUnavailable  # noqa: E402
from simx.process import free_port  # noqa: E402,F401  (the benches take it from here)


def runq_client(port: int, timeout: float = 30.0):
    """A RunqClient for the bench's runq on loopback, holding the client secret conf names
    (runq.client_secret_file / SIMX_CLIENT_SECRET_FILE), as runweb and fab do."""
    from simx import config
    from simx.client import RunqClient
    secret = RunqClient.from_config(config.load()).secret
    return RunqClient("127.0.0.1", port, timeout=timeout, secret=secret)


def stop_all(procs, timeout: float = 15.0) -> None:
    """TERM every process, then wait for each, killing those that do not exit in time."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_until(cond, timeout: float, what: str, interval: float = 0.02, retry_on=(OSError, RunqUnavailable)) -> None:
    """Poll cond() until true; exceptions in retry_on count as 'not yet'; TimeoutError after `timeout`."""
    process.wait_until(cond, timeout, interval, what, retry_on=retry_on, timed_out=TimeoutError)
