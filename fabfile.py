"""simx operations (Fabric 3): `fab --list` shows every task.

A thin table of tasks over ops/ (ops/fleet.py does the work).  Per instance NAME
of conf/hosts.yaml (or the file SIMX_HOSTS names): `fab NAME` (update, then
start its worker pools), NAME.update|start|stop|restart|status|drain|logs|trust.
`fab all` / all.*: the server (runq, runweb) and every instance, hosts in
parallel; `fab server` / server.*: runq and runweb on the instance `server:`
names.  `*.run` tasks run a program in the foreground.  Status tasks exit 0
only when everything they expect is up.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from fabric import task
from invoke import Collection, Exit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `fab` from a checkout that is not pip-installed

from ops import paths as ops_paths, secrets as ops_secrets, ssh as ops_ssh  # noqa: E402
from ops.control import OpsError  # noqa: E402
from ops.fleet import SETTLE, Control  # noqa: E402
from ops.render import RUNQ, RUNWEB  # noqa: E402
from simx import config as simx_config  # noqa: E402
from simx.config import ConfigError  # noqa: E402


def _control() -> Control:
    try:
        return Control(os.environ)
    except ConfigError as exc:
        raise Exit(f"simx: {exc}", code=2)


def _config() -> simx_config.Config:
    """conf as a program run from this shell reads it (no recorded settings)."""
    try:
        return simx_config.load(env=os.environ, root=ops_paths.root())
    except ConfigError as exc:
        raise Exit(f"simx: {exc}", code=2)


def _print(lines) -> None:
    for line in lines:
        print(line, flush=True)


def _done(code: int) -> None:
    if code:
        raise Exit(code=code)


def _run(which: str, action: str, **kw) -> None:
    _done(_control().run(which, action, **kw))


def _programs(groups: list[str], action: str, **kw) -> None:
    """runq or runweb alone, on the server instance."""
    _done(_control().programs(groups, action, **kw))


def _exec(*args: str) -> None:
    """Replace fab by `python -m ...` in the simx root: logs and Ctrl-C go straight to it."""
    os.chdir(ops_paths.root())
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", *args])


# ------------------------------------------------------------------ runq, runweb

@task(name="run")
def runq_run(c, port=None):
    """Run runq in the foreground, logs on the terminal (RUNQ_PORT or --port)."""
    try:
        _print(ops_secrets.before_runq(_config()))
    except OpsError as exc:
        raise Exit(f"simx: {exc}", code=1)
    _exec("runq", *(["--port", str(port)] if port else []))


@task(name="start")
def runq_start(c):
    """Start runq under the server's supervisord."""
    _programs([RUNQ], "start")


@task(name="stop")
def runq_stop(c):
    """Stop runq under supervisord."""
    _programs([RUNQ], "stop")


@task(name="restart")
def runq_restart(c):
    """Restart runq (applies changed settings)."""
    _programs([RUNQ], "restart", now=True)


@task(name="status")
def runq_status(c):
    """Show runq's state; exit 0 only when it is RUNNING and answers."""
    _programs([RUNQ], "status")


@task(name="secrets")
def runq_secrets(c, force=False):
    """Create the worker and client secret files (mode 0600; --force replaces existing ones)."""
    from simx.auth import SecretError
    try:
        _print(ops_secrets.create(_config(), force=bool(force)))
    except (SecretError, OSError) as exc:
        raise Exit(f"simx: {exc}", code=1)


@task(name="run")
def runweb_run(c, port=None):
    """Run runweb in the foreground on port 4567 (--port to change), logs on the terminal."""
    _exec("runweb", "--port", str(port or _control().config.runweb.run_port))


@task(name="start")
def runweb_start(c):
    """Start runweb under supervisord, on RUNWEB_PORT (8097)."""
    _programs([RUNWEB], "start")


@task(name="stop")
def runweb_stop(c):
    """Stop runweb under supervisord."""
    _programs([RUNWEB], "stop")


@task(name="restart")
def runweb_restart(c):
    """Restart runweb (applies changed settings; nothing else restarts)."""
    _programs([RUNWEB], "restart", now=True)


