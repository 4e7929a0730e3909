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
    # gunicorn: how a few slow sockets are kept from stalling everyone (docs: runweb/__main__.py)
    worker_class: str = "gthread"
    threads: int = 32
    timeout: int = 30
    keepalive: int = 2
    io_timeout: float = 5.0
    # true when a reverse proxy on this host forwards requests: loopback peers are then not trusted
    behind_proxy: bool = False


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
    "RUNWEB_WORKER_CLASS": ("runweb", "worker_class"),
    "RUNWEB_THREADS": ("runweb", "threads"),
    "RUNWEB_IO_TIMEOUT": ("runweb", "io_timeout"),
    "RUNWEB_BEHIND_PROXY": ("runweb", "behind_proxy"),
}
SECTIONS = {"runq": RunqConfig, "batch": BatchDefaults, "runweb": RunwebConfig, "worker": WorkerConfig}


def _convert(section: str, key: str, value, default):
    """Coerce a value to the type of the default; raise ConfigError naming section.key."""
    name = f"{section}.{key}"
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
            raw.setdefault(section, {})[key] = env[var]
    for name, value in overrides.items():
        if value is None:
            continue
        section, _, key = name.partition("_")
        raw.setdefault(section, {})[key] = value
    built = {}
    for section, cls in SECTIONS.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"configuration {section}: expected a mapping")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = set(given) - set(fields)
        if unknown:
            raise ConfigError(f"configuration {section}.{sorted(unknown)[0]}: unknown key")
        values = {k: _convert(section, k, given[k], fields[k]) for k in given}
        built[section] = cls(**values)
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
