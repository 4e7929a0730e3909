"""Where runweb is and who I am: flags, else environment, else ~/.config/simx/config.yaml, else defaults.

The file (``$XDG_CONFIG_HOME/simx/config.yaml`` when that is set) is a YAML mapping with any of
``url``, ``user``, ``password``, ``cacert``; it may hold a password, so it must be readable by its
owner only (mode 0600): anything else is refused with a message saying how to fix it.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import yaml

DEFAULT_URL = "http://127.0.0.1:8097"   # runweb's daemon port
KEYS = ("url", "user", "password", "cacert")
ENV = {"url": "SIMX_URL", "user": "SIMX_USER", "password": "SIMX_PASSWORD", "cacert": "SIMX_CACERT"}


class SettingsError(Exception):
    """A setting that cannot be used; the message names it and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str = DEFAULT_URL
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    cacert: str | None = None


def config_path(env: dict) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "simx" / "config.yaml"


def read_file(path: Path) -> dict:
    """The settings in the config file ({} when there is none)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}) and may hold a "
                          f"password: run `chmod 600 {path}`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must be a YAML mapping with keys {', '.join(KEYS)}")
    for key, value in data.items():
        if key not in KEYS:
            raise SettingsError(f"{path}: unknown key {key!r}; known keys: {', '.join(KEYS)}")
        if value is not None and not isinstance(value, (str, int)):
            raise SettingsError(f"{path}: {key} must be a string")
    return {k: str(v) for k, v in data.items() if v is not None}


def load(flags: dict, env: dict | None = None) -> Settings:
    """Settings from `flags` (None = not given), then `env` (os.environ), then the file."""
    env = os.environ if env is None else env
    values = {k: v for k, v in flags.items() if k in KEYS and v is not None}
    for key in KEYS:
        if key not in values and env.get(ENV[key]):
            values[key] = env[ENV[key]]
    if any(k not in values for k in KEYS):
        for key, value in read_file(config_path(env)).items():
            values.setdefault(key, value)
    url = values.get("url", DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"runweb's address must start with http:// or https://, not {url[:60]!r}")
    if values.get("cacert") and not Path(values["cacert"]).is_file():
        raise SettingsError(f"CA certificate {values['cacert']} does not exist (--cacert, SIMX_CACERT)")
    return Settings(url=url, user=values.get("user"), password=values.get("password"), cacert=values.get("cacert"))
