"""supervisord.conf for one instance: pure (configuration in, text out; reads only the templates).

One supervisord per host runs that host's simx programs: ``runq`` and ``runweb``
on the server instance, and one program ``worker-<pool>`` per pool (numprocs =
the pool's count).  The config runs the entry-point commands only (``python -m
runq|runweb|worker``).  Each program gets only the settings it uses through
``environment=``, so a changed runweb setting changes runweb's section alone and
supervisord restarts nothing else.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import shlex
import string
import sys
from pathlib import Path

from simx.config import ENV, Config, ConfigError, resolve_var_path

from . import paths as ops_paths
from .hosts import Instance, Pool

RUNQ, RUNWEB = "runq", "runweb"
WORKER_PREFIX = "worker-"

# Settings that are paths to secret material: on a remote host they are the copies `update` puts there.
WORKER_SECRET, CLIENT_SECRET, TLS_CA = "SIMX_WORKER_SECRET_FILE", "SIMX_CLIENT_SECRET_FILE", "SIMX_TLS_CA"
SECRET_ENV = (WORKER_SECRET, CLIENT_SECRET, TLS_CA, "SIMX_TLS_CERT", "SIMX_TLS_KEY",
              "RUNWEB_TLS_CERT", "RUNWEB_TLS_KEY")
# Which program uses which environment variable (besides its effective addresses, set below).
# Variables config.py learns later are sorted by their section: runq/batch -> runq, runweb -> runweb.
_SHARED = ("SIMX_LOG_LEVEL",)
_RUNQ_EXTRA = (WORKER_SECRET, CLIENT_SECRET, "SIMX_TLS_CERT", "SIMX_TLS_KEY")
_RUNWEB_EXTRA = ("RUNQ_HOST", "RUNQ_PORT", CLIENT_SECRET, TLS_CA, "RUNQ_TLS_SERVER_NAME",
                 "RUNWEB_TLS_CERT", "RUNWEB_TLS_KEY")
_WORKER_EXTRA = ("RUNQ_HOST", "RUNQ_PORT", WORKER_SECRET, TLS_CA, "RUNQ_TLS_SERVER_NAME",
                 "SIMX_ENGINES")


def _section_vars(*sections: str) -> tuple[str, ...]:
    return tuple(v for v, (s, _) in ENV.items() if s in sections)


PROGRAM_ENV = {
    RUNQ: tuple(dict.fromkeys(v for v in _section_vars("runq", "batch") + _SHARED + _RUNQ_EXTRA
                              if v not in ("RUNQ_HOST", TLS_CA, "RUNQ_TLS_SERVER_NAME"))),
    RUNWEB: tuple(dict.fromkeys(_section_vars("runweb") + _SHARED + _RUNWEB_EXTRA)),
    "worker": tuple(dict.fromkeys(_section_vars("worker") + _SHARED + _WORKER_EXTRA)),
}
# Every variable a start task records and passes on (ops/settings.py).
SETTINGS_ENV = tuple(dict.fromkeys(tuple(ENV) + SECRET_ENV + ("RUNQ_TLS_SERVER_NAME", "SIMX_ENGINES",
                                                              "SIMX_HOSTS")))


def used_only_by_others(groups) -> dict[str, list[str]]:
    """Settings that no program of `groups` uses -> the programs that do.  A task that starts
    `groups` leaves these as recorded (ops/settings.py), so it restarts nothing it does not name."""
    named = {"worker" if g.startswith(WORKER_PREFIX) else g for g in groups}
    users = {key: [kind for kind, keys in PROGRAM_ENV.items() if key in keys] for key in SETTINGS_ENV}
    return {key: kinds for key, kinds in users.items() if kinds and not named & set(kinds)}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an instance's programs live on their host."""
    root: Path            # the simx directory (programs' working directory)
    var: Path             # run-time directory
    python: str           # the interpreter of the programs
    user: str             # the user supervisord runs as

    @property
    def paths(self) -> ops_paths.Paths:
        return ops_paths.Paths(self.var)


def remote_target(instance: Instance, user: str = "") -> Target:
    """The layout `update` makes on a remote host: code, venv/ and var/ in the instance's dir."""
    root = Path(instance.dir)
    return Target(root=root, var=root / "var", python=str(root / "venv" / "bin" / "python"),
                  user=user or instance.user or "root")


def secret_copies(target: Target) -> dict[str, Path]:
    """Where `update` puts the secret files on a host, by setting."""
    d = target.paths.secrets
    return {WORKER_SECRET: d / "worker.secret", CLIENT_SECRET: d / "client.secret", TLS_CA: d / "ca.pem"}


def _esc(value) -> str:
    """supervisor %-expands every value: a literal % must be written %%."""
    return str(value).replace("%", "%%")


def _env_pair(key: str, value: str) -> str:
    for quote in ('"', "'"):  # supervisor's parser has quotes but no escapes
        if quote not in value:
            return f"{key}={quote}{_esc(value)}{quote}"
    raise ConfigError(f"environment {key}: a value holding both kinds of quote cannot be passed")


