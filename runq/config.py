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
class SchedConfig:
    """Scheduling (runq/fairshare.py) and retries (runq/retry.py)."""
    half_life: float = 3600.0          # seconds for an owner's recorded usage to halve
    shares: tuple = ()                 # ((owner, share), ...) from the mapping `sched.shares`; others get 1
    backoff_base: float = 1.0          # seconds before the first retry of a transient failure
    backoff_max: float = 60.0          # the delay doubles per failure up to this

    def share_of(self, owner: str) -> float:
        return dict(self.shares).get(owner, 1.0)


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
    sched: SchedConfig = SchedConfig()


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
}
SECTIONS = {"runq": RunqConfig, "batch": BatchDefaults, "runweb": RunwebConfig, "worker": WorkerConfig,
            "sched": SchedConfig}
MAX_SHARE = 1e6


def _shares(name: str, value) -> tuple:
    """`sched.shares`: a mapping of owner name to a positive number (its share)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(f"configuration {name}: expected a mapping of owner to share, like {{alice: 3}}")
    out = []
    for owner, share in value.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= MAX_SHARE:
            raise ConfigError(f"configuration {name}.{owner}: a share must be a number above 0 and "
                              f"at most {MAX_SHARE:g}, not {share!r}")
        out.append((str(owner), float(share)))
    return tuple(sorted(out))


# (section, key) -> converter for values that are not plain scalars or lists
CONVERTERS = {("sched", "shares"): _shares}


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
        values = {k: CONVERTERS[(section, k)](f"{section}.{k}", given[k]) if (section, k) in CONVERTERS
                  else _convert(section, k, given[k], fields[k]) for k in given}
        built[section] = cls(**values)
    if built["sched"].half_life <= 0:
        raise ConfigError("configuration sched.half_life: must be a positive number of seconds")
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
