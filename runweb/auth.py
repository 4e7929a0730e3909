"""Who is calling runweb, and as whom it acts.

* Credentials (HTTP basic auth), from any address, are checked against the users
  file and the request acts as that user (an admin if the file says so).
* A request from a trusted network (loopback by default) without credentials
  acts as admin: its batch is owned by its ``user`` field.  With
  ``runweb.behind_proxy: true`` nobody is trusted (the proxy's loopback address
  would otherwise make everyone trusted).  The address is the socket's
  (``req.remote_addr``); X-Forwarded-For is never trusted.
* Failed logins are counted by runq (runweb keeps no state) per address and per
  user name; past the limit, 429 with Retry-After, before the password is checked.

Passwords are stored hashed with scrypt as ``scrypt$n$r$p$salt_b64$hash_b64``
in the users file, a YAML mapping of ``name: hash`` (a plain user) or
``name: {password: hash, admin: true}`` (``python -m runweb.users`` writes it).
The file is re-read when it changes, looked at no more than once every few
seconds, so adding a user needs no restart.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from pathlib import Path
from typing import Iterable

import yaml

from simx.config import ConfigError

from . import peers
from .errors import NotAuthenticated, TooManyLogins

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES, SALT_BYTES = 2**14, 8, 1, 32, 16
MAXMEM = 256 * 1024 * 1024  # refuse hashes whose parameters would need more memory than this


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None,
                  n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=KEY_BYTES)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def check_password(password: str, stored: str) -> bool:
    """True if password matches the stored hash; False for a wrong password or an unusable hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt, validate=True),
                                n=int(n), r=int(r), p=int(p), maxmem=MAXMEM, dklen=len(expected))
    except (ValueError, binascii.Error, AttributeError, MemoryError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _entry(path, name, value) -> dict:
    """One user's line: ``hash`` (a plain user, the old form) or ``{password: hash, admin: bool}``."""
    if isinstance(value, str):
        return {"password": value, "admin": False}
    if (isinstance(value, dict) and isinstance(value.get("password"), str)
            and isinstance(value.get("admin", False), bool) and set(value) <= {"password", "admin"}):
        return {"password": value["password"], "admin": value.get("admin", False)}
    raise ValueError(f"{path}: user {name!r}: expected a password hash or {{password: HASH, admin: true|false}}")


def read_users(path: Path) -> dict[str, dict]:
    """name -> {password: hash, admin: bool} from the users file; {} when there is no file.
    Raises ValueError/YAMLError if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of user name to password hash")
    return {str(name): _entry(path, name, value) for name, value in data.items()}


class Users:
    """The users file as runweb sees it: re-read when its stat changes, checked every `recheck` seconds."""

    def __init__(self, path: Path, recheck: float = 3.0, clock=time.monotonic):
        self.path, self.recheck, self.clock = Path(path), recheck, clock
        self._users: dict[str, dict] = {}
        self._stamp = None
        self._checked: float | None = None
        # name -> sha256(hash, password) of the last good login: scrypt costs ~50 ms, and a
        # polling client would pay it on every request.  Cleared whenever the file changes.
        self._verified: dict[str, bytes] = {}

    def current(self) -> dict[str, dict]:
        now = self.clock()
        if self._checked is not None and now - self._checked < self.recheck:
            return self._users
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp, self._users = stamp, self._load() if stamp else {}
            self._verified.clear()
        return self._users

    def _load(self) -> dict[str, dict]:
        try:
            return read_users(self.path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.error("users file %s is unusable, so no user can log in: %s", self.path, exc)
            return {}

    def is_admin(self, name: str) -> bool:
        return bool(self.current().get(name, {}).get("admin"))

    def check(self, name: str, password: str) -> bool:
        stored = self.current().get(name, {}).get("password")
        if stored is None:
            check_password(password, _dummy_hash())  # same time as for a real user: names stay secret
            return False
        token = hashlib.sha256(f"{stored}\0{password}".encode("utf-8")).digest()
        if hmac.compare_digest(self._verified.get(name, b""), token):
            return True
        if check_password(password, stored):
            self._verified[name] = token
            return True
        return False


def is_trusted(addr: str | None, networks: Iterable[ipaddress._BaseNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False  # e.g. a unix socket: no address, no trust
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(name, password) from an ``Authorization: Basic ...`` header, or None."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, binascii.Error):
        return None
    return (name, password) if sep else None


def server_end(env) -> tuple[str, int] | None:
    """runweb's end of the request's connection (gunicorn gives the socket), or None."""
    try:
        end = env["gunicorn.socket"].getsockname()
    except (KeyError, AttributeError, OSError):
        return None
    return (end[0], end[1]) if isinstance(end, tuple) else None


class Authenticate:
    """Middleware: sets ``req.context.actor`` (user name or None) and ``req.context.admin``."""

    def __init__(self, trusted: Iterable[str], users: Users, client, behind_proxy: bool = False,
                 own_user=peers.is_own_user):
        try:
            self.networks = [] if behind_proxy else [ipaddress.ip_network(net, strict=False) for net in trusted]
        except ValueError as exc:
            raise ConfigError(f"configuration runweb.trusted: {exc}") from None
        self.users, self.client = users, client
        self.own_user = own_user   # (address, port, server end) -> whether that local client runs as runweb's user

    def process_request(self, req, resp) -> None:
        req.context.actor, req.context.admin = None, False
        credentials = basic_credentials(req.get_header("Authorization"))
        if credentials is None:
            if is_trusted(req.remote_addr, self.networks) and self.trusted_account(req):
                req.context.admin = True  # loopback, no credentials, runweb's own account: the operator
                return
            raise NotAuthenticated("authentication required: use HTTP basic auth (curl -u NAME:PASSWORD)")
        name, password = credentials
        self._throttle(req, name, failed=False)
        if not self.users.check(name, password):
            self._throttle(req, name, failed=True)  # counted: past the limit, the next try gets 429
            raise NotAuthenticated("wrong user name or password")
        req.context.actor, req.context.admin = name, self.users.is_admin(name)

    def trusted_account(self, req) -> bool:
        """A trusted network's client on this host must be runweb's own account (runweb/peers.py):
        loopback is reachable from every account of the host.  One from elsewhere: its network."""
        addr = req.remote_addr or ""
        try:
            local = ipaddress.ip_address(addr).is_loopback
        except ValueError:
            return False
        return not local or self.own_user(addr, req.env.get("REMOTE_PORT"), server_end(req.env))

    def _throttle(self, req, name: str, failed: bool) -> None:
        """Ask runq whether this address or name must wait (recording a failure first if `failed`)."""
        shown = "".join(ch if ch.isprintable() else "?" for ch in name[:200])  # the name as runq counts it
        reply = self.client.request("LoginThrottle", address=req.remote_addr or "", user=shown, failed=failed)
        wait = reply.get("retry_after") if reply.get("status") == "ok" else None
        if not failed and isinstance(wait, (int, float)) and wait > 0:
            raise TooManyLogins(wait)
