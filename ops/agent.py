"""What a host does to its own supervisord: the same code for `local` and, over SSH, for remote hosts.

`Agent` acts on the supervisord of one run-time directory whose config is
already written (rendered by the control machine).  Remote tasks run
``<dir>/venv/bin/python -m ops.agent --var <dir>/var ACTION ...`` over SSH; it
prints one JSON object (notes, process rows, hostname, error) as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from . import probe, restarter
from .control import RPC_ERRORS, OpsError, Supervisor
from .paths import Paths
from .render import RUNQ, RUNWEB, SETTINGS_ENV, WORKER_PREFIX, stop_order

ACTIONS = ("up", "start", "stop", "restart", "drain", "status", "logs", "shutdown", "info")


def is_pool(group: str) -> bool:
    return group.startswith(WORKER_PREFIX)


class Agent:
    """Start, stop, drain, restart and show program groups of one supervisord."""

    def __init__(self, paths: Paths, python: str = sys.executable, env=None):
        self.paths, self.python = paths, python
        self.env = os.environ if env is None else env
        self.sup = Supervisor(paths, python)
        self.notes: list[str] = []
        self.replacing: dict[str, int] = {}  # workers of changed pools draining before their pool is replaced
        self.deferred: list[str] = []        # those pools: their new processes are added after the drain
        self.draining: dict[str, tuple[int, str]] = {}  # process -> (pid, what then) of workers told to drain

    def up(self, detach: bool = True, drain: bool = True) -> list[str]:
        """Start supervisord on the written config, or apply what changed; changed pools drain first
        (their replacement runs detached, or, not `detach`, is left in `self.replacing` for the caller);
        not `drain`: they are stopped and replaced at once."""
        if not self.paths.conf.exists():
            raise OpsError(f"no supervisord config at {self.paths.conf}: run the update task first")
        if not self.sup.running():
            self.notes.append(f"supervisord: starting ({self.paths.conf})")
            self.sup.launch({k: v for k, v in self.env.items() if k not in SETTINGS_ENV + ("SIMX_VAR",)})
            return []
        notes, deferred = self.sup.apply(keep_running=self.sup.worker_groups() if drain else ())
        self.notes += [f"supervisord: config {n}" for n in notes]
        self.deferred = deferred
        if deferred:
            self.replacing = restarter.begin(self.sup, deferred, replace=deferred)
            self._draining(self.replacing, "replaced by its changed pool after its run")
            if detach:
                restarter.detach(self.paths, self.replacing, replace=deferred, python=self.python)
        return deferred

    def start(self, groups, now: bool = False) -> None:
        deferred = self.up(drain=not now)
        for g in reversed(stop_order(groups)):  # runq before runweb before workers
            if g not in deferred:
                self.sup.start(g)

    def with_pools(self, groups) -> list[str]:
        """`groups` and every worker pool supervisord runs (also pools no longer configured)."""
        loaded = self.sup.worker_groups() if self.sup.running() else []
        return sorted(set(groups) | set(loaded))

    def stop(self, groups) -> None:
        if not self.sup.running():
            self.notes.append(f"supervisord is not running ({self.paths.sock}): nothing to stop")
            return
        for g in stop_order(groups):
            self.sup.stop(g)

    def drain(self, groups) -> None:
        """Ask workers to finish their current run and exit 0 (supervisor leaves them down)."""
        if self.sup.running():
            pools = [g for g in groups if is_pool(g)]
            self._draining({n: i["pid"] for n, i in self.sup.processes().items()
                            if i["group"] in pools and i["statename"] in restarter.UP}, "exits after its run")
            for g in pools:
                self.sup.signal(g, "USR1")

    def restart(self, groups, now: bool = False, wait: bool = False) -> None:
        """Servers: stop and start.  Pools: drain and start each worker as it exits (graceful);
        `now` stops them at once (their runs go back to the queue); `wait` returns when all are back."""
        if not self.sup.running():
            return self.start(groups)
        servers = [g for g in groups if not is_pool(g)]
        pools = [g for g in groups if is_pool(g)]
        if now:
            for g in stop_order(groups):
                self.sup.stop(g)
            return self.start(groups)
        for g in stop_order(servers):
            self.sup.stop(g)
        deferred = self.up(detach=not wait)
        for g in reversed(stop_order(servers)):
            self.sup.start(g)
        pending = restarter.begin(self.sup, [g for g in pools if g not in deferred])
        self._draining(pending, "starts again after its run")
        if pending or self.replacing:
            self.notes.append(f"draining {len(pending) + len(self.replacing)} worker(s); "
                              f"each starts again as soon as it exits")
        if wait:
            restarter.run(self.sup, {**pending, **self.replacing}, replace=deferred, until_running=True)
        elif pending:
            restarter.detach(self.paths, pending, python=self.python)

    def _draining(self, pids: dict[str, int], then: str) -> None:
        self.draining.update({n: (pid, then) for n, pid in pids.items()})

    def status(self, groups) -> dict[str, dict] | None:
        """`group:name` -> {statename, pid, description} of the processes of `groups`; None: no supervisord.
        A worker this agent told to drain, still running, is DRAINING (and says what comes after)."""
        if not self.sup.running():
            return None
        out = {}
        for n, i in self.sup.processes().items():
            if i["group"] in groups:
                pid, then = self.draining.get(n, (None, ""))
                draining = pid == i["pid"] and i["statename"] in restarter.UP
                out[n] = {"statename": "DRAINING" if draining else i["statename"], "pid": i["pid"],
                          "description": f"{i['description']}; {then}" if draining else i["description"]}
        return out

    def logs(self, names, groups, size: int) -> dict[str, str]:
        """The end of each named process's log (`names`; else every process of `groups`), via supervisord."""
        if not self.sup.running():
            raise OpsError(f"supervisord is not running ({self.paths.sock})")
        names = list(names) or sorted(n for n, i in self.sup.processes().items() if i["group"] in groups)
        return {n: self.sup.log(n, size) for n in names}

    def shutdown(self) -> None:
        """Stop the workers, then runweb, then runq, then supervisord itself."""
        if not self.sup.running():
            self.notes.append("supervisord is not running")
            return
        for g in stop_order(set(self.sup.groups()) | {RUNWEB, RUNQ}):
            self.sup.stop(g)
        self.sup.shutdown()
        self.notes.append("supervisord: shut down")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.agent", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("groups", nargs="*")
    p.add_argument("--var", required=True)
    p.add_argument("--now", action="store_true")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--pools", action="store_true", help="stop/drain: also every worker pool it runs")
    p.add_argument("--name", default="")
    p.add_argument("--size", type=int, default=4000)
    p.add_argument("--web", default="", help="status: also whether runweb answers at this URL")
    args = p.parse_args(argv)
    agent = Agent(Paths(Path(args.var)))
    reply = {"hostname": socket.gethostname(), "python": sys.executable, "error": None}
    try:
        if args.action == "restart":
            agent.restart(args.groups, now=args.now, wait=args.wait)
        elif args.action in ("start", "stop", "drain"):
            groups = agent.with_pools(args.groups) if args.pools else args.groups
            getattr(agent, args.action)(groups)
        elif args.action in ("up", "shutdown"):
            getattr(agent, args.action)()
        elif args.action == "logs":
            reply["logs"] = agent.logs([args.name] if args.name else [], args.groups, args.size)
        if args.action not in ("logs", "shutdown"):
            reply["processes"] = agent.status(args.groups)
            reply["replacing"] = {"pools": agent.deferred, "workers": agent.replacing}
        if args.web and RUNWEB in args.groups:
            reply["web"] = probe.answers(args.web)
    except (OpsError, *RPC_ERRORS) as exc:
        reply["error"] = str(exc)
    reply["notes"] = agent.notes
    print(json.dumps(reply))
    return 0 if reply["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
