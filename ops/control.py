"""One supervisord, controlled over XML-RPC on its unix socket (the same code on every host).

Nothing here renders config: `Supervisor` starts supervisord on a config file that
is already written, applies a changed file like ``supervisorctl update``, starts,
stops and signals program groups, and reads program logs through supervisord's
log tail.
"""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import Faults, SupervisorTransport, getFaultDescription

from simx.process import alive

from .paths import Paths
from .render import WORKER_PREFIX, stop_order

RPC_ERRORS = (OSError, xmlrpc.client.Error, http.client.HTTPException)


class OpsError(Exception):
    """An operation that could not be done; the message says what and where to look."""


class Supervisor:
    """One supervisord, reached over its unix socket; started on demand."""

    def __init__(self, paths: Paths, python: str = sys.executable, start_timeout: float = 15.0):
        self.paths, self.python, self.start_timeout = paths, python, start_timeout

    @property
    def rpc(self):
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.paths.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except RPC_ERRORS:
            return False

    def launch(self, env) -> None:
        """Start supervisord (it daemonizes) and wait until it answers."""
        self.paths.make()
        log = self.paths.log_dir / "supervisord.start.log"
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            rc = subprocess.call([self.python, "-m", "supervisor.supervisord", "-c", str(self.paths.conf)],
                                 env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 umask=0o077)  # its own log is opened before its umask= applies
        deadline = time.monotonic() + self.start_timeout
        while rc == 0 and not self.running():
            if time.monotonic() > deadline:
                rc = None
                break
            time.sleep(0.05)
        if rc != 0:
            raise OpsError(f"supervisord did not start (exit {rc}): {file_tail(log)}"
                           f"{file_tail(self.paths.log_dir / 'supervisord.log')}")

    def changes(self) -> tuple[list[str], list[str], list[str]]:
        """Load the config file anew: (added, changed, removed) program groups."""
        added, changed, removed = self.rpc.reloadConfig()[0]
        return added, changed, removed

    def apply(self, keep_running=()) -> tuple[list[str], list[str]]:
        """Apply the reloaded config like `supervisorctl update`; say what changed.

        Groups in `keep_running` (worker pools with a changed config) are left
        alone: the caller replaces them gracefully (ops/restarter.py).  -> (notes, those groups)
        """
        rpc = self.rpc
        added, changed, removed = self.changes()
        active = {i["group"] for i in self.processes().values()
                  if i["statename"] in ("RUNNING", "STARTING", "BACKOFF")}
        deferred = [g for g in changed if g in keep_running and g in active]
        changed_now = [g for g in changed if g not in deferred]
        for g in stop_order(removed + changed_now):  # workers first: they report to runq as they stop
            self.stop(g)
            rpc.removeProcessGroup(g)
        for g in changed_now + added:
            rpc.addProcessGroup(g)
        for g in reversed(stop_order(changed_now)):  # a running group is restarted with its new settings
            if g in active:
                self.start(g)
        notes = [f"{what}: {', '.join(gs)}" for what, gs in
                 (("added", added), ("changed (restarted if running)", changed_now), ("removed", removed)) if gs]
        if deferred:
            notes.append(f"changed, replaced as each worker finishes its run: {', '.join(deferred)}")
        return notes, deferred

    def replace_group(self, group: str) -> None:
        """Load a stopped group's new config (after a graceful drain)."""
        self.stop(group)
        try:
            self.rpc.removeProcessGroup(group)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != Faults.BAD_NAME:
                raise
        self.rpc.addProcessGroup(group)

    def processes(self) -> dict[str, dict]:
        """`group:name` -> supervisor's process info (statename, pid, description, exitstatus ...)."""
        return {f"{i['group']}:{i['name']}": i for i in self.rpc.getAllProcessInfo()}

    def groups(self) -> list[str]:
        return sorted({i["group"] for i in self.processes().values()})

    def worker_groups(self) -> list[str]:
        return [g for g in self.groups() if g.startswith(WORKER_PREFIX)]

    def start(self, group: str) -> None:
        failed = [r for r in self.rpc.startProcessGroup(group, True) if r["status"] != Faults.SUCCESS]
        if failed:
            names = ", ".join(f"{r['group']}:{r['name']}" for r in failed)
            why = getFaultDescription(failed[0]["status"]).lower().replace("_", " ")
            raise OpsError(f"{names} did not start ({why}); {failed[0]['name']}'s log ends:\n"
                           f"{self.log(failed[0]['group'] + ':' + failed[0]['name'])}")

    def start_process(self, name: str) -> None:
        try:
            self.rpc.startProcess(name, False)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != Faults.ALREADY_STARTED:
                raise

    def stop(self, group: str) -> None:
        self._each(self.rpc.stopProcessGroup, group, True)

    def signal(self, group: str, sig: str) -> None:
        self._each(self.rpc.signalProcessGroup, group, sig)

    def log(self, name: str, size: int = 1500) -> str:
        """The end of a program's log, through supervisord (works the same over SSH)."""
        try:
            text, _, _ = self.rpc.tailProcessStdoutLog(name, 0, size)
            return text
        except RPC_ERRORS as exc:
            return f"(no log for {name}: {exc})"

    @staticmethod
    def _each(method, group, arg) -> None:
        try:
            method(group, arg)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != Faults.BAD_NAME:  # a group supervisord does not have: nothing to do
                raise

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop supervisord (it stops its programs first) and wait until it is gone."""
        pid = read_pid(self.paths.pid)
        try:
            self.rpc.shutdown()
        except RPC_ERRORS:
            return
        deadline = time.monotonic() + timeout
        while self.running() or (pid and alive(pid)):
            if time.monotonic() > deadline:
                raise OpsError(f"supervisord (pid {pid}) still runs {timeout:.0f} s after shutdown")
            time.sleep(0.05)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def file_tail(path: Path, size: int = 1500) -> str:
    """supervisord's own start-up log (before its XML-RPC answers there is no other way)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return f"(no {path})"