def _num(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def secret_files(config: Config, target: Target) -> dict[str, str]:
    """The secret files conf names or the default ones found (simx.config.default_secrets), as the
    programs' environment names them: every program fab starts uses them, whoever reads conf later."""
    named = {WORKER_SECRET: config.runq.worker_secret_file, CLIENT_SECRET: config.runq.client_secret_file}
    return {k: str(resolve_var_path(v, config.root, target.var)) for k, v in named.items() if v}


def program_env(kind: str, env, effective: dict, target: Target, remote: bool,
                secrets: dict | None = None) -> dict[str, str]:
    """A program's environment: the settings it uses that were set (secret files: also those conf
    names), then its effective settings."""
    out = {k: v for k, v in (secrets or {}).items() if k in PROGRAM_ENV[kind]}
    out.update({k: str(env[k]) for k in PROGRAM_ENV[kind] if env.get(k) not in (None, "")})
    if remote:  # secret files: the copies on that host, never the control machine's paths
        copies = secret_copies(target)
        out.update({k: str(copies[k]) for k in out.keys() & copies.keys()})
    out.update(effective, SIMX_VAR=str(target.var), PYTHONUNBUFFERED="1")
    return out


def worker_command(python: str, pool: Pool) -> list[str]:
    return [python, "-m", "worker", "--engine", pool.engine, "--group", pool.group, "--user", pool.user,
            "--cost", _num(pool.cost), "--speed", _num(pool.speed), "--priority", _num(pool.priority),
            "--retry-delay-max", _num(pool.retry_delay)]


def programs(config: Config, instance: Instance, env, target: Target, serves: bool, remote: bool = False) -> list[dict]:
    """One dict per supervisor program: program, command, environment, numprocs, autorestart."""
    python = target.python
    out = []
    secrets = secret_files(config, target)
    if serves:
        runq_env = program_env(RUNQ, env, dict(RUNQ_PORT=str(config.runq.port), SIMX_DB_URL=config.runq.db_url),
                               target, remote, secrets)
        runweb_env = program_env(RUNWEB, env, dict(RUNQ_HOST=config.runq.host, RUNQ_PORT=str(config.runq.port),
                                                   RUNWEB_PORT=str(config.runweb.port)), target, remote, secrets)
        out.append(dict(program=RUNQ, comment=f"the coordinator, port {config.runq.port}",
                        command=[python, "-m", "runq"], environment=runq_env, numprocs=1, autorestart="true"))
        out.append(dict(program=RUNWEB, comment=f"the REST API, port {config.runweb.port}",
                        command=[python, "-m", "runweb"], environment=runweb_env, numprocs=1,
                        autorestart="true"))
    worker_env = program_env("worker", env, dict(RUNQ_HOST=instance.runq_host or config.runq.host,
                                                 RUNQ_PORT=str(instance.runq_port or config.runq.port)),
                             target, remote, secrets)
    for pool in (p for p in instance.pools if p.count > 0):
        # exit 0 means drained or stopped on purpose: stay down; a kill or crash: restart
        out.append(dict(program=pool.program, comment=f"worker pool {pool.name}: {pool.count} x {pool.engine}",
                        command=worker_command(python, pool), environment=worker_env,
                        numprocs=pool.count, autorestart="unexpected"))
    return out


def render(config: Config, instance: Instance, env, python: str | None = None, user: str | None = None,
           templates: Path | None = None, target: Target | None = None, serves: bool | None = None,
           remote: bool = False) -> str:
    """The text of supervisord.conf for `instance` (reads the templates, nothing else)."""
    templates = templates or ops_paths.TEMPLATES
    if target is None:
        directory = Path(instance.dir).expanduser() if instance.dir else config.root
        directory = directory if directory.is_absolute() else config.root / directory
        target = Target(root=directory, var=config.var, python=python or sys.executable,
                        user=user or pwd.getpwuid(os.getuid()).pw_name)
    serves = instance.is_local if serves is None else serves
    paths = target.paths
    program_t = string.Template((templates / "program.conf.tmpl").read_text(encoding="utf-8"))
    sections = [program_t.substitute(
        program=p["program"], comment=p["comment"], command=_esc(shlex.join(p["command"])),
        directory=_esc(target.root), numprocs=p["numprocs"], autorestart=p["autorestart"],
        environment=",".join(_env_pair(k, v) for k, v in sorted(p["environment"].items())),
        process_name="%(program_name)s" if p["program"] in (RUNQ, RUNWEB) else "%(program_name)s_%(process_num)02d",
        log_dir=_esc(paths.log_dir),
    ) for p in programs(config, instance, env, target, serves, remote)]
    main_t = string.Template((templates / "supervisord.conf.tmpl").read_text(encoding="utf-8"))
    return main_t.substitute(
        instance=instance.name, conf=paths.conf, sock=_esc(paths.sock), pid=_esc(paths.pid),
        log_dir=_esc(paths.log_dir), directory=_esc(target.root), user=_esc(target.user),
        programs="".join(sections),
    )


def stop_order(groups) -> list[str]:
    """Workers first, then runweb, then runq (start in the reverse order)."""
    rank = {RUNWEB: 1, RUNQ: 2}
    return sorted(groups, key=lambda g: (rank.get(g, 0), g))


def expected_processes(instance: Instance, groups) -> list[str]:
    """`group:name` of every process the given program groups should have."""
    pools = {p.program: p for p in instance.pools}
    out = []
    for g in groups:
        out.extend(f"{g}:{n}" for n in (pools[g].process_names() if g in pools else [g]))
    return out