@task(name="status")
def runweb_status(c):
    """Show runweb's state; exit 0 only when it is RUNNING and answers."""
    _programs([RUNWEB], "status")


@task(name="adduser")
def runweb_adduser(c, name):
    """Add or change an API user (asks for the password): --name NAME."""
    _exec("runweb.users", "add", name)


# ------------------------------------------------------------------ instances, server, all

def _verbs(which: str, what: str, default: str) -> Collection:
    """The namespace of one instance (or `all`, `server`): deploy, update, start, stop, ..."""

    def make(name, doc, fn):
        fn.__doc__ = doc
        return task(name=name, default=name == default)(fn)

    def deploy(c, wait=SETTLE):
        _done(_control().deploy(which, wait=float(wait)))

    def start(c, wait=SETTLE):
        _run(which, "start", settle=float(wait))
    tasks = [
        make("deploy", f"Update {what}, start, wait until all is up (--wait S, {SETTLE:.0f}; 0: no wait).", deploy),
        make("update", f"Put code, virtualenv, config and worker secret on {what}.",
             lambda c: _run(which, "update")),
        make("start", f"Start {what} under supervisord, wait until all is up (--wait S, {SETTLE:.0f}; 0: no wait).",
             start),
        make("stop", f"Stop {what} (unfinished runs go back to the queue).", lambda c: _run(which, "stop")),
    ]

    def status(c, wait=0):
        _run(which, "status", wait=float(wait))
    tasks.append(make("status", f"Show every process of {what}, pid, runq connection; exit 0 only when all are up "
                                "(--wait S: until they are, S seconds at most).", status))

    def restart(c, now=False, wait=False):
        _run(which, "restart", now=bool(now), wait=bool(wait))
    tasks.append(make("restart", f"Restart {what}: workers drain and come back one by one (--wait, --now).",
                      restart))
    if which != "local":   # this host's: `fab shutdown`
        tasks.append(make("shutdown", f"Stop every process of {what}, then its supervisord.",
                          lambda c: _run(which, "shutdown")))
    if which != "server":
        tasks.append(make("drain", f"Drain the workers of {what}: each finishes its run, then exits.",
                          lambda c: _run(which, "drain")))
    if which not in ("all", "server"):
        local = which == "local"
        def logs(c, process=None, size=2000):
            _run(which, "logs", process=process, size=int(size))
        tasks.append(make("logs", f"Show the end of each process's log on {what} (--process GROUP:NAME, --size).",
                          logs))

        def trust(c, fingerprint=None):
            ctl = _control()
            try:
                _done(0 if ops_ssh.trust(ctl.instance(which), ctl.fleet.ssh, fingerprint) else 1)
            except OpsError as exc:
                raise Exit(f"simx: {exc}", code=1)
        if not local:   # this host is reached without ssh
            tasks.append(make("trust", f"Accept {what}'s SSH host key after showing it (--fingerprint SHA256:...).",
                              trust))
    return Collection(which, *tasks)


@task
def shutdown(c):
    """Stop everything on this host, then supervisord itself."""
    _run("local", "shutdown")


@task
def demo(c, keep=False, timeout=120):
    """Start a stack in var/demo, run runweb/example/batch-req.yaml, show it live (--keep leaves it up)."""
    from ops import demo as simx_demo
    _done(simx_demo.main(ops_paths.root(), os.environ, keep=bool(keep), timeout=float(timeout)))


def _instances() -> list[str]:
    try:
        return list(Control(os.environ).fleet.instances)
    except ConfigError as exc:
        raise SystemExit(f"simx: {exc}")


ns = Collection(
    demo, shutdown,
    Collection("runq", runq_run, runq_start, runq_stop, runq_restart, runq_status, runq_secrets),
    Collection("runweb", runweb_run, runweb_start, runweb_stop, runweb_restart, runweb_status, runweb_adduser),
    _verbs("all", "the server and every instance", "deploy"),
    _verbs("server", "runq and runweb on the server instance", "deploy"),
    *(_verbs(n, "local" if n == "local" else f"instance {n}", "start" if n == "local" else "deploy")
      for n in _instances()),
)
