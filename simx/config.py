"""Configuration: conf/simx.yaml, then the environment, then flags -> frozen dataclasses.

Only entry points call ``load()``; everything else takes the dataclasses.
Relative paths resolve against the simx root (the directory holding conf/).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from . import datatypes as dt
from .auth import DEFAULT_FILES, NUMERIC_TRAITS, Bounds

ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key."""


def setting(default, convert):
    """A field whose value goes through the named converter `convert` (simx/datatypes.py); a
    field without one gets the converter of its default's type (dt.for_default)."""
    return dataclasses.field(default=default, metadata={"convert": convert})


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one peer may make runq hold (runq.limits; bytes and seconds)."""
    max_output: int = 10 * 1024 * 1024        # unsent bytes per connection before runq stops reading it
    max_input_total: int = 256 * 1024 * 1024  # buffered half-frames over all connections
    max_client_frame: int = 1024 * 1024 + 65536   # a 1 MiB param + envelope; also before a peer says who it is
    max_worker_frame: int = 10 * 1024 * 1024
    frame_timeout: float = 30.0               # to finish a frame once begun
    auth_timeout: float = 30.0                # to say who it is (role) after connecting, TLS included
    worker_idle_factor: float = 3.0           # x heartbeat_interval of silence ends a worker's connection
    max_unauth_per_addr: int = 64             # connections from one address not yet knowing their role


@dataclasses.dataclass(frozen=True)
class Logins:
    """runq.logins: wrong passwords allowed in `window` seconds, past which runweb answers 429."""
    pair: int = setting(10, dt.positive_int)       # from one address for one user name
    address: int = setting(30, dt.positive_int)    # from one address, for any names
    user: int = setting(300, dt.positive_int)      # for one user name from all addresses (the ceiling)
    window: float = setting(60.0, dt.positive_number)


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
    port: int = setting(8096, dt.port)
    listen: tuple[str, ...] = ("127.0.0.1",)
    db_url: str = "sqlite:///var/data/runq.sqlite"
    # SQLite's PRAGMA synchronous (WAL): NORMAL loses no commit when runq crashes, only (maybe) the
    # last commits when the machine loses power; FULL and EXTRA fsync every commit.  Not for other databases.
    synchronous: str = "NORMAL"
    heartbeat_interval: float = setting(10.0, dt.positive_number)
    lease: float = setting(30.0, dt.positive_number)
    grace: float = setting(60.0, dt.non_negative_number)
    worker_secret_file: str = ""      # see docs/SECURITY.md; "" = none (loopback only)
    client_secret_file: str = ""
    worker_secrets: tuple = ()         # WorkerSecretConf entries: more secrets, each with trait bounds
    retention_days: float = 0.0
    log_level: str = setting("INFO", dt.log_level)
    files_dir: str = "var/files"       # runs' output files (runq/files.py); may be a shared directory
    files_max_run: int = 100 * 1024 * 1024   # bytes of output files per run
    # runq takes module:Class engines no declared python engine has (runq/core/submit.py)
    allow_undeclared_engines: bool = False
    # seconds another process may hold a lock on the database before runq ends (runq/committer.py)
    lock_limit: float = setting(600.0, dt.positive_number)
    limits: Limits = Limits()
    logins: Logins = Logins()
    tls: Tls = Tls()
    tls_server_name: str = ""   # the name peers check in runq's certificate; "" = host


@dataclasses.dataclass(frozen=True)
class WorkerSecretConf:
    """One entry of runq.worker_secrets: a secret file and what its workers may announce."""

    name: str
    file: str
    bounds: Bounds = Bounds()


@dataclasses.dataclass(frozen=True)
class BatchDefaults:
    max_attempts: int = setting(3, dt.positive_int)
    max_requeues: int = 10
    time_limit: float | None = setting(None, dt.optional(dt.positive_number))


@dataclasses.dataclass(frozen=True)
class SchedConfig:
    """Scheduling (runq/fairshare.py) and retries (runq/retry.py)."""
    half_life: float = setting(3600.0, dt.positive_number)   # seconds for an owner's usage to halve
    shares: tuple = ()                 # ((owner, share), ...) from the mapping `sched.shares`; others get 1
    backoff_base: float = 1.0          # seconds before the first retry of a transient failure
    backoff_max: float = 60.0          # the delay doubles per failure up to this

    def share_of(self, owner: str) -> float:
        return dict(self.shares).get(owner, 1.0)


@dataclasses.dataclass(frozen=True)
class RunwebConfig:
    port: int = setting(8097, dt.port)
    run_port: int = setting(4567, dt.port)
    bind: str = "127.0.0.1"
    # host names runweb answers besides localhost, 127.0.0.1, ::1, the bound address and this
    # machine's names (runweb/hosts.py: other Host headers get 421); "*.example.org", "*"
    hosts: tuple[str, ...] = ()
    workers: int = setting(2, dt.positive_int)
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    users_file: str = "var/runweb-users.yaml"
    max_body: int = 1048576
    # gunicorn: how a few slow sockets are kept from stalling everyone (docs: runweb/__main__.py)
    worker_class: str = "gthread"
    threads: int = setting(32, dt.positive_int)
    timeout: int = setting(30, dt.positive_int)
    keepalive: int = 2
    io_timeout: float = 5.0
    # true when a reverse proxy on this host forwards requests: loopback peers are then not trusted
    behind_proxy: bool = False
    # bytes of serialized GET /batch/{id} pages each runweb process keeps (runq confirms each is
    # current on every request; runweb/page_cache.py); 0 keeps none.  RUNWEB_PAGE_CACHE
    page_cache: int = 32 * 1024 * 1024
    tls: RunwebTls = RunwebTls()


@dataclasses.dataclass(frozen=True)
class QuotasConfig:
    """Per-user limits on what is queued (runq/core/quotas.py); null: unlimited."""
    active_batches: int | None = setting(None, dt.optional(dt.positive_int))
    waiting_runs: int | None = setting(None, dt.optional(dt.positive_int))
    users: tuple = ()   # ((user, {active_batches, waiting_runs}), ...) from the mapping `quotas.users`


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
    quotas: QuotasConfig = QuotasConfig()


# environment variable -> (section, key)
ENV = {
    "RUNQ_HOST": ("runq", "host"),
    "RUNQ_PORT": ("runq", "port"),
    "RUNQ_LISTEN": ("runq", "listen"),
    "SIMX_DB_URL": ("runq", "db_url"),
    "SIMX_WORKER_SECRET_FILE": ("runq", "worker_secret_file"),
    "SIMX_CLIENT_SECRET_FILE": ("runq", "client_secret_file"),
    "SIMX_LOG_LEVEL": ("runq", "log_level"),
    "SIMX_DB_SYNCHRONOUS": ("runq", "synchronous"),
    "SIMX_FILES_DIR": ("runq", "files_dir"),
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
    "RUNWEB_PAGE_CACHE": ("runweb", "page_cache"),
    "SIMX_TLS_CERT": ("runq", "tls.cert"),
    "SIMX_TLS_KEY": ("runq", "tls.key"),
    "SIMX_TLS_CA": ("runq", "tls.ca"),
    "RUNWEB_TLS_CERT": ("runweb", "tls.cert"),
    "RUNWEB_TLS_KEY": ("runweb", "tls.key"),
}
SECTIONS = {"runq": RunqConfig, "batch": BatchDefaults, "runweb": RunwebConfig, "worker": WorkerConfig,
            "sched": SchedConfig, "quotas": QuotasConfig}
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


SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")


def _synchronous(name: str, value) -> str:
    """`runq.synchronous`: SQLite's synchronous level; OFF is refused (a crash could lose commits)."""
    level = str(value).strip().upper()
    if level not in SYNCHRONOUS:
        raise ConfigError(f"configuration {name}: must be one of {', '.join(SYNCHRONOUS)}, not {value!r}"
                          + (" (OFF could lose committed runs in a crash)" if level == "OFF" else ""))
    return level


