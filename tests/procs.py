"""Shared helpers for end-to-end tests: real runq, runweb and worker processes on loopback.

Every process runs its real entry point (`python -m runq|runweb|worker`) with
an environment that points it at a temporary directory: a fresh SQLite file,
SIMX_VAR, free ports.  Its output goes to a log file in that directory, which
failure messages quote.  Stop what you start in `finally` (`Proc.stop()`:
terminate, wait, kill), or use the fixtures in conftest.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from simx.process import free_port, wait_until  # noqa: F401  (the suite takes them from here)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Settings a test must never inherit from the shell that runs pytest.
SIMX_ENV = ("RUNQ_HOST", "RUNQ_PORT", "RUNQ_LISTEN", "SIMX_DB_URL", "SIMX_DB_SYNCHRONOUS", "RUNWEB_PAGE_CACHE", "SIMX_WORKER_TOKEN", "SIMX_LOG_LEVEL",
            "SIMX_VAR", "SIMX_HOSTS", "RUNWEB_PORT", "RUNWEB_BIND", "RUNWEB_USERS", "RUNQ_HEARTBEAT", "RUNQ_LEASE",
            "RUNQ_GRACE", "SIMX_WORKER_SECRET_FILE", "SIMX_CLIENT_SECRET_FILE", "SIMX_TLS_CERT", "SIMX_TLS_KEY",
            "SIMX_TLS_CA", "RUNWEB_TLS_CERT", "RUNWEB_TLS_KEY", "RUNWEB_WORKER_CLASS", "RUNWEB_THREADS",
            "RUNWEB_IO_TIMEOUT", "RUNWEB_BEHIND_PROXY", "SIMX_ENGINES", "SIMX_KNOWN_HOSTS", "SIMX_SSH_TIMEOUT",
            "SIMX_CACHE", "SIMX_ROOT", "SIMX_FILES_DIR")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy


def eventually(cond, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Whether `cond()` becomes true within `timeout` s (for `assert eventually(...)`, and
    `assert not eventually(...)` where something must not happen within a short while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


def shutdown_supervisord(var: Path, timeout: float = 30) -> None:
    """Stop a supervisord a test left under `var` (normal shutdown, else KILL its process group)."""
    from ops.control import Supervisor, read_pid
    from ops.paths import Paths
    from simx.process import alive
    sup = Supervisor(Paths(var))
    pid = read_pid(sup.paths.pid)
    if sup.running():
        try:
            sup.shutdown(timeout=timeout)
        except Exception:
            pass
    if pid and alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def base_env(tmp: Path, runq_port: int, **extra) -> dict:
    """The environment of a test process: no inherited simx settings, everything under `tmp`."""
    env = {k: v for k, v in os.environ.items() if k not in SIMX_ENV}
    env.update(
        RUNQ_HOST="127.0.0.1", RUNQ_PORT=str(runq_port), RUNQ_LISTEN="127.0.0.1",
        SIMX_DB_URL=f"sqlite:///{Path(tmp) / 'runq.sqlite'}", SIMX_VAR=str(Path(tmp) / "var"),
        RUNWEB_BIND="127.0.0.1", PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """One real subprocess with its output in a log file; `stop()` always leaves nothing behind."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path, cwd: Path = ROOT, preexec_fn=None):
        self.name, self.args, self.env, self.log_path = name, args, env, Path(log)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        # own process group: stop() also reaches children (gunicorn's workers)
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn)

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


def _wait_ready(proc: Proc, ready, timeout: float, what: str) -> Proc:
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


def make_secrets(tmp: Path) -> dict:
    """A worker and a client secret file under `tmp` (mode 0600): the env naming them, to pass to
    base_env(**...).  Processes started with it authenticate; `client(port, env)` does too."""
    from simx import auth
    out = {}
    for role in ("worker", "client"):
        path = Path(tmp) / "secrets" / f"{role}.secret"
        if not path.exists():
            auth.write_secret(path)
        out[f"SIMX_{role.upper()}_SECRET_FILE"] = str(path)
    return out


def secret_of(env: dict | None, role: str = "client") -> bytes | None:
    """The secret a process started with `env` would use for `role` (None without one)."""
    from simx import auth
    path = (env or {}).get(f"SIMX_{role.upper()}_SECRET_FILE")
    return auth.load_secret(path) if path else None


def client(port: int, env: dict | None = None, timeout: float = 5.0, host: str = "127.0.0.1", tls=None):
    """A RunqClient holding the client secret `env` names, if any (and TLS with a client context)."""
    from simx.client import RunqClient
    return RunqClient(host, port, timeout=timeout, secret=secret_of(env), tls=tls)


