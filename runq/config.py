"""Configuration: conf/simx.yaml, then the environment, then flags -> frozen dataclasses.

Only entry points call ``load()``; everything else takes the dataclasses.
Relative paths resolve against the simx root (the directory holding conf/).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one peer may make runq hold (runq.limits; bytes and seconds)."""
    max_output: int = 10 * 1024 * 1024        # unsent bytes per connection before runq stops reading it
    max_input_total: int = 256 * 1024 * 1024  # buffered half-frames over all connections
    max_client_frame: int = 1024 * 1024       # also for a connection that has not said who it is
    max_worker_frame: int = 10 * 1024 * 1024
    frame_timeout: float = 30.0               # to finish a frame once begun
    auth_timeout: float = 30.0                # to say who it is (role) after connecting, TLS included
    worker_idle_factor: float = 3.0           # x heartbeat_interval of silence ends a worker's connection
    max_unauth_per_addr: int = 64             # connections from one address not yet knowing their role


@dataclasses.dataclass(frozen=True)
class Tls:
    """runq.tls: runq serves TLS when cert and key are set; peers verify runq against ca (TLS on when set)."""
    cert: str = ""
    key: str = ""
    ca: str = ""


@dataclasses.dataclass(frozen=True)
class RunwebTls:
    """runweb.tls: gunicorn's certfile and keyfile; HTTPS when both are set."""
    cert: str = ""
    key: str = ""


@dataclasses.dataclass(frozen=True)
class RunqConfig:
    host: str = "127.0.0.1"
    port: int = 8096
    listen: tuple[str, ...] = ("127.0.0.1",)
    db_url: str = "sqlite:///var/data/runq.sqlite"
    heartbeat_interval: float = 10.0
    lease: float = 30.0
    grace: float = 60.0
    worker_token: str = ""
    retention_days: float = 0.0
    log_level: str = "INFO"
    limits: Limits = Limits()
    tls: Tls = Tls()
    tls_server_name: str = ""   # the name peers check in runq's certificate; "" = host


@dataclasses.dataclass(frozen=True)
class BatchDefaults:
    max_attempts: int = 3
    max_requeues: int = 10
    time_limit: float | None = None


@dataclasses.dataclass(frozen=True)
class RunwebConfig:
    port: int = 8097
    run_port: int = 4567
    bind: str = "127.0.0.1"
    workers: int = 2
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    users_file: str = "var/runweb-users.yaml"
    max_body: int = 1048576
    tls: RunwebTls = RunwebTls()


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    retry_delay_max: float = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    root: Path
    var: Path  # run-time files: data, supervisor config, logs, pids (SIMX_VAR)
    runq: RunqConfig
    batch: BatchDefaults
    runweb: RunwebConfig
    worker: WorkerConfig


# environment variable -> (section, key)
ENV = {
    "RUNQ_HOST": ("runq", "host"),
    "RUNQ_PORT": ("runq", "port"),
    "RUNQ_LISTEN": ("runq", "listen"),
    "SIMX_DB_URL": ("runq", "db_url"),
    "SIMX_WORKER_TOKEN": ("runq", "worker_token"),
    "SIMX_LOG_LEVEL": ("runq", "log_level"),
    "RUNQ_HEARTBEAT": ("runq", "heartbeat_interval"),
    "RUNQ_LEASE": ("runq", "lease"),
    "RUNQ_GRACE": ("runq", "grace"),
    "RUNWEB_PORT": ("runweb", "port"),
    "RUNWEB_BIND": ("runweb", "bind"),
    "RUNWEB_USERS": ("runweb", "users_file"),
    "SIMX_TLS_CERT": ("runq", "tls.cert"),
    "SIMX_TLS_KEY": ("runq", "tls.key"),
    "SIMX_TLS_CA": ("runq", "tls.ca"),
    "RUNWEB_TLS_CERT": ("runweb", "tls.cert"),
    "RUNWEB_TLS_KEY": ("runweb", "tls.key"),
}
SECTIONS = {"runq": RunqConfig, "batch": BatchDefaults, "runweb": RunwebConfig, "worker": WorkerConfig}


def _convert(section: str, key: str, value, default):
    """Coerce a value to the type of the default; raise ConfigError naming section.key."""
    name = f"{section}.{key}"
    if dataclasses.is_dataclass(default):
        return _build(name, value, type(default))
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list")
            return tuple(str(v) for v in value)
        if value is None:
            if default is None:
                return None
            raise ValueError("must not be empty")
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            out = int(value)
            if out < 0:
                raise ValueError("must not be negative")
            return out
        if isinstance(default, float) or default is None:
            out = float(value)
            if out < 0:
                raise ValueError("must not be negative")
            return out
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configuration {name}: bad value {value!r} ({exc})") from None


def _build(name: str, given, cls):
    """One section (or nested mapping such as runq.limits) -> its frozen dataclass."""
    given = given or {}
    if not isinstance(given, dict):
        raise ConfigError(f"configuration {name}: expected a mapping")
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = set(given) - set(fields)
    if unknown:
        raise ConfigError(f"configuration {name}.{sorted(unknown, key=str)[0]}: unknown key")
    return cls(**{k: _convert(name, k, given[k], fields[k]) for k in given})


def read_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping ({} when the file is absent)."""
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {what}")
    return raw


def load(path: str | Path | None = None, env: dict | None = None, root: Path = ROOT, **overrides) -> Config:
    """Read the conf file (default conf/simx.yaml under root), apply env, then overrides.

    overrides are ``section_key=value`` pairs, e.g. ``runq_port=4949``; None values are ignored.
    """
    env = os.environ if env is None else env
    path = Path(path) if path else root / "conf" / "simx.yaml"
    raw = read_mapping(path, "a mapping of sections")
    for var, (section, key) in ENV.items():
        if env.get(var) not in (None, ""):
            parent, _, leaf = key.rpartition(".")
            target = raw.setdefault(section, {})
            if parent:
                if not isinstance(target.get(parent), dict):
                    target[parent] = {}
                target = target[parent]
            target[leaf] = env[var]
    for name, value in overrides.items():
        if value is None:
            continue
        section, _, key = name.partition("_")
        raw.setdefault(section, {})[key] = value
    built = {section: _build(section, raw.get(section), cls) for section, cls in SECTIONS.items()}
    var = Path(env["SIMX_VAR"]) if env.get("SIMX_VAR") else root / "var"
    return Config(root=root, var=var.resolve(), **built)


def resolve_db_url(url: str, root: Path = ROOT, var: Path | None = None) -> str:
    """Make a relative sqlite path absolute and create its directory.

    A relative path resolves against the simx root, except that a leading ``var/``
    means the run-time directory (SIMX_VAR when set), so the default database moves
    with it.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or ":memory:" in url:
        return url
    path = Path(url[len(prefix):])
    if not path.is_absolute():
        parts = path.parts
        path = (var / Path(*parts[1:])) if (var is not None and parts and parts[0] == "var") else root / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def resolve_path(path: str, root: Path = ROOT) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p
