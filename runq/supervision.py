"""Operations: this host's supervisord config (rendered) and its control over XML-RPC.

One supervisord per host runs that host's simx programs: ``runq``, ``runweb``
and one program ``worker-<pool>`` per pool of conf/hosts.yaml (numprocs = the
pool's count).  Its files live under the run-time directory (SIMX_VAR,
default var/): ``supervisor/supervisord.conf`` with the socket and pid beside
it, logs in ``log/``.  The config is rendered from ``supervisor/*.tmpl`` and
runs the entry-point commands only (``python -m runq|runweb|worker``);
settings reach the programs through ``environment=``, and supervisord itself
is started without them, so a stale environment never leaks into a program.

Start tasks write the config and apply it as ``supervisorctl update`` does;
stop, drain and status act on what supervisord runs now.  The fab tasks are
thin wrappers around ``Stack``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pwd
import shlex
import string
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import Faults, SupervisorTransport, getFaultDescription

from .config import ENV, Config, ConfigError
from .hosts import Instance, Pool

RUNQ, RUNWEB = "runq", "runweb"
WORKER_PREFIX = "worker-"
# Variables passed on to the programs when the invoking environment sets them.
PASSED_ENV = tuple(ENV) + ("SIMX_VAR",)
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes


class OpsError(Exception):
    """An operation that could not be done; the message says what and where to look."""


# ------------------------------------------------------------------ rendering (pure)

@dataclasses.dataclass(frozen=True)
class Paths:
    """Where one supervisord keeps its files: all under the run-time directory."""
    var: Path

    @property
    def conf(self) -> Path:
        return self.var / "supervisor" / "supervisord.conf"

    @property
    def pid(self) -> Path:
        return self.var / "supervisor" / "supervisord.pid"

    @property
    def log_dir(self) -> Path:
        return self.var / "log"

    @property
    def sock(self) -> Path:
        path = self.var / "supervisor" / "supervisord.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        # too long for AF_UNIX: a short name in the temp dir, one per run-time directory
        digest = hashlib.sha1(str(self.var).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"simx-supervisord-{digest}.sock"


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


def program_env(config: Config, env, runq_host: str, runq_port: int) -> dict[str, str]:
    """A program's environment: what the user set, then the effective settings."""
    out = {k: str(env[k]) for k in PASSED_ENV if env.get(k) not in (None, "")}
    out.update(
        RUNQ_HOST=runq_host, RUNQ_PORT=str(runq_port), RUNWEB_PORT=str(config.runweb.port),
        SIMX_DB_URL=config.runq.db_url, SIMX_VAR=str(config.var), PYTHONUNBUFFERED="1",
    )
    return out


def worker_command(python: str, pool: Pool) -> list[str]:
    return [python, "-m", "worker", "--engine", pool.engine, "--group", pool.group, "--user", pool.user,
            "--cost", _num(pool.cost), "--speed", _num(pool.speed), "--priority", _num(pool.priority),
            "--retry-delay-max", _num(pool.retry_delay)]


def programs(config: Config, instance: Instance, env, python: str) -> list[dict]:
    """One dict per supervisor program: program, command, environment, numprocs, autorestart."""
    server_env = program_env(config, env, config.runq.host, config.runq.port)
    worker_env = program_env(config, env, instance.runq_host or config.runq.host,
                             instance.runq_port or config.runq.port)
    out = []
    if instance.is_local:  # runq and runweb run on this host (remote servers: a later issue)
        out.append(dict(program=RUNQ, comment=f"the coordinator, port {config.runq.port}",
                        command=[python, "-m", "runq"], environment=server_env, numprocs=1,
                        autorestart="true"))
        out.append(dict(program=RUNWEB, comment=f"the REST API, port {config.runweb.port}",
                        command=[python, "-m", "runweb"], environment=server_env, numprocs=1,
                        autorestart="true"))
    for pool in (p for p in instance.pools if p.count > 0):
        # exit 0 means drained or stopped on purpose: stay down; a kill or crash: restart
        out.append(dict(program=pool.program, comment=f"worker pool {pool.name}: {pool.count} x {pool.engine}",
                        command=worker_command(python, pool), environment=worker_env,
                        numprocs=pool.count, autorestart="unexpected"))
    return out


