"""conf/hosts.yaml: the instances (hosts) that run simx programs, their worker pools, the server.

An instance is one host with one supervisord: ``local`` is this host (the
default when the file or its entry is absent: one pool of 3 dummy workers);
remote instances carry what Fabric needs to reach them (user, host, port,
key, dir).  ``server:`` names the instance that runs runq and runweb
(default ``local``); ``ssh:`` holds the known_hosts file and connect timeout.
Pure: a file in, frozen dataclasses out; a bad value raises ConfigError naming
the key.  An instance name is a fab namespace (``fab NAME.start``), so it must
be lowercase letters, digits and '-', and not one of the other task names.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path


from simx.config import ConfigError, read_mapping

from . import paths

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")        # pool names
_INSTANCE = re.compile(r"^[a-z0-9-]+$")        # instance names: fab namespaces
TASK_NAMES = frozenset({"all", "server", "runq", "runweb", "demo", "shutdown", "help"})


@dataclasses.dataclass(frozen=True)
class Pool:
    """A set of identical workers: `count` processes of one supervisor program."""
    name: str
    engine: str = "dummy"
    count: int = 3
    group: str = ""
    user: str = ""
    cost: float = 1
    speed: float = 1
    priority: float = 0
    retry_delay: float = 10

    @property
    def program(self) -> str:
        return f"worker-{self.name}"

    def process_names(self) -> list[str]:
        return [f"{self.program}_{i:02d}" for i in range(self.count)]


@dataclasses.dataclass(frozen=True)
class Instance:
    """A host running simx programs under its own supervisord."""
    name: str
    host: str = "localhost"
    user: str = ""                # ssh user (remote instances)
    port: int = 22                # ssh port (remote instances)
    key: str = ""                 # ssh private key file (remote instances)
    dir: str = ""                 # simx checkout on that host; "" = this checkout
    runq_host: str | None = None  # where its workers connect; None = runq.host (RUNQ_HOST)
    runq_port: int | None = None  # None = runq.port (RUNQ_PORT)
    python: str = ""              # the host's Python 3.11+ (default: the newest python3.X found there)
    pools: tuple[Pool, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.name == "local"


DEFAULT_LOCAL = Instance(name="local", pools=(Pool(name="dummy"),))


@dataclasses.dataclass(frozen=True)
class Ssh:
    """How fab reaches remote instances: host keys are checked against known_hosts."""
    known_hosts: str = "~/.ssh/known_hosts"   # SIMX_KNOWN_HOSTS
    connect_timeout: float = 10.0             # SIMX_SSH_TIMEOUT, seconds

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts).expanduser()


@dataclasses.dataclass(frozen=True)
class Fleet:
    """Everything conf/hosts.yaml says."""
    instances: dict
    server: str = "local"
    ssh: Ssh = Ssh()

    @property
    def server_instance(self) -> Instance:
        return self.instances[self.server]


def _coerce(kind: str, value, where: str):
    """Convert one value to the annotated type `kind`; raise ConfigError naming `where`."""
    optional = kind.endswith("| None")
    base = kind.split("|")[0].strip()
    try:
        if value is None or value == "" and base != "str":
            if optional:
                return None
            if base == "str":
                return ""
            raise ValueError("must not be empty")
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            raise ValueError(f"expected {base}")
        if base == "str":
            return str(value)
        if base == "int" and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected a whole number")
        out = int(value) if base == "int" else float(value)
        if base == "int" and out < 0:
            raise ValueError("must not be negative")
        return out
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad value {value!r} ({exc})") from None


def _fields(cls, raw, where: str, skip=("name", "pools")) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    kinds = {f.name: f.type for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(raw) - set(kinds) - set(skip))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key")
    return {k: _coerce(kinds[k], v, f"{where}.{k}") for k, v in raw.items() if k in kinds}


def parse_pool(raw, where: str) -> Pool:
    values = _fields(Pool, raw, where, skip=())
    name = values.pop("name", "")
    if not _NAME.match(name):
        raise ConfigError(f"{where}.name: {name!r} must be letters, digits, '-' or '_'")
    if values.get("engine") == "":
        raise ConfigError(f"{where}.engine: must not be empty")
    if values.get("retry_delay", 0) < 0:
        raise ConfigError(f"{where}.retry_delay: must not be negative")
    return Pool(name=name, **values)


def check_instance_name(name: str, where: str) -> None:
    if not _INSTANCE.match(name):
        raise ConfigError(f"{where}: instance name {name!r} must be lowercase letters, digits and '-' "
                          f"(it is a fab namespace): rename it")
    if name in TASK_NAMES:
        raise ConfigError(f"{where}: instance name {name!r} is the name of a fab task: rename it")


def parse_instance(name: str, raw, where: str) -> Instance:
    check_instance_name(name, where)
    raw = {} if raw is None else raw
    values = _fields(Instance, raw, where)
    pools_raw = raw.get("pools") or []
    if not isinstance(pools_raw, list):
        raise ConfigError(f"{where}.pools: expected a list")
    pools = tuple(parse_pool(p, f"{where}.pools[{i}]") for i, p in enumerate(pools_raw))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.pools: pool names must be unique")
    return Instance(name=name, pools=pools, **values)


def load_fleet(path: str | Path | None = None, root: Path | None = None, env=None) -> Fleet:
    """conf/hosts.yaml (under root; or `path`, e.g. SIMX_HOSTS) -> Fleet, always with a `local` instance."""
    env = {} if env is None else env
    root = root or paths.root()
    path = Path(path) if path else root / "conf" / "hosts.yaml"
    expected = "keys instances (a mapping of instance names), server, ssh"
    raw = read_mapping(path, expected)
    if set(raw) - {"instances", "server", "ssh"}:
        raise ConfigError(f"{path.name}: {sorted(set(raw) - {'instances', 'server', 'ssh'})[0]}: unknown key; "
                          f"expected {expected}")
    given = raw.get("instances") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path.name}: instances: expected a mapping of instance names")
    instances = {str(name): parse_instance(str(name), body, f"{path.name}: instances.{name}")
                 for name, body in given.items()}
    instances.setdefault("local", DEFAULT_LOCAL)
    server = str(raw.get("server") or "local")
    if server not in instances:
        raise ConfigError(f"{path.name}: server: {server!r} is not an instance (known: {', '.join(instances)})")
    ssh_raw = dict(raw.get("ssh") or {})
    if env.get("SIMX_KNOWN_HOSTS"):
        ssh_raw["known_hosts"] = env["SIMX_KNOWN_HOSTS"]
    if env.get("SIMX_SSH_TIMEOUT"):
        ssh_raw["connect_timeout"] = env["SIMX_SSH_TIMEOUT"]
    ssh = Ssh(**_fields(Ssh, ssh_raw, f"{path.name}: ssh", skip=()))
    if ssh.connect_timeout <= 0:
        raise ConfigError(f"{path.name}: ssh.connect_timeout: must be positive")
    return Fleet(instances=instances, server=server, ssh=ssh)


def load(path: str | Path | None = None, root: Path | None = None) -> dict[str, Instance]:
    """conf/hosts.yaml (under root) -> {name: Instance}, always with a `local` entry."""
    return load_fleet(path, root).instances