def ping(port: int, host: str = "127.0.0.1", env: dict | None = None, tls=None) -> dict:
    c = client(port, env, host=host, tls=tls)
    try:
        return c.request("Ping")
    finally:
        c.close()


def write_conf(tmp: Path, conf: dict, name: str = "simx.yaml") -> Path:
    """A conf file in `tmp` (e.g. {"runq": {"limits": {"frame_timeout": 1}}}) for `--conf`."""
    path = Path(tmp) / name
    path.write_text(yaml.safe_dump(conf), encoding="utf-8")
    return path


def start_runq(tmp: Path, port: int | None = None, env: dict | None = None, timeout: float = 15.0,
               name: str = "runq", conf: dict | None = None, tls=None, preexec_fn=None) -> Proc:
    """`python -m runq` on a free (or the given) port; returns once it answers Ping.

    `conf`: settings written to a conf file runq reads (limits, tls); `tls`: the client
    SSLContext the readiness Ping uses.
    """
    port = port or free_port()
    env = env or base_env(tmp, port)
    args = [PYTHON, "-m", "runq"]
    if conf:
        args += ["--conf", str(write_conf(tmp, conf, f"{name}.yaml"))]
    proc = Proc(name, args, env, Path(tmp) / f"{name}.log", preexec_fn=preexec_fn)
    proc.port = port
    return _wait_ready(proc, lambda: ping(port, env=env, tls=tls).get("status") == "ok", timeout,
                       f"runq to answer Ping on {port}")


def start_runweb(tmp: Path, runq_port: int, port: int | None = None, env: dict | None = None,
                 workers: int = 2, healthy: bool = True, timeout: float = 20.0) -> Proc:
    """`python -m runweb` (gunicorn); returns once GET /health is 200 (or, not `healthy`, once it answers)."""
    port = port or free_port()
    env = env or base_env(tmp, runq_port, RUNWEB_PORT=port)
    proc = Proc("runweb", [PYTHON, "-m", "runweb", "--port", str(port), "--bind", "127.0.0.1",
                           "--workers", str(workers)], env, Path(tmp) / "runweb.log")
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"

    def ready():
        status = http("GET", f"{proc.url}/health")[0]
        return status == 200 if healthy else status > 0
    return _wait_ready(proc, ready, timeout, f"runweb on {port} to answer /health")


def start_worker(tmp: Path, runq_port: int, engine: str = "dummy", env: dict | None = None,
                 name: str | None = None, args: tuple = (), **traits) -> Proc:
    """`python -m worker --engine E ...`; traits: group, user, cost, speed, priority; `args`: more flags.
    Does not wait."""
    traits = {"group": "", "user": "", "cost": 1, "speed": 1, "priority": 0, **traits}
    extra, args = args, [PYTHON, "-m", "worker", "--engine", engine]
    for key in ("group", "user", "cost", "speed", "priority"):
        args += [f"--{key}={traits.pop(key)}"]
    args += extra
    if traits:
        raise TypeError(f"unknown worker trait {sorted(traits)[0]!r}")
    name = name or f"worker-{engine}-{free_port()}"
    return Proc(name, args, env or base_env(tmp, runq_port), Path(tmp) / f"{name}.log")


def workers_connected(runq_port: int, env: dict | None = None) -> list[dict]:
    """Workers runq lists as connected now (`env`: the client secret it names, if any)."""
    c = client(runq_port, env)
    try:
        reply = c.request("WorkerList")
    finally:
        c.close()
    return [w for w in reply.get("workers", []) if w.get("connected")]


def _parse(content_type: str, data: bytes):
    if not data:
        return None
    text = data.decode("utf-8", errors="replace")
    try:
        if "json" in content_type:
            return json.loads(text)
        if "yaml" in content_type:
            return yaml.safe_load(text)
    except ValueError:
        pass
    return text


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 10.0):
    """One HTTP request: (status, headers with lower-case names, body parsed by its content type).

    `body` may be bytes, str, or a dict/list (sent as YAML).  An HTTP error status is returned,
    not raised; a connection failure raises OSError.
    """
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = yaml.safe_dump(body, allow_unicode=True, sort_keys=False)
        headers.setdefault("Content-Type", "application/yaml")
    if isinstance(body, str):
        body = body.encode("utf-8")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        resp = _opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        resp = exc
    with resp:
        data = resp.read()
        got = {k.lower(): v for k, v in resp.headers.items()}
        return resp.code, got, _parse(got.get("content-type", ""), data)
