"""One remote instance over SSH: `update` puts simx there; the other tasks run ops.agent there.

Layout on the host, all in the instance's ``dir``: the code (ops, runq, runweb,
worker, conf/simx.yaml, conf/engines.yaml), ``wheels/`` and ``venv/`` (built
offline from the wheelhouse), ``var/`` (0700: supervisord's config, socket,
logs, ``secrets/`` with the worker secret and the CA certificate, 0600).  The
client secret goes only to the server instance (runq checks client proofs).
"""
from __future__ import annotations

import dataclasses
import io
import json
import shlex
from pathlib import Path

from simx.config import Config

from . import secrets as ops_secrets, ssh as ops_ssh, wheelhouse
from .control import OpsError
from .hosts import Instance, Ssh
from .render import CLIENT_SECRET, TLS_CA, WORKER_SECRET, Target, remote_target, render, secret_copies

MIN_PYTHON = (3, 11)
FIND_PYTHON = r"""
for p in {candidates}; do
  command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys, platform, getpass; print(sys.executable, "%d.%d" % sys.version_info[:2], platform.machine(), getpass.getuser())' 2>/dev/null
done
true
"""
SERVER_FILES = ("SIMX_TLS_CERT", "SIMX_TLS_KEY")


@dataclasses.dataclass(frozen=True)
class HostPython:
    path: str
    version: str
    machine: str
    user: str


def pick_python(lines: str) -> HostPython | None:
    """The first candidate that is Python 3.11 or newer.  Pure."""
    for line in lines.splitlines():
        parts = line.split()
        if len(parts) == 4:
            major, _, minor = parts[1].partition(".")
            if (int(major), int(minor)) >= MIN_PYTHON:
                return HostPython(*parts)
    return None


