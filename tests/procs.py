"""Shared helpers for end-to-end tests: real runq, runweb and worker processes on loopback.

Every process runs its real entry point (`python -m runq|runweb|worker`) with
an environment that points it at a temporary directory: a fresh SQLite file,
SIMX_VAR, free ports.  Its output goes to a log file in that directory, which
failure messages quote.  Stop what you start in `finally` (`Proc.stop()`:
terminate, wait, kill), or use the fixtures in conftest.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from simx import localstack
# the suite takes these from here; the stack's processes start as the benchmarks start them
from simx.localstack import PYTHON, ROOT, Proc, secret_of, wait_ready  # noqa: F401
from simx.localstack import stack_env as base_env, write_secrets as make_secrets  # noqa: F401
from simx.process import free_port, wait_until  # noqa: F401

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


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m"):
    """A tmpfs of `size` mounted at `path` (the tests run as root), lazily unmounted at the end:
    a disk that `fill_disk` can fill in a moment."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory: Path) -> Path:
    """Write zeros to a new file in `directory` until its disk refuses more; unlink the file
    to free the space.  Unbuffered, so that closing it writes nothing more."""
    filler = Path(directory) / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


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
    args = ("--conf", str(write_conf(tmp, conf, f"{name}.yaml"))) if conf else ()
    return localstack.start_runq(tmp, lambda port: ping(port, env=env, tls=tls).get("status") == "ok", port, env,
                                 timeout, name, args, preexec_fn)


def start_runweb(tmp: Path, runq_port: int, port: int | None = None, env: dict | None = None,
                 workers: int = 2, healthy: bool = True, timeout: float = 20.0) -> Proc:
    """`python -m runweb` (gunicorn); returns once GET /health is 200 (or, not `healthy`, once it answers)."""
    def ready(url):
        status = http("GET", f"{url}/health")[0]
        return status == 200 if healthy else status > 0
    return localstack.start_runweb(tmp, runq_port, ready, port, env, workers, timeout)


def start_worker(tmp: Path, runq_port: int, engine: str = "dummy", env: dict | None = None,
                 name: str | None = None, args: tuple = (), **traits) -> Proc:
    """`python -m worker --engine E ...`; traits: group, user, cost, speed, priority; `args`: more flags.
    Does not wait."""
    argv = localstack.worker_args(engine, args, **traits)
    name = name or f"worker-{engine}-{free_port()}"
    return Proc(name, argv, env or base_env(tmp, runq_port), Path(tmp) / f"{name}.log")


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