def render(config: Config, instance: Instance, env, python: str = sys.executable,
           user: str | None = None, templates: Path | None = None) -> str:
    """The text of supervisord.conf for `instance` (reads the templates, nothing else)."""
    templates = templates or config.root / "supervisor"
    user = user or pwd.getpwuid(os.getuid()).pw_name
    paths = Paths(config.var)
    directory = Path(instance.dir).expanduser() if instance.dir else config.root
    directory = directory if directory.is_absolute() else config.root / directory
    program_t = string.Template((templates / "program.conf.tmpl").read_text(encoding="utf-8"))
    sections = [program_t.substitute(
        program=p["program"], comment=p["comment"], command=_esc(shlex.join(p["command"])),
        directory=_esc(directory), numprocs=p["numprocs"], autorestart=p["autorestart"],
        environment=",".join(_env_pair(k, v) for k, v in sorted(p["environment"].items())),
        process_name="%(program_name)s" if p["program"] in (RUNQ, RUNWEB) else "%(program_name)s_%(process_num)02d",
        log_dir=_esc(paths.log_dir),
    ) for p in programs(config, instance, env, python)]
    main_t = string.Template((templates / "supervisord.conf.tmpl").read_text(encoding="utf-8"))
    return main_t.substitute(
        instance=instance.name, conf=paths.conf, sock=_esc(paths.sock), pid=_esc(paths.pid),
        log_dir=_esc(paths.log_dir), directory=_esc(directory), user=_esc(user), programs="".join(sections),
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


# ------------------------------------------------------------------ control (XML-RPC)

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
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False

    def launch(self, env) -> None:
        """Start supervisord (it daemonizes) and wait until it answers."""
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.paths.log_dir / "supervisord.start.log"
        with open(log, "wb") as out:
            rc = subprocess.call([self.python, "-m", "supervisor.supervisord", "-c", str(self.paths.conf)],
                                 env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while rc == 0 and not self.running():
            if time.monotonic() > deadline:
                rc = None
                break
            time.sleep(0.05)
        if rc != 0:
            raise OpsError(f"supervisord did not start (exit {rc}): {tail(log)}"
                           f"{tail(self.paths.log_dir / 'supervisord.log')}")

    def apply(self) -> list[str]:
        """Load the config file anew and apply it like `supervisorctl update`; say what changed."""
        rpc = self.rpc
        added, changed, removed = rpc.reloadConfig()[0]
        active = {i["group"] for i in self.processes().values()
                  if i["statename"] in ("RUNNING", "STARTING", "BACKOFF")}
        for g in stop_order(removed + changed):  # workers first: they report to runq as they stop
            self.stop(g)
            rpc.removeProcessGroup(g)
        for g in changed + added:
            rpc.addProcessGroup(g)
        for g in reversed(stop_order(changed)):  # a running group is restarted with its new settings
            if g in active:
                self.start(g)
        return [f"{what}: {', '.join(gs)}" for what, gs in
                (("added", added), ("changed (restarted if running)", changed), ("removed", removed)) if gs]

    def processes(self) -> dict[str, dict]:
        """`group:name` -> supervisor's process info (statename, pid, description, exitstatus ...)."""
        return {f"{i['group']}:{i['name']}": i for i in self.rpc.getAllProcessInfo()}

    def groups(self) -> list[str]:
        return sorted({i["group"] for i in self.processes().values()})

    def start(self, group: str) -> None:
        failed = [r for r in self.rpc.startProcessGroup(group, True) if r["status"] != Faults.SUCCESS]
        if failed:
            names = ", ".join(f"{r['group']}:{r['name']}" for r in failed)
            why = getFaultDescription(failed[0]["status"]).lower().replace("_", " ")
            raise OpsError(f"{names} did not start ({why}); {failed[0]['name']}'s log ends:\n"
                           f"{tail(self.paths.log_dir / (failed[0]['name'] + '.log'))}")

    def stop(self, group: str) -> None:
        self._each(self.rpc.stopProcessGroup, group, True)

    def signal(self, group: str, sig: str) -> None:
        self._each(self.rpc.signalProcessGroup, group, sig)

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
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
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


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # /proc/PID/stat is "pid (comm) STATE ..."; comm may hold ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def tail(path: Path, size: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return f"(no {path})"


# ------------------------------------------------------------------ the stack of this host

class Stack:
    """This host's simx programs under its supervisord: what the fab tasks start, stop and show."""

    def __init__(self, config: Config, instance: Instance, env, python: str = sys.executable, out=print):
        self.config, self.instance, self.env, self.python, self.out = config, instance, env, python, out
        self.paths = Paths(config.var)
        self.sup = Supervisor(self.paths, python)

    @property
    def pools(self) -> list[str]:
        """Programs of the configured worker pools (a pool of count 0 has none)."""
        return [p.program for p in self.instance.pools if p.count > 0]

    def render(self) -> str:
        return render(self.config, self.instance, self.env, self.python)

    def up(self) -> None:
        """Write the config; start supervisord, or apply what changed."""
        text = self.render()
        self.paths.conf.parent.mkdir(parents=True, exist_ok=True)
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.conf.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o600)  # it may name secret files
        tmp.replace(self.paths.conf)
        if not self.sup.running():
            self.out(f"supervisord: starting ({self.paths.conf})")
            self.sup.launch({k: v for k, v in os.environ.items() if k not in PASSED_ENV})
            return
        for note in self.sup.apply():
            self.out(f"supervisord: config {note}")

    def start(self, groups) -> None:
        self.up()
        for g in groups:
            self.sup.start(g)
        self.show(groups)

    def stop(self, groups) -> None:
        if not self.sup.running():
            self.out(f"supervisord is not running ({self.paths.sock}): nothing to stop")
            return
        for g in groups:
            self.sup.stop(g)
        self.show(groups)

    def restart(self, groups) -> None:
        self.stop(groups)
        self.start(groups)

    def drain(self, groups) -> None:
        """Ask workers to finish their current run and exit 0 (supervisor leaves them down)."""
        if self.sup.running():
            for g in groups:
                self.sup.signal(g, "USR1")
        self.show(groups)

    def worker_groups(self) -> list[str]:
        """Worker pools supervisord runs now, and those configured."""
        loaded = [g for g in self.sup.groups() if g.startswith(WORKER_PREFIX)] if self.sup.running() else []
        return sorted(set(loaded) | set(self.pools))

    def status(self, groups) -> list[tuple[str, str, str]]:
        """(process, state, description) for every process the groups should have."""
        if not self.sup.running():
            return [(n.split(":")[1], "STOPPED", "supervisord not running")
                    for n in expected_processes(self.instance, groups)]
        known = self.sup.processes()
        configured = set(self.pools) | {RUNQ, RUNWEB}
        names = expected_processes(self.instance, [g for g in groups if g in configured])
        names += sorted(n for n in known if n.split(":")[0] in set(groups) - configured)  # pools no longer configured
        rows = []
        for name in names:
            info = known.get(name)
            rows.append((name.split(":")[1], info["statename"], info["description"]) if info
                        else (name.split(":")[1], "ABSENT", "not in the running config (start it to apply)"))
        return rows

    def show(self, groups) -> bool:
        """Print one line per expected process; True when all of them are RUNNING."""
        rows = self.status(groups)
        for name, state, description in rows:
            self.out(f"{name:<24} {state:<9} {description}")
        return all(state == "RUNNING" for _, state, _ in rows)

    def shutdown(self) -> None:
        """Stop the workers, then runweb, then runq, then supervisord itself."""
        if not self.sup.running():
            self.out("supervisord is not running")
            return
        for g in stop_order(set(self.sup.groups()) | {RUNWEB, RUNQ}):
            self.sup.stop(g)
        self.sup.shutdown()
        self.out("supervisord: shut down")
