"""The runq secrets and TLS files as fab sees them (per /work/contracts.md), and a runq client using them.

Paths come from the environment (SIMX_WORKER_SECRET_FILE, SIMX_CLIENT_SECRET_FILE,
SIMX_TLS_CA, ...) or conf (``runq.worker_secret_file``, ``runq.client_secret_file``,
``runq.tls.ca`` ...); relative to the simx root, a leading ``var/`` meaning the
run-time directory.  A secret file readable by group or others is refused.  When
neither names a secret, fab makes one in ``var/secrets/`` before it first starts
runq (`ensure`), where every program of that run-time directory finds it
(simx.config.default_secrets).
"""
from __future__ import annotations

import re
from pathlib import Path

from simx import auth
from simx.config import Config

from .control import OpsError
from .paths import Paths
from .render import CLIENT_SECRET, TLS_CA, WORKER_SECRET

# setting -> where conf keeps it (section attribute, then key inside a mapping)
_CONF = {WORKER_SECRET: ("worker_secret_file", None), CLIENT_SECRET: ("client_secret_file", None),
         TLS_CA: ("tls", "ca"), "SIMX_TLS_CERT": ("tls", "cert"), "SIMX_TLS_KEY": ("tls", "key")}
_HEX = re.compile(r"^[0-9a-fA-F]{32,}$")


def setting(config: Config, env, name: str) -> str:
    """The file a setting names ("" = none): environment first, then conf."""
    if env.get(name):
        return str(env[name])
    attr, key = _CONF[name]
    value = getattr(config.runq, attr, "")
    if key is not None:
        value = (value or {}).get(key, "") if isinstance(value, dict) else getattr(value, key, "")
    return str(value or "")


def resolve(config: Config, path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "var":
        return config.var / Path(*p.parts[1:])
    return config.root / p


def file_of(config: Config, env, name: str) -> Path | None:
    value = setting(config, env, name)
    return resolve(config, value) if value else None


def read_secret(path: Path) -> bytes:
    """A secret file's one line, checked: private to its owner, at least 32 hex characters."""
    try:
        if path.stat().st_mode & 0o077:
            raise OpsError(f"{path} is readable by group or others: chmod 600 {path}")
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise OpsError(f"cannot read secret file {path}: {exc}") from None
    if not _HEX.match(text):
        raise OpsError(f"{path}: expected one line of at least 32 hex characters (fab runq.secrets writes one)")
    return text.encode()


def runq_client(config: Config, env, timeout: float = 10.0):
    """A RunqClient for fab's queries, with the client secret and TLS (the CA) when configured."""
    from simx import tls as runq_tls
    from simx.client import RunqClient
    path = file_of(config, env, CLIENT_SECRET)
    secret = read_secret(path) if path else None
    ca = file_of(config, env, TLS_CA)
    context, server_name = runq_tls.client_context_from(config.runq, config.root, config.var,
                                                        ca=str(ca) if ca else None)
    return RunqClient(config.runq.host, config.runq.port, timeout, secret=secret, tls=context,
                      server_name=server_name)


def _connected(config: Config, env) -> list[dict] | None:
    """The rows of every worker runq lists as connected; None when runq does not answer."""
    from simx.client import RunqUnavailable
    client = runq_client(config, env)
    out, offset = [], 0
    try:
        while offset is not None:
            reply = client.request("WorkerList", offset=offset, limit=10000)
            if reply.get("status") != "ok":
                return None
            out += [w for w in reply.get("workers", []) if w.get("connected")]
            offset = reply.get("next_offset")
    except (RunqUnavailable, OSError):
        return None
    finally:
        client.close()
    return out


def connected_workers(config: Config, env) -> dict[tuple[str, int], dict] | None:
    """(host, pid) -> runq's row (state, batch_id, ...) of every worker it lists as connected;
    None when runq does not answer."""
    rows = _connected(config, env)
    return None if rows is None else {(w["host"], w["pid"]): w for w in rows}


def computing_workers(config: Config, env) -> int:
    """How many connected workers hold a run now (0 when runq does not answer)."""
    return sum(1 for w in _connected(config, env) or () if w.get("batch_id") is not None)


def _named(config: Config, role: str) -> bool:
    """Whether conf or the environment names a secret of `role` (a default file found counts)."""
    return bool(getattr(config.runq, f"{role}_secret_file") or (role == "worker" and config.runq.worker_secrets))


def missing(config: Config) -> list[str]:
    """The roles whose secret nothing names (conf, environment, or a default file found)."""
    return [role for role in ("worker", "client") if not _named(config, role)]


def ensure(config: Config) -> list[Path]:
    """Before fab starts runq: the default secret file (``var/secrets/ROLE.secret``) of each role
    nothing names yet, made 0600 in a 0700 directory, so the deployment is private to this user.
    -> the files made (reload conf afterwards: it finds them)."""
    if not missing(config):
        return []
    Paths(config.var).make()
    made = []
    try:
        for role in missing(config):
            made.append(auth.write_secret(resolve(config, auth.DEFAULT_FILES[role])))
        made[0].parent.chmod(0o700)
    except (auth.SecretError, OSError) as exc:
        raise OpsError(f"cannot make the {role} secret: {exc}") from None
    return made


def left_open(computing: int) -> str:
    return (f"secrets: none configured, and {computing} worker(s) are computing runs, which would be lost if fab "
            "made secrets now (those workers could no longer reach runq): this installation stays as it is, open to "
            "other accounts on this host.  Make it private once its runs are done: `fab all.drain`, then `fab all` "
            "(docs/SECURITY.md)")


def before_runq(config: Config) -> list[str]:
    """`fab runq.run`: ensure(), as the note to print."""
    made = ensure(config)
    return [ensured_note(made)] if made else []


def ensured_note(made: list[Path]) -> str:
    return (f"secrets: none configured, so fab made {' and '.join(map(str, made))} (mode 0600, directory 0700); "
            "runq, runweb, fab and the workers use them, other accounts on this host cannot (docs/SECURITY.md)")


def create(config: Config, force: bool = False) -> list[str]:
    """`fab runq.secrets`: write both secret files; the lines saying where they are (absolute), who
    finds them there and what copies them to other hosts."""
    files = auth.create_secret_files(config.runq, lambda p: resolve(config, p), force=force)
    lines = [f"{role} secret: {path} " + ("(written, mode 0600)" if new else
                                          "(already there, kept; --force replaces it, which locks out every "
                                          "program still using it)") for role, (path, new) in files.items()]
    written = {role: path for role, (path, _) in files.items()}
    default = [role for role in written
               if getattr(config.runq, f"{role}_secret_file") in ("", auth.DEFAULT_FILES[role])]
    if default:
        lines.append(f"runq, runweb, fab and the workers using the run-time directory {config.var} find "
                     f"{' and '.join(f'the {r} secret' for r in default)} there: nothing to set.  Elsewhere, set "
                     + ", ".join(f"runq.{r}_secret_file: {written[r]}" for r in default)
                     + " in conf/simx.yaml (or " + ", ".join(f"SIMX_{r.upper()}_SECRET_FILE" for r in default) + ")")
    lines.append("`fab NAME.update` and `fab all` copy the worker secret to each remote instance (the client "
                 "secret to the server instance only); a worker started by hand elsewhere needs a copy "
                 "(--secret-file FILE)." + ("  Programs already running take new secrets when they restart: once "
                 "their runs are done (`fab all.drain`), `fab all` (docs/SECURITY.md)" if any(
                     new for _, new in files.values()) else ""))
    return lines
