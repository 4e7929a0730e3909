"""`fab demo` / `make demo`: a whole stack in var/demo runs the example batch while you watch.

Starts runq, runweb and the `local` worker pools under a supervisord of their
own (run-time directory ``<var>/demo``, free loopback ports, so a stack the
user already runs is left alone), posts runweb/example/batch-req.yaml through
the HTTP API, prints a line whenever a run changes (state, progress, worker),
then the batch summary and the curl commands that reach the API.  Stops what it
started unless ``keep``.  Talks to runweb only over HTTP, as a user would.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from simx import config as simx_config, records
from simx.process import free_port

from . import hosts, secrets as ops_secrets
from .control import OpsError
from .render import RUNQ, RUNWEB, SETTINGS_ENV
from .stack import Stack

EXAMPLE = Path("runweb") / "example" / "batch-req.yaml"
TERMINAL = records.RUN_ENDED
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def demo_env(env, var: Path, runq_port: int, runweb_port: int) -> dict:
    """The environment of the demo stack: the caller's, minus simx settings, plus its own."""
    out = {k: v for k, v in env.items() if k not in SETTINGS_ENV}
    out.update(SIMX_VAR=str(var), RUNQ_HOST="127.0.0.1", RUNQ_PORT=str(runq_port), RUNQ_LISTEN="127.0.0.1",
               RUNWEB_PORT=str(runweb_port), RUNWEB_BIND="127.0.0.1",
               SIMX_DB_URL=f"sqlite:///{var / 'data' / 'runq.sqlite'}")
    return out


def request(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    """One JSON-answered HTTP request: (status, parsed body)."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Accept": "application/json"})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def wait_health(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if request("GET", f"{base}/health", timeout=2.0)[0] == 200:
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise OpsError(f"{base}/health did not answer 200 within {timeout:.0f} s")
        time.sleep(0.1)


def bar(progress, width: int = 20) -> str:
    frac = min(max(float(progress or 0), 0.0), 1.0)
    filled = int(round(frac * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}%"


def run_line(run: dict) -> str:
    """One run as a line: index, state, progress bar, worker."""
    progress = 1.0 if run.get("state") == "finished" else run.get("progress")
    worker = f"worker {run['worker_id']}" if run.get("worker_id") is not None else ""
    if worker and run.get("host"):
        worker += f" on {run['host']}"
    extra = f"  {run['error'] or run['message']}" if run.get("state") == "failed" else ""
    return f"  run {run['batch_index']:>3}  {run.get('state', '?'):<9} {bar(progress)}  {worker}{extra}".rstrip()


def watch(base: str, batch_id: int, timeout: float, out=print, interval: float = 0.2) -> dict:
    """Print a line per run change until the batch ends; return its last GET /batch/N reply."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        status, reply = request("GET", f"{base}/batch/{batch_id}")
        if status != 200:
            raise OpsError(f"GET /batch/{batch_id} answered {status}: {reply.get('message')}")
        for run in reply.get("runs", []):
            line = run_line(run)
            if seen.get(run["batch_index"]) != line:
                seen[run["batch_index"]] = line
                out(line)
        batch = reply.get("batch", {})
        if batch.get("state") in ("done", "failed", "cancelled"):
            return reply
        if time.monotonic() > deadline:
            raise OpsError(f"batch {batch_id} did not finish within {timeout:.0f} s (state {batch.get('state')})")
        time.sleep(interval)


def summary(reply: dict) -> list[str]:
    b = reply["batch"]
    workers = {r.get("worker_id") for r in reply.get("runs", []) if r.get("worker_id") is not None}
    return [
        f"batch {b['id']} ({b.get('name') or 'unnamed'}): {b['state']}, execution_time {b.get('execution_time')} s",
        f"  {b['n_runs']} runs: {b.get('n_finished', 0)} finished, {b.get('n_failed', 0)} failed, "
        f"{b.get('n_cancelled', 0)} cancelled; ran on {len(workers)} worker(s)",
    ]


def api_help(base: str, batch_id: int, user: str, worker_id: int = 1) -> list[str]:
    host = base.removeprefix("http://")
    return [f"The API (runweb) is at {base}; for example:"] + [f"  curl {host}{path}" for path in (
        "/", "/batch", f"/batch/{batch_id}", f"/batch/{batch_id}/run/0", "/workers", f"/user/{user or 'NAME'}",
        "/health", f"/batch/new --data-binary @{EXAMPLE}",
    )] + [f"  curl -X POST {host}/batch/{batch_id}/cancel", f"  curl -X POST {host}/worker/{worker_id}/drain",
          f"  curl -H 'Accept: application/json' {host}/batch/{batch_id}",
          f"and the command line:  .venv/bin/simx --url {base} show {batch_id}"]


def main(root: Path, env, keep: bool = False, timeout: float = 120.0, out=print) -> int:
    """Run the demo; 0 when the batch finished with every run finished."""
    var = simx_config.load(env=env, root=root).var / "demo"
    runq_port, runweb_port = free_port(), free_port()
    cfg = simx_config.load(env=demo_env(env, var, runq_port, runweb_port), root=root)
    made = ops_secrets.before_runq(cfg)   # private to this user, like every stack fab starts
    if made:
        out(made[0])
        cfg = simx_config.load(env=demo_env(env, var, runq_port, runweb_port), root=root)
    stack = Stack(cfg, hosts.load(root=root)["local"], demo_env(env, var, runq_port, runweb_port), out=out)
    base = f"http://127.0.0.1:{runweb_port}"
    out(f"simx demo: runq on 127.0.0.1:{runq_port}, runweb on {base}, files in {var}")
    code = 1
    try:
        stack.start([RUNQ, RUNWEB] + stack.pools)
        wait_health(base)
        status, reply = request("POST", f"{base}/batch/new", (root / EXAMPLE).read_bytes())
        if status not in (200, 201) or "batch_id" not in reply:
            raise OpsError(f"POST /batch/new answered {status}: {reply.get('message')}")
        out(f"posted {EXAMPLE} as batch {reply['batch_id']}; runs:")
        started = time.monotonic()
        final = watch(base, reply["batch_id"], timeout, out)
        out(f"finished in {time.monotonic() - started:.1f} s wall time")
        for line in summary(final):
            out(line)
        b = final["batch"]
        code = 0 if b["state"] == "done" and b.get("n_finished") == b["n_runs"] else 1
        ran = sorted(r["worker_id"] for r in final.get("runs", []) if r.get("worker_id") is not None)
        for line in api_help(base, reply["batch_id"], b.get("user", ""), ran[0] if ran else 1):
            out(line)
        if not keep:
            out("  (the demo stack stops now; `make demo KEEP=1` leaves it up to try these)")
    except (OpsError, OSError, ValueError, KeyError) as exc:
        out(f"demo failed: {exc}")
        out(f"logs: {stack.paths.log_dir}")
    finally:
        if keep:
            out(f"The demo stack keeps running. Stop it with:  SIMX_VAR={var} .venv/bin/fab shutdown")
            out(f"  (status: SIMX_VAR={var} .venv/bin/fab all.status)")
        else:
            out("stopping the demo stack")
            try:
                stack.shutdown()
            except OpsError as exc:
                out(f"could not stop the demo stack: {exc}")
                code = 1
    return code