def _user_quotas(name: str, value) -> tuple:
    """`quotas.users`: user -> {active_batches, waiting_runs} (each a positive integer or null)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(f"configuration {name}: expected a mapping of user to quotas, like {{ann: {{waiting_runs: 1000}}}}")
    out = []
    for user, quotas in value.items():
        if not isinstance(quotas, dict) or set(quotas) - {"active_batches", "waiting_runs"}:
            raise ConfigError(f"configuration {name}.{user}: expected a mapping with active_batches and/or waiting_runs")
        try:
            out.append((str(user), tuple(sorted((k, dt.optional(dt.positive_int)(v)) for k, v in quotas.items()))))
        except ValueError as exc:
            raise ConfigError(f"configuration {name}.{user}: {exc}") from None
    return tuple(sorted(out))


# (section, key) -> converter for values that are not plain scalars or lists
CONVERTERS = {("sched", "shares"): _shares, ("runq", "synchronous"): _synchronous, ("quotas", "users"): _user_quotas}


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


def _convert(section: str, key: str, value, field):
    """The value of section.key through its named converter; ConfigError naming section.key."""
    name = f"{section}.{key}"
    if (section, key) in REMOVED:
        raise ConfigError(f"configuration {name}: {REMOVED[(section, key)]}")
    if (section, key) == ("runq", "worker_secrets"):
        return worker_secrets(value)
    if (section, key) in CONVERTERS:
        return CONVERTERS[(section, key)](name, value)
    default = field.default
    if dataclasses.is_dataclass(default):
        return _build(name, value, type(default))
    convert = field.metadata.get("convert") or dt.for_default(default)
    try:
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configuration {name}: {exc}") from None


def _build(name: str, given, cls):
    """One section (or nested mapping such as runq.limits) -> its frozen dataclass."""
    given = given or {}
    if not isinstance(given, dict):
        raise ConfigError(f"configuration {name}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(given) - set(fields) - {k for s, k in REMOVED if s == name}   # removed keys: their own error
    if unknown:
        raise ConfigError(f"configuration {name}.{sorted(unknown, key=str)[0]}: unknown key")
    for k in given:
        if (name, k) in REMOVED:
            raise ConfigError(f"configuration {name}.{k}: {REMOVED[(name, k)]}")
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
    for var, why in REMOVED_ENV.items():
        if env.get(var) not in (None, ""):
            raise ConfigError(f"environment {why}")
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
    if built["sched"].half_life <= 0:
        raise ConfigError("configuration sched.half_life: must be a positive number of seconds")
    var = (Path(env["SIMX_VAR"]) if env.get("SIMX_VAR") else root / "var").resolve()
    built["runq"] = default_secrets(built["runq"], var)
    return Config(root=root, var=var, **built)


def default_secrets(runq: RunqConfig, var: Path) -> RunqConfig:
    """A role whose secret conf and environment name none uses the file fab makes for it
    (``var/secrets/ROLE.secret``, docs/SECURITY.md) when that file exists, so runq, runweb, fab,
    the workers and the benches of one run-time directory agree without a setting.  A file
    this user cannot even see (another account's 0700 directory) is not there."""
    named = {"worker": runq.worker_secret_file or runq.worker_secrets, "client": runq.client_secret_file}
    found = {f"{role}_secret_file": path for role, path in DEFAULT_FILES.items()
             if not named[role] and os.path.exists(resolve_var_path(path, var=var))}
    return dataclasses.replace(runq, **found) if found else runq


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