class Remote:
    """An instance reached over SSH."""

    def __init__(self, instance: Instance, ssh: Ssh, timeout: float = 600.0):
        if not instance.dir:
            raise OpsError(f"instance {instance.name}: set `dir` (where simx lives on {instance.host})")
        self.instance, self.ssh, self.timeout = instance, ssh, timeout
        self.dir = Path(instance.dir)
        self.conn = None

    def __enter__(self):
        self.conn = ops_ssh.connect(self.instance, self.ssh)
        return self

    def __exit__(self, *exc):
        if self.conn is not None:
            self.conn.close()

    def run(self, cmd: str, what: str, timeout: float | None = None) -> str:
        result = self.conn.run(cmd, hide=True, warn=True, in_stream=False, timeout=timeout or self.timeout)
        if result.exited != 0:
            raise OpsError(f"{what} failed on {self.instance.host} (exit {result.exited}): "
                           f"{(result.stderr or result.stdout).strip()[-1500:]}")
        return result.stdout

    def put_bytes(self, data: bytes, path: Path, private: bool = False) -> None:
        if private:  # the file exists with mode 0600 before a byte is written
            self.run(f"umask 077 && : > {shlex.quote(str(path))} && chmod 600 {shlex.quote(str(path))}",
                     f"creating {path}")
        self.conn.put(io.BytesIO(data), remote=str(path))

    # ------------------------------------------------------------------ update

    def find_python(self) -> HostPython:
        cands = [self.instance.python] if self.instance.python else \
            ["python3.13", "python3.12", "python3.11", "python3"]
        out = self.run(FIND_PYTHON.format(candidates=" ".join(shlex.quote(c) for c in cands)), "finding Python")
        found = pick_python(out)
        if found is None:
            raise OpsError(f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ on {self.instance.host} "
                           f"(tried {', '.join(cands)}): install one or set `python:` for this instance")
        return found

    def update(self, config: Config, env, serves: bool, root: Path, cache: Path, out=print) -> Target:
        """Put code, venv, config and secrets on the host.  Returns the host's layout."""
        py = self.find_python()
        out(f"python {py.version} at {py.path} ({py.machine}), user {py.user}")
        target = remote_target(self.instance, py.user)
        q = {k: shlex.quote(str(v)) for k, v in dict(dir=self.dir, var=target.var, sec=target.paths.secrets,
                                                      sup=target.paths.conf.parent, log=target.paths.log_dir,
                                                      inc=self.dir / ".incoming").items()}
        self.run(f"umask 077 && mkdir -p {q['dir']} {q['var']} {q['sec']} {q['sup']} {q['log']} {q['inc']} && "
                 f"chmod 700 {q['var']} {q['sec']} {q['sup']} {q['log']} {q['inc']}", "making directories")
        pyproject = wheelhouse.pyproject_of(root)
        wkey = wheelhouse.key(pyproject, py.version, py.machine)
        stamp = self.dir / "venv" / ".simx-wheelhouse"
        have = self.run(f"cat {shlex.quote(str(stamp))} 2>/dev/null || true", "reading the venv stamp").strip()
        if have != wkey:
            tarball = wheelhouse.build(pyproject, cache, py.version, py.machine)
            out(f"copying wheelhouse {tarball.name} and building {self.dir}/venv offline")
            self.conn.put(str(tarball), remote=f"{self.dir}/.incoming/wheels.tar")
            # built beside the one in use, then swapped in: running programs keep their files
            self.run(f"cd {q['dir']} && rm -rf wheels venv.new venv.old && tar xf .incoming/wheels.tar && "
                     f"rm .incoming/wheels.tar && {shlex.quote(py.path)} -m venv venv.new && "
                     f"PIP_CONFIG_FILE=/dev/null venv.new/bin/python -m pip install -q --no-index --no-compile "
                     f"--disable-pip-version-check --find-links wheels -r wheels/requirements.txt && "
                     f"echo {shlex.quote(wkey)} > venv.new/.simx-wheelhouse && "
                     f"{{ [ ! -e venv ] || mv venv venv.old; }} && mv venv.new venv && rm -rf venv.old",
                     "building the virtualenv")
        else:
            out(f"virtualenv {self.dir}/venv is up to date ({wkey})")
        self.put_bytes(wheelhouse.code_tarball(root), self.dir / ".incoming" / "code.tar.gz")
        self.run(f"cd {q['dir']} && tar xzf .incoming/code.tar.gz && rm .incoming/code.tar.gz", "unpacking the code")
        env = dict(env)
        copies = secret_copies(target)
        wanted = [WORKER_SECRET, TLS_CA] + ([CLIENT_SECRET] if serves else [])
        for name in wanted:
            path = ops_secrets.file_of(config, env, name)
            if path is None:
                env.pop(name, None)
                continue
            data = ops_secrets.read_secret(path) + b"\n" if name != TLS_CA else _read(path)
            self.put_bytes(data, copies[name], private=True)
            env[name] = str(copies[name])  # the programs get the copy's path (render maps it)
            out(f"{name.lower().removeprefix('simx_').replace('_', ' ')}: copied to {copies[name]} (mode 0600)")
        if not serves:
            self.run(f"rm -f {shlex.quote(str(copies[CLIENT_SECRET]))}", "removing a client secret")
            for name in SERVER_FILES:
                env.pop(name, None)
        text = render(config, self.instance, env, target=target, serves=serves, remote=True)
        self.put_bytes(text.encode(), target.paths.conf, private=True)
        out(f"config written to {target.paths.conf}")
        return target

    # ------------------------------------------------------------------ control

    def agent(self, action: str, groups=(), **flags) -> dict:
        """Run ops.agent on the host; its JSON reply (OpsError carrying its error)."""
        target = remote_target(self.instance)
        args = [str(target.python), "-m", "ops.agent", action, *groups, "--var", str(target.var)]
        for name, value in flags.items():
            if value is True:
                args.append(f"--{name}")
            elif value not in (None, False):
                args += [f"--{name}", str(value)]
        result = self.conn.run(f"cd {shlex.quote(str(self.dir))} && {shlex.join(args)}", hide=True, warn=True,
                               in_stream=False, timeout=None if flags.get("wait") else self.timeout)
        lines = result.stdout.strip().splitlines()
        try:
            reply = checked(json.loads(lines[-1]))
        except (IndexError, ValueError):
            raise OpsError(f"ops.agent {action} on {self.instance.host} (exit {result.exited}) said: "
                           f"{(result.stderr or result.stdout).strip()[-1500:]}"
                           f"{'' if result.exited not in (1, 2, 127) else f' (run `fab {self.instance.name}.update` first)'}") from None
        return reply


_REPLY = {"hostname": str, "python": str, "error": (str, type(None)), "notes": list,
          "processes": (dict, type(None)), "logs": dict, "replacing": dict, "web": bool}


def checked(reply) -> dict:
    """The agent's reply, its shape checked before anything uses it (ValueError otherwise)."""
    if not isinstance(reply, dict):
        raise ValueError("not an object")
    for key, kind in _REPLY.items():
        if key in reply and not isinstance(reply[key], kind):
            raise ValueError(f"{key}: wrong type")
    if not all(isinstance(n, str) for n in reply.get("notes", [])):
        raise ValueError("notes: wrong type")
    for info in (reply.get("processes") or {}).values():
        if not (isinstance(info, dict) and isinstance(info.get("statename"), str)
                and isinstance(info.get("pid"), int) and isinstance(info.get("description"), str)):
            raise ValueError("processes: wrong type")
    if not all(isinstance(t, str) for t in (reply.get("logs") or {}).values()):
        raise ValueError("logs: wrong type")
    replacing = reply.get("replacing") or {}
    pools, workers = replacing.get("pools", []), replacing.get("workers", {})
    if not (isinstance(pools, list) and all(isinstance(g, str) for g in pools) and isinstance(workers, dict)
            and all(isinstance(pid, int) for pid in workers.values())):
        raise ValueError("replacing: wrong type")
    return reply


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OpsError(f"cannot read {path}: {exc}") from None
