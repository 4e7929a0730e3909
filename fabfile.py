"""simx operations (Fabric 3): `fab --list` shows every task.

`*.run` tasks run a program in the foreground with logs on the terminal.  The
other tasks drive this host's supervisord (config and logs under var/, or
SIMX_VAR).  Start tasks render var/supervisor/supervisord.conf from
conf/simx.yaml, conf/hosts.yaml (or the file SIMX_HOSTS names) and the
environment (RUNQ_PORT, ...) and apply it; stop, drain and status act on what
supervisord runs now.  Every status task exits 0 only when everything it
expects is RUNNING.  The work is done in runq/supervision.py and runq/demo.py;
tasks only choose which programs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from fabric import task
from invoke import Collection, Exit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # so `fab` works from a checkout that is not pip-installed

from runq import config as simx_config, hosts  # noqa: E402
from runq.supervision import RUNQ, RUNWEB, OpsError, Stack  # noqa: E402


def _stack(env=None) -> Stack:
    """This host's stack as conf/simx.yaml, conf/hosts.yaml and the environment describe it."""
    env = os.environ if env is None else env
    try:
        cfg = simx_config.load(env=env)
        return Stack(cfg, hosts.load(env.get("SIMX_HOSTS"), root=cfg.root)["local"], env)
    except simx_config.ConfigError as exc:
        raise Exit(f"simx: {exc}", code=2)


def _do(action, groups, env=None) -> None:
    try:
        action(_stack(env), groups)
    except OpsError as exc:
        raise Exit(f"simx: {exc}", code=1)


def _start(groups):
    _do(Stack.start, groups)


def _stop(groups):
    _do(Stack.stop, groups)


def _restart(groups):
    _do(Stack.restart, groups)


def _check(groups) -> None:
    if not _stack().show(groups):
        raise Exit("not everything expected is running", code=1)


def _exec(*args: str) -> None:
    """Replace fab by `python -m ...` in the simx root: logs and Ctrl-C go straight to it."""
    os.chdir(ROOT)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", *args])


def _pools() -> list[str]:
    """Worker pools supervisord runs now or conf/hosts.yaml names: what stop and drain act on."""
    return _stack().worker_groups()


# ------------------------------------------------------------------ runq

@task(name="run")
def runq_run(c, port=None):
    """Run runq in the foreground, logs on the terminal (RUNQ_PORT or --port)."""
    _exec("runq", *(["--port", str(port)] if port else []))


@task(name="start")
def runq_start(c):
    """Start runq under this host's supervisord."""
    _start([RUNQ])


@task(name="stop")
def runq_stop(c):
    """Stop runq under supervisord."""
    _stop([RUNQ])


@task(name="restart")
def runq_restart(c):
    """Restart runq under supervisord (applies changed settings)."""
    _restart([RUNQ])


@task(name="status")
def runq_status(c):
    """Show runq's state; exit 0 only when it is RUNNING."""
    _check([RUNQ])


@task(name="secrets")
def runq_secrets(c, force=False):
    """Create the worker and client secret files (mode 0600; --force replaces existing ones)."""
    from runq import auth
    try:
        cfg = simx_config.load(env=os.environ)
        lines = auth.create_secret_files(cfg.runq, lambda p: simx_config.resolve_var_path(p, cfg.root, cfg.var),
                                         force=bool(force))
    except (simx_config.ConfigError, auth.SecretError) as exc:
        raise Exit(f"simx: {exc}", code=1)
    print("\n".join(lines))


# ------------------------------------------------------------------ runweb

@task(name="run")
def runweb_run(c, port=None):
    """Run runweb in the foreground on port 4567 (--port to change), logs on the terminal."""
    _exec("runweb", "--port", str(port or _stack().config.runweb.run_port))


@task(name="start")
def runweb_start(c):
    """Start runweb under supervisord, on RUNWEB_PORT (8097)."""
    _start([RUNWEB])


@task(name="stop")
def runweb_stop(c):
    """Stop runweb under supervisord."""
    _stop([RUNWEB])


@task(name="restart")
def runweb_restart(c):
    """Restart runweb under supervisord (applies changed settings)."""
    _restart([RUNWEB])


@task(name="status")
def runweb_status(c):
    """Show runweb's state; exit 0 only when it is RUNNING."""
    _check([RUNWEB])


@task(name="adduser")
def runweb_adduser(c, name):
    """Add or change an API user (asks for the password): --name NAME."""
    _exec("runweb.users", "add", name)


# ------------------------------------------------------------------ local worker pools

@task(name="start", default=True)
def local_start(c):
    """Start the worker pools of the `local` instance (conf/hosts.yaml)."""
    _start(_stack().pools)


@task(name="stop")
def local_stop(c):
    """Stop the local worker pools (their unfinished runs go back to the queue)."""
    _stop(_pools())


@task(name="restart")
def local_restart(c):
    """Restart the local worker pools (applies changed pools)."""
    _restart(_pools())


@task(name="status")
def local_status(c):
    """Show each local worker; exit 0 only when all are RUNNING."""
    _check(_stack().pools)


@task(name="drain")
def local_drain(c):
    """Drain the local workers: each finishes its run, takes no other, exits."""
    _do(Stack.drain, _pools())


# ------------------------------------------------------------------ everything

@task(name="start", default=True)
def all_start(c):
    """Start runq, runweb and the local worker pools under supervisord."""
    runq_start(c)
    runweb_start(c)
    local_start(c)


@task(name="stop")
def all_stop(c):
    """Stop the local workers, runweb and runq (supervisord keeps running)."""
    local_stop(c)
    runweb_stop(c)
    runq_stop(c)


@task(name="status")
def all_status(c):
    """Show runq, runweb and the local workers; exit 0 only when all are RUNNING."""
    _check([RUNQ, RUNWEB] + _stack().pools)


@task
def shutdown(c):
    """Stop everything on this host, then supervisord itself."""
    try:
        _stack().shutdown()
    except OpsError as exc:
        raise Exit(f"simx: {exc}", code=1)


@task
def demo(c, keep=False, timeout=120):
    """Start a stack in var/demo, run runweb/example/batch-req.yaml, show it live (--keep leaves it up)."""
    from runq import demo as simx_demo
    code = simx_demo.main(ROOT, os.environ, keep=bool(keep), timeout=float(timeout))
    if code:
        raise Exit(code=code)


ns = Collection(
    demo, shutdown,
    Collection("runq", runq_run, runq_start, runq_stop, runq_restart, runq_status, runq_secrets),
    Collection("runweb", runweb_run, runweb_start, runweb_stop, runweb_restart, runweb_status, runweb_adduser),
    Collection("local", local_start, local_stop, local_restart, local_status, local_drain),
    Collection("all", all_start, all_stop, all_status),
)
