"""Graceful restart of worker pools: drain each worker, start it again as soon as it exits.

A drained worker finishes its run and exits 0 (supervisor state EXITED); this
loop then starts it again.  A pool whose config changed is loaded anew once all
its drained workers are down.  A worker someone stopped meanwhile (STOPPED) or
that supervisor already restarted is left alone.  `fab NAME.restart` runs this
detached (``python -m ops.restarter``) and returns; ``--wait`` runs it in the
foreground.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .control import RPC_ERRORS, OpsError, Supervisor
from .paths import Paths

log = logging.getLogger("ops.restarter")
UP = ("RUNNING", "STARTING", "BACKOFF")


def begin(sup: Supervisor, groups, replace=()) -> dict[str, int]:
    """Ask the running workers of `groups` to drain; start the others now.  -> {process: pid} to wait for."""
    procs = sup.processes()
    pending = {n: i["pid"] for n, i in procs.items() if i["group"] in groups and i["statename"] in UP}
    for g in groups:
        if not any(n.split(":")[0] == g for n in pending):  # nothing runs: nothing to drain
            if g in replace:
                sup.replace_group(g)
            sup.start(g)
    for g in {n.split(":")[0] for n in pending}:
        sup.signal(g, "USR1")
    return pending


def step(sup: Supervisor, pending: dict[str, int], replace, started: list | None = None) -> dict[str, int]:
    """One look: start the workers that exited; return those still to wait for."""
    procs = sup.processes()
    left = {}
    exited = []
    for name, pid in pending.items():
        info = procs.get(name)
        if info is None or info["statename"] in ("STOPPED", "FATAL") or (
                info["statename"] in UP and info["pid"] not in (0, pid)):
            continue  # stopped by someone, gone, or restarted already: not ours any more
        if info["statename"] == "EXITED":
            exited.append(name)
        else:
            left[name] = pid
    for name in exited:
        group = name.split(":")[0]
        if group in replace:
            if any(n.split(":")[0] == group for n in left):
                left[name] = pending[name]  # wait until the whole pool is down, then load it anew
                continue
            sup.replace_group(group)
            sup.start(group)
            replace = [g for g in replace if g != group]
        else:
            sup.start_process(name)
        if started is not None:
            started.append(name)
    return left


def run(sup: Supervisor, pending: dict[str, int], replace=(), interval: float = 0.2, sleep=time.sleep,
        until_running: bool = False, timeout: float = 60.0) -> None:
    """Until every pending worker was started again; `until_running`: and is RUNNING (--wait)."""
    replace = list(replace)
    started: list[str] = []
    while pending:
        pending = step(sup, pending, replace, started)
        replace = [g for g in replace if any(n.split(":")[0] == g for n in pending)]
        if pending:
            sleep(interval)
    deadline = time.monotonic() + timeout
    while until_running and started:
        procs = sup.processes()
        started = [n for n in started if n in procs and procs[n]["statename"] in ("STARTING", "BACKOFF")]
        if started and time.monotonic() > deadline:
            raise OpsError(f"not RUNNING {timeout:.0f} s after their start: {', '.join(started)}")
        if started:
            sleep(interval)


def detach(paths: Paths, pending: dict[str, int], replace=(), python: str = sys.executable) -> None:
    """Run the loop in a process of its own, so the task (and its SSH session) can return."""
    paths.make()
    log_file = os.open(paths.log_dir / "restarter.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    args = [python, "-m", "ops.restarter", "--var", str(paths.var)]
    args += [f"--replace={g}" for g in replace] + [f"{n}={pid}" for n, pid in pending.items()]
    subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
                     cwd=str(Path(__file__).resolve().parent.parent), close_fds=True)
    os.close(log_file)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.restarter", description=__doc__.splitlines()[0])
    p.add_argument("--var", required=True)
    p.add_argument("--replace", action="append", default=[])
    p.add_argument("pending", nargs="*", help="group:process=pid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s restarter %(message)s")
    pending = {n: int(pid) for n, _, pid in (a.rpartition("=") for a in args.pending)}
    log.info("waiting for %d worker(s) to drain: %s", len(pending), ", ".join(pending))
    try:
        run(Supervisor(Paths(Path(args.var))), pending, args.replace)
    except (OpsError, *RPC_ERRORS) as exc:
        log.error("gave up: %s", exc)
        return 1
    log.info("every drained worker was started again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
