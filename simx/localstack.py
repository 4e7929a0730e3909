"""A simx stack as real processes on loopback, in one directory: what the test suite and the
benchmarks start (``tests/procs.py``, ``bench/stack.py``), so that both start it one way.

Each process is its real entry point (``python -m runq|runweb|worker``) with an environment
that points it at the directory: a fresh SQLite file, SIMX_VAR, free ports, no simx setting
inherited from the caller's shell.  Its output goes to a log file there, which failure messages
quote.  ``Proc.stop()`` leaves nothing behind (TERM, wait, KILL the process group).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from . import auth
from .process import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent   # the checkout: conf/ and the programs' working directory
PYTHON = sys.executable
# the environment's simx settings (simx/config.py ENV, and ops' SIMX_ROOT, SIMX_HOSTS, ...): never inherited
PREFIXES = ("SIMX_", "RUNQ_", "RUNWEB_")


def stack_env(tmp: Path, runq_port: int, **extra) -> dict:
    """The environment of a stack's process: no inherited simx settings, everything under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
    env.update(
        RUNQ_HOST="127.0.0.1", RUNQ_PORT=str(runq_port), RUNQ_LISTEN="127.0.0.1",
        SIMX_DB_URL=f"sqlite:///{Path(tmp) / 'runq.sqlite'}", SIMX_VAR=str(Path(tmp) / "var"),
        RUNWEB_BIND="127.0.0.1", PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_secrets(tmp: Path) -> dict:
    """A worker and a client secret file under `tmp` (mode 0600, as ``fab runq.secrets`` makes
    them): the environment naming them.  Processes started with it authenticate."""
    out = {}
    for role in ("worker", "client"):
        path = Path(tmp) / "secrets" / f"{role}.secret"
        if not path.exists():
            auth.write_secret(path)
        out[f"SIMX_{role.upper()}_SECRET_FILE"] = str(path)
    return out


def secret_of(env: dict | None, role: str = "client") -> bytes | None:
    """The secret a process started with `env` would use for `role` (None without one): the file
    env names, else the one fab makes under SIMX_VAR when it is there (simx.config.default_secrets)."""
    env = env or {}
    path = env.get(f"SIMX_{role.upper()}_SECRET_FILE")
    if not path and env.get("SIMX_VAR"):
        default = Path(env["SIMX_VAR"]) / "secrets" / f"{role}.secret"
        path = default if default.exists() else None
    return auth.load_secret(path) if path else None


class Proc:
    """One real subprocess with its output in a log file; `stop()` always leaves nothing behind."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path, cwd: Path = ROOT, preexec_fn=None,
                 stdout_too: bool = True):
        """`stdout_too`: False sends standard output nowhere (runweb's access log under load)."""
        self.name, self.args, self.env, self.log_path = name, args, env, Path(log)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        # own process group: stop() also reaches children (gunicorn's workers)
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=self._log if stdout_too else subprocess.DEVNULL,
                                      stderr=self._log, start_new_session=True, preexec_fn=preexec_fn)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """TERM, wait up to `timeout`, then KILL the whole process group."""
        try:
            if self.alive():
                self._group_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._group_signal(signal.SIGKILL)  # stragglers of the group, if any
            return self.popen.wait(timeout)
        finally:
            self._log.close()

    def _group_signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} alive={self.alive()}>"

    def describe(self) -> str:
        """For assertion messages: the command and the end of its log."""
        return f"{self.name} ({' '.join(self.args)}), log {self.log_path}:\n{self.log()[-3000:]}"


def wait_ready(proc: Proc, ready, timeout: float, what: str) -> Proc:
    """Wait until ready() is true; if `proc` exits or the time runs out: stop it and say why, with its log."""
    def check():
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}\n{proc.describe()}")
        return ready()
    try:
        wait_until(check, timeout, what=what)
    except AssertionError as exc:
        proc.stop()
        if "exited with" in str(exc):
            raise
        raise AssertionError(f"{exc}\n{proc.describe()}") from None
    return proc


def start_runq(tmp: Path, ready, port: int | None = None, env: dict | None = None, timeout: float = 15.0,
               name: str = "runq", args: tuple = (), preexec_fn=None) -> Proc:
    """`python -m runq` on a free (or the given) port; returns once ready(port) is true."""
    port = port or free_port()
    env = env or stack_env(tmp, port)
    proc = Proc(name, [PYTHON, "-m", "runq", *args], env, Path(tmp) / f"{name}.log", preexec_fn=preexec_fn)
    proc.port = port
    return wait_ready(proc, lambda: ready(port), timeout, f"runq to answer Ping on {port}")


def start_runweb(tmp: Path, runq_port: int, ready, port: int | None = None, env: dict | None = None,
                 workers: int | None = 2, timeout: float = 20.0, access_log: bool = True) -> Proc:
    """`python -m runweb` (gunicorn) on a free (or the given) port; returns once ready(url) is true.
    `access_log`: False drops gunicorn's access log (its standard output)."""
    port = port or free_port()
    env = env or stack_env(tmp, runq_port, RUNWEB_PORT=port)
    args = [PYTHON, "-m", "runweb", "--port", str(port), "--bind", "127.0.0.1"]
    if workers:
        args += ["--workers", str(workers)]
    proc = Proc("runweb", args, env, Path(tmp) / "runweb.log", stdout_too=access_log)
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    return wait_ready(proc, lambda: ready(proc.url), timeout, f"runweb on {port} to answer /health")


def worker_args(engine: str = "dummy", args: tuple = (), **traits) -> list[str]:
    """`python -m worker --engine E --group= ...`; traits: group, user, cost, speed, priority."""
    traits = {"group": "", "user": "", "cost": 1, "speed": 1, "priority": 0, **traits}
    out = [PYTHON, "-m", "worker", "--engine", engine]
    for key in ("group", "user", "cost", "speed", "priority"):
        out += [f"--{key}={traits.pop(key)}"]
    if traits:
        raise TypeError(f"unknown worker trait {sorted(traits)[0]!r}")
    return out + list(args)
