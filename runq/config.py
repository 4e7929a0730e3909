"""Configuration: conf/simx.yaml, then the environment, then flags -> frozen dataclasses.

Only entry points call ``load()``; everything else takes the dataclasses.
Relative paths resolve against the simx root (the directory holding conf/).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from .auth import NUMERIC_TRAITS, Bounds

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
    worker_secret_file: str = ""      # see docs/SECURITY.md; "" = none (loopback only)
    client_secret_file: str = ""
    worker_secrets: tuple = ()         # WorkerSecretConf entries: more secrets, each with trait bounds
    retention_days: float = 0.0
    log_level: str = "INFO"
    files_dir: str = "var/files"       # runs' output files (runq/files.py); may be a shared directory
    files_max_run: int = 100 * 1024 * 1024   # bytes of output files per run


@dataclasses.dataclass(frozen=True)
class WorkerSecretConf:
    """One entry of runq.worker_secrets: a secret file and what its workers may announce."""

    name: str
    file: str
    bounds: Bounds = Bounds()


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
    "SIMX_WORKER_SECRET_FILE": ("runq", "worker_secret_file"),
    "SIMX_CLIENT_SECRET_FILE": ("runq", "client_secret_file"),
    "SIMX_LOG_LEVEL": ("runq", "log_level"),
    "SIMX_FILES_DIR": ("runq", "files_dir"),
    "RUNQ_HEARTBEAT": ("runq", "heartbeat_interval"),
    "RUNQ_LEASE": ("runq", "lease"),
    "RUNQ_GRACE": ("runq", "grace"),
    "RUNWEB_PORT": ("runweb", "port"),
    "RUNWEB_BIND": ("runweb", "bind"),
    "RUNWEB_USERS": ("runweb", "users_file"),
}
SECTIONS = {"runq": RunqConfig, "batch": BatchDefaults, "runweb": RunwebConfig, "worker": WorkerConfig}


# Keys that are gone, and what replaces them.
REMOVED = {
    ("runq", "worker_token"): "runq.worker_token is gone: workers now prove a secret without sending it. "
                              "Create secret files with `fab runq.secrets` and set runq.worker_secret_file "
                              "(and runq.client_secret_file); see docs/SECURITY.md",
}
REMOVED_ENV = {"SIMX_WORKER_TOKEN": "SIMX_WORKER_TOKEN is gone: set SIMX_WORKER_SECRET_FILE to a secret file "
                                    "made by `fab runq.secrets` (see docs/SECURITY.md)"}


def _range(name: str, value) -> tuple[float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not value[0] <= value[1]):
        raise ConfigError(f"configuration {name}: expected [low, high] numbers, got {value!r}")
    return float(value[0]), float(value[1])


def worker_secrets(value) -> tuple[WorkerSecretConf, ...]:
    """runq.worker_secrets: a list of {name, file, engines, group, user, cost, speed, priority}."""
    if value in (None, ""):
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError("configuration runq.worker_secrets: expected a list of mappings")
    out, names = [], set()
    for i, entry in enumerate(value):
        where = f"runq.worker_secrets[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"configuration {where}: expected a mapping")
        unknown = set(entry) - {"name", "file", "engines", "group", "user", *NUMERIC_TRAITS}
        if unknown:
            raise ConfigError(f"configuration {where}.{sorted(unknown)[0]}: unknown key")
        name, file = entry.get("name"), entry.get("file")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"configuration {where}.name: a unique non-empty name is required")
        if not isinstance(file, str) or not file:
            raise ConfigError(f"configuration {where}.file: the path of a secret file is required")
        engines = entry.get("engines")
        if engines is not None and (not isinstance(engines, list) or not all(isinstance(e, str) for e in engines)):
            raise ConfigError(f"configuration {where}.engines: expected a list of engine names")
        for key in ("group", "user"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ConfigError(f"configuration {where}.{key}: expected a string")
        names.add(name)
        bounds = Bounds(engines=tuple(engines) if engines is not None else None, group=entry.get("group"),
                        user=entry.get("user"),
                        **{k: _range(f"{where}.{k}", entry.get(k)) for k in NUMERIC_TRAITS})
        out.append(WorkerSecretConf(name=name, file=file, bounds=bounds))
    return tuple(out)


def _convert(section: str, key: str, value, default):
    """Coerce a value to the type of the default; raise ConfigError naming section.key."""
    name = f"{section}.{key}"
    if (section, key) in REMOVED:
        raise ConfigError(f"configuration {name}: {REMOVED[(section, key)]}")
    if (section, key) == ("runq", "worker_secrets"):
        return worker_secrets(value)
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
    for var, why in REMOVED_ENV.items():
        if env.get(var) not in (None, ""):
            raise ConfigError(f"environment {why}")
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
        unknown = set(given) - set(fields) - {k for s, k in REMOVED if s == section}
        if unknown:
            raise ConfigError(f"configuration {section}.{sorted(unknown)[0]}: unknown key")
        values = {k: _convert(section, k, given[k], fields.get(k)) for k in given}
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


def resolve_var_path(path: str, root: Path = ROOT, var: Path | None = None) -> Path:
    """A configured file path: absolute as is, a leading ``var/`` in the run-time dir, else under root."""
    p = Path(path)
    if p.is_absolute():
        return p
    if var is not None and p.parts and p.parts[0] == "var":
        return var / Path(*p.parts[1:])
    return root / p


def resolve_path(path: str, root: Path = ROOT) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p
