"""Tasks over instances: the same verbs for `local`, a remote host, the server and `all`.

`Control` reads conf once (settings recorded by the last start task, overridden
by the environment), then acts on each instance: `local` through ops/stack.py
(rendered here, applied by the agent in-process), remote ones over SSH
(ops/remote.py).  Several instances are handled in parallel threads; a failure
is reported by name with its reason, the others proceed, and the exit status
is non-zero at the end.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import socket
import sys
import threading
import time

import invoke.exceptions
import paramiko

from simx import config as simx_config

from . import hosts, paths as ops_paths, probe, secrets as ops_secrets, settings
from .control import OpsError
from .hosts import Instance
from .paths import Paths
from .remote import Remote
from .render import RUNQ, RUNWEB, used_only_by_others
from .stack import Stack, status_rows

SERVER_GROUPS = [RUNQ, RUNWEB]
SETTLE = 60.0   # seconds `fab all` (and NAME, server) waits after its start for what it started to be up
# the reasons a host's task may fail (everything else is a bug and ends fab with a traceback):
# ours, a lost or timed-out SSH session, a refused or unreachable connection
HOST_ERRORS = (OpsError, simx_config.ConfigError, OSError, EOFError, paramiko.SSHException, invoke.exceptions.Failure)


@dataclasses.dataclass
class Report:
    name: str
    lines: list[str]
    ok: bool = True
    error: str = ""
    hostname: str = ""
    replacing: dict = dataclasses.field(default_factory=dict)  # a start's old workers of changed pools: pids


class Control:
    """The fleet as conf describes it, and the tasks over it."""

    def __init__(self, env=None, out=print, python: str = sys.executable, err=None):
        env = os.environ if env is None else env
        self.out, self.python = out, python
        self.err = err or (lambda line: print(line, file=sys.stderr, flush=True))
        self.root = ops_paths.root(env)
        var = simx_config.load(env=env, root=self.root).var
        self.caller_env, self.recorded = env, settings.load(Paths(var).applied)
        self.applied, self.notes = settings.merge(self.recorded, env)
        self.env = settings.effective_env(env, self.applied)
        self.config = simx_config.load(env=self.env, root=self.root)
        self.fleet = hosts.load_fleet(self.env.get("SIMX_HOSTS"), root=self.root, env=self.env)
        self.cache = ops_paths.cache_dir(env)
        self.fresh_secrets = False   # made by this task: worker pools are replaced at once, not drained
        self._print = threading.Lock()

    def prepare(self, groups) -> None:
        """Before a task starts `groups`: a setting only other programs use keeps its recorded value
        (noted), so the task restarts nothing it does not name; when runq is among them and no
        secret is configured, the default ones are made (ops/secrets.py), for every program."""
        self.applied, self.notes = settings.merge(self.recorded, self.caller_env, used_only_by_others(groups))
        self.env = settings.effective_env(self.caller_env, self.applied)
        self.config = simx_config.load(env=self.env, root=self.root)
        if RUNQ in groups and ops_secrets.missing(self.config):
            computing = ops_secrets.computing_workers(self.config, self.env)
            if computing:   # running work is never lost to a change of settings
                self.notes.append(ops_secrets.left_open(computing))
                return
            made = ops_secrets.ensure(self.config)
            if made:   # workers without them could no longer reach runq: they are replaced at once (all idle)
                self.notes.append(ops_secrets.ensured_note(made))
                self.config = simx_config.load(env=self.env, root=self.root)
                self.fresh_secrets = True

    # ------------------------------------------------------------------ which programs

    def instance(self, name: str) -> Instance:
        try:
            return self.fleet.instances[name]
        except KeyError:
            raise OpsError(f"no instance {name!r} in the hosts file") from None

    def pools(self, name: str) -> list[str]:
        return [p.program for p in self.instance(name).pools if p.count > 0]

    def groups(self, name: str, server: bool, pools: bool) -> list[str]:
        out = list(SERVER_GROUPS) if server and name == self.fleet.server else []
        return out + (self.pools(name) if pools else [])

    def address_notes(self, name: str) -> list[str]:
        """Warn when this instance's workers connect to an address runq does not listen on."""
        inst, runq = self.instance(name), self.config.runq
        host, port = inst.runq_host or runq.host, inst.runq_port or runq.port
        notes = []
        if port != runq.port:
            notes.append(f"warning: {name}'s workers connect to port {port}, runq listens on {runq.port}")
        if not inst.pools or any(a in ("0.0.0.0", "::", "") for a in runq.listen):
            return notes
        try:
            wanted = {i[4][0] for i in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
            listen = {i[4][0] for a in runq.listen for i in socket.getaddrinfo(a, port, proto=socket.IPPROTO_TCP)}
        except OSError as exc:
            return notes + [f"warning: cannot resolve {name}'s runq_host {host!r}: {exc}"]
        if not wanted & listen:
            notes.append(f"warning: {name}'s workers connect to {host}:{port}, but runq listens on "
                         f"{', '.join(runq.listen)} (runq.listen / RUNQ_LISTEN): add {host} there "
                         f"or change runq_host")
        return notes

    # ------------------------------------------------------------------ one instance

    def _stack(self, name: str, out) -> Stack:
        return Stack(self.config, self.instance(name), self.env, self.python, out=out,
                     serves=self.fleet.server == name)

    def act(self, name: str, action: str, groups: list[str], **kw) -> Report:
        """Do `action` on one instance; never raises for a host's failure (it is in the Report)."""
        lines: list[str] = []
        report = Report(name, lines)
        try:
            if self.instance(name).is_local:
                report.hostname, report.replacing = socket.gethostname(), \
                    self._local(name, action, groups, lines.append, **kw) or {}
            else:
                report.hostname, report.replacing = self._remote(name, action, groups, lines.append, **kw)
        except HOST_ERRORS as exc:
            report.ok, report.error = False, str(exc) or type(exc).__name__
        return report

    def _local(self, name, action, groups, out, **kw) -> dict | None:
        """-> a start's old workers of changed pools, which drain before their pool is replaced."""
        stack = self._stack(name, out)
        if action == "update":
            out("local: nothing to update (it runs from this directory)")
        elif action in ("start", "stop", "drain", "restart"):
            for note in self.notes:
                out(note)
            if action in ("start", "restart"):
                for note in self.address_notes(name):
                    out(note)
            if action in ("stop", "drain") and kw.get("pools"):  # also pools no longer in the hosts file
                groups = stack.worker_groups() + [g for g in groups if not g.startswith("worker-")]
            if action == "restart":
                stack.restart(groups, now=kw.get("now", False) or self.fresh_secrets, wait=kw.get("wait", False))
            elif action == "start":
                stack.start(groups, now=self.fresh_secrets)
            else:
                getattr(stack, action)(groups)
            return stack.agent.replacing
        elif action == "status":
            web = probe.answers(probe.web_url(self.config)) if RUNWEB in groups else None
            self._status_lines(name, stack.status(groups), stack.agent.status(groups) or {},
                               socket.gethostname(), out, kw.get("connected"), web)
        elif action == "logs":
            self._logs(stack.agent.logs([kw["process"]] if kw.get("process") else [], groups, kw["size"]), out)
        elif action == "shutdown":
            stack.shutdown()

    def _remote(self, name, action, groups, out, **kw) -> tuple[str, dict]:
        """-> the host's name and a start's old workers of changed pools (see _local)."""
        inst = self.instance(name)
        with Remote(inst, self.fleet.ssh) as remote:
            if action == "update":
                for note in self.notes + self.address_notes(name):
                    out(note)
                remote.update(self.config, self.env, self.fleet.server == name, self.root, self.cache, out)
                return "", {}
            flags = {k: v for k, v in kw.items() if k in ("now", "wait", "pools")}
            if action == "logs":
                flags = dict(name=kw.get("process"), size=kw["size"])
            if action == "status" and RUNWEB in groups:
                flags["web"] = probe.web_url(self.config)
            reply = remote.agent(action, groups, **flags)
        for note in reply.get("notes", []):
            out(note)
        if reply.get("error"):
            raise OpsError(reply["error"])
        hostname, replacing = reply.get("hostname", ""), reply.get("replacing") or {}
        if action == "logs":
            self._logs(reply.get("logs") or {}, out)
        if action in ("logs", "shutdown"):   # a shutdown's notes said what was stopped
            return hostname, {}
        known = reply.get("processes")  # None: supervisord is not running there
        configured = self.pools(name) + (SERVER_GROUPS if self.fleet.server == name else [])
        rows = status_rows(inst, groups, known, configured, adding=replacing.get("pools", []))
        if action == "status":
            self._status_lines(name, rows, known or {}, hostname, out, kw.get("connected"), reply.get("web"))
        else:
            for pname, state, description in rows:
                out(f"{pname:<24} {state:<9} {description}")
        return hostname, replacing.get("workers", {})

    @staticmethod
    def _logs(logs: dict, out) -> None:
        for name, text in logs.items():
            if len(logs) > 1:
                out(f"---- {name}")
            out(text.rstrip("\n"))

    def _status_lines(self, name, rows, known, hostname, out, connected, web=None) -> None:
        """One line per process; raise OpsError (the instance fails) unless all are up: runq and runweb
        (`web`: whether it answered) answer, workers are connected."""
        pids = {n.split(":")[1]: i.get("pid") for n, i in known.items()}
        down = []
        for pname, state, description in rows:
            line = f"{pname:<24} {state:<9} {description}"
            up = state == "RUNNING"
            if pname.startswith("worker-") and up:
                worker = (connected or {}).get((hostname, pids.get(pname)))
                if connected is None:
                    line += "  (runq did not answer)"
                    up = False
                elif worker is not None:
                    line += "  connected to runq" + (", draining" if worker.get("state") == "draining" else "")
                else:
                    line += "  NOT connected to runq"
                    up = False
            elif pname == RUNQ and up:
                line += "  answers" if connected is not None else "  NOT answering"
                up = connected is not None
            elif pname == RUNWEB and up and web is not None:
                line += f"  answers on {probe.web_url(self.config)}" if web else \
                    f"  NOT answering on {probe.web_url(self.config)}"
                up = bool(web)
            if not up:
                down.append(pname)
            out(line)
        if down:
            raise OpsError(f"not up: {', '.join(down)}")

    # ------------------------------------------------------------------ many instances

    def each(self, names, action: str, groups_of, header: bool | None = None, **kw) -> list[Report]:
        """Run `action` on each instance in parallel; print each report as it completes.  A status
        with `wait` seconds asks again (each half second) until every process is up, or the time is over."""
        header = len(names) > 1 if header is None else header
        if not names:
            return []
        wait = float(kw.pop("wait", 0) or 0) if action == "status" else 0.0
        if wait > 0:
            reports, _ = self.poll(names, lambda n, connected: groups_of(n), wait)
            for report in reports:
                self._show(report, header)
            return reports
        if action == "status" and "connected" not in kw:
            kw["connected"] = ops_secrets.connected_workers(self.config, self.env)
        return self._gather(names, action, groups_of, lambda r: self._show(r, header), **kw)

    def _gather(self, names, action: str, groups_of, done=None, **kw) -> list[Report]:
        """`action` on each instance in parallel threads; `done(report)` as each completes."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
            futures = {pool.submit(self.act, n, action, groups_of(n), **kw): n for n in names}
            reports = []
            for fut in concurrent.futures.as_completed(futures):
                reports.append(fut.result())
                if done:
                    done(reports[-1])
        return reports

    def poll(self, names, groups_of, wait: float, ready=None) -> tuple[list[Report], dict | None]:
        """Ask every instance's status (`groups_of(name, connected)`) each half second until all are up
        (and `ready(report, connected)`), `wait` s at most; the last reports and runq's workers."""
        deadline = time.monotonic() + wait
        while True:
            connected = ops_secrets.connected_workers(self.config, self.env)
            reports = self._gather(names, "status", lambda n: groups_of(n, connected), connected=connected)
            if all(r.ok and (ready is None or ready(r, connected)) for r in reports) \
                    or time.monotonic() >= deadline:
                return reports, connected
            time.sleep(0.5)

    def settle(self, started: list[Report], groups_of, wait: float) -> list[Report]:
        """After a start: wait until what it started is up (runq and runweb answer, every worker is
        connected to runq), `wait` s at most, and say so in one line per instance (or which is not).
        A changed pool is waited for once its old workers are gone; while one of them still holds a
        run, the pool is replaced after it (the start said so) and not waited for."""
        if not started:
            return []
        began, by_name = time.monotonic(), {r.name: r for r in started}

        def held(name, connected) -> set[str]:
            r = by_name[name]
            return {n.split(":")[0] for n, pid in r.replacing.items()
                    if ((connected or {}).get((r.hostname, pid)) or {}).get("batch_id") is not None}

        def old_ones(name, connected) -> list[str]:  # old workers of a changed pool still connected
            r, kept = by_name[name], held(name, connected)
            return sorted(n.split(":")[1] for n, pid in r.replacing.items()
                          if n.split(":")[0] not in kept and (r.hostname, pid) in (connected or {}))
        reports, connected = self.poll(list(by_name), lambda n, c: [g for g in groups_of(n) if g not in held(n, c)],
                                       wait, ready=lambda r, c: not old_ones(r.name, c))
        seconds = time.monotonic() - began
        for report in sorted(reports, key=lambda r: list(by_name).index(r.name)):
            old = old_ones(report.name, connected)
            if report.ok and old:
                report.ok, report.error = False, f"the old workers of a changed pool still run: {', '.join(old)}"
            if report.ok:
                names = [line.split()[0] for line in report.lines]
                workers = [n for n in names if n.startswith("worker-")]
                what = [n for n in names if n not in workers] + ([f"{len(workers)} worker(s)"] if workers else [])
                later = sorted(held(report.name, connected))
                report.lines = [f"up after {seconds:.1f} s: {', '.join(what) or 'nothing to wait for'}"
                                + (f"; replaced after their workers' runs: {', '.join(later)}" if later else "")]
            else:
                report.error = f"{report.error} ({wait:.0f} s after the start)"
            self._show(report, len(reports) > 1)
        return reports

    def _show(self, report: Report, header: bool) -> None:
        with self._print:
            if header:
                self.out(f"== {report.name}")
            for line in report.lines:
                self.out(line)
            if not report.ok:
                sys.stdout.flush()
                self.err(f"{report.name}: FAILED: {report.error}")

    def finish(self, reports: list[Report]) -> int:
        """Summary of the failures; the exit status."""
        failed = [r for r in reports if not r.ok]
        if failed and (len(reports) > 1):
            self.err("failed: " + "; ".join(f"{r.name} ({r.error.splitlines()[0] if r.error else '?'})"
                                            for r in failed))
        return 1 if failed else 0

    # ------------------------------------------------------------------ the task verbs

    def names(self, which: str) -> list[str]:
        return list(self.fleet.instances) if which == "all" else [which]

    def run(self, which: str, action: str, server: bool = True, pools: bool = True, **kw) -> int:
        """`which`: an instance name, "all" or "server"."""
        if which == "server":
            names, server, pools = [self.fleet.server], True, False
        else:
            names = self.names(which)
            server = server and which == "all"

        def groups_of(n):
            return self.groups(n, server, pools)
        if action in ("start", "restart"):
            self.prepare(sorted({g for n in names for g in groups_of(n)}))
        if action in ("stop", "drain") and pools:
            kw["pools"] = True
        reports: list[Report] = []
        if action in ("stop", "drain") and which == "all":  # workers first, the server after them
            reports += self.each(names, action, lambda n: self.groups(n, False, True), header=True, **kw)
            if action == "stop":
                reports += self.each([self.fleet.server], action, lambda n: SERVER_GROUPS, header=True)
        elif action == "shutdown" and which == "all":   # every host's supervisord, the server's last
            others = [n for n in names if n != self.fleet.server]
            reports += self.each(others, action, groups_of, header=True)
            reports += self.each([self.fleet.server], action, groups_of, header=True)
        elif action == "restart" and which == "all":  # the server first, then the pools
            reports += self.each([self.fleet.server], action, lambda n: SERVER_GROUPS, header=True, now=True)
            reports += self.each(names, action, lambda n: self.groups(n, False, True), header=True, **kw)
        else:
            settle = float(kw.pop("settle", SETTLE)) if action == "start" else 0.0
            reports += self.each(names, action, groups_of, header=which == "all" or None, **kw)
            if settle > 0:
                reports += self.settle([r for r in reports if r.ok], groups_of, settle)
        return self.finish(reports)

    def deploy(self, which: str, wait: float = SETTLE) -> int:
        """update, then start (`fab NAME`, `fab all`, `fab server`), then wait until it is up (`settle`)."""
        names = [self.fleet.server] if which == "server" else self.names(which)
        server = which in ("all", "server")
        self.prepare(sorted({g for n in names for g in self.groups(n, server, which != "server")}))
        updated = self.each(names, "update", lambda n: [], header=len(names) > 1)
        ok = [r.name for r in updated if r.ok]

        def groups_of(n):
            return self.groups(n, server, which != "server")
        started = self.each(ok, "start", groups_of, header=len(names) > 1)
        settled = self.settle([r for r in started if r.ok], groups_of, wait) if wait > 0 else []
        return self.finish(updated + started + settled)

    def programs(self, groups: list[str], action: str, **kw) -> int:
        """runq or runweb alone, on the server instance (`fab runq.start`, `fab runweb.restart`)."""
        if action in ("start", "restart"):
            self.prepare(groups)
        return self.finish(self.each([self.fleet.server], action, lambda n: groups, **kw))
