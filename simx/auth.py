"""Who is talking to runq: secrets, the v2 handshake's proofs, worker keys, trait bounds.

Pure logic, no sockets.  Both ends use it: runq through ``Gate`` (one
``PeerState`` per connection), the worker session and ``runq.client.handshake``
through the proof functions.  The handshake (docs/SECURITY.md):

    peer -> runq  Hello{version, role, nonce, key_id}
    runq -> peer  RunqChallenge{version, instance, nonce, proof}
    peer -> runq  Auth{proof}

Every proof is an HMAC-SHA256 over both nonces under the role's secret, with
a label per direction, so no secret crosses the wire and neither side's proof
can be replayed as the other's.  A secret is the ASCII text of its file's one
line (at least 32 hex characters); ``key_id`` is a short public fingerprint of
it, which lets runq pick among several worker secrets (rotation, per-instance
bounds) without trying each.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import secrets as _random
import stat
from pathlib import Path

from . import limits
from .protocol import VERSION

ROLES = ("worker", "client")
NONCE_BYTES = 32
SECRET_MIN_HEX = 32
SECRET_HEX = 64            # what make_secret() writes
TRAIT_LIMIT = limits.MAX_TRAIT   # cost, speed and priority are finite within [-1e6, 1e6]
NUMERIC_TRAITS = ("cost", "speed", "priority")


class SecretError(Exception):
    """A secret file that cannot be used; the message says what to do."""


class AuthError(Exception):
    """A refused handshake or worker identity; ``code`` is HTTP-like (401, 403, 409, 426)."""

    def __init__(self, message: str, code: int = 401):
        super().__init__(message)
        self.code = code


# ---- primitives

def new_nonce() -> str:
    return _random.token_hex(NONCE_BYTES)


def _mac(key: bytes | str, text: str) -> str:
    key = key.encode("ascii") if isinstance(key, str) else key
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def same(expected: str | None, given) -> bool:
    """Constant-time comparison; None or a non-string never matches."""
    if expected is None or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii", "replace"))


def key_id(secret: bytes) -> str:
    """A public fingerprint naming a secret (16 hex chars); reveals nothing usable about it."""
    return _mac(secret, "simx/key-id")[:16]


def server_proof(secret: bytes, role: str, peer_nonce: str, runq_nonce: str) -> str:
    return _mac(secret, f"simx/server|{role}|{peer_nonce}|{runq_nonce}")


def peer_proof(secret: bytes, role: str, runq_nonce: str, peer_nonce: str) -> str:
    return _mac(secret, f"simx/peer|{role}|{runq_nonce}|{peer_nonce}")


def worker_key(secret: bytes, runq_nonce: str, peer_nonce: str) -> str:
    """The key of a worker registered on this handshake; both ends derive it, it never travels."""
    return _mac(secret, f"simx/worker-key|{runq_nonce}|{peer_nonce}")


def random_key() -> str:
    """A worker key when runq has no worker secret: sent once, in RunqAcceptWorker."""
    return _random.token_hex(32)


def reconnect_proof(key: str, worker_id: int, runq_nonce: str) -> str:
    return _mac(key, f"simx/reconnect|{worker_id}|{runq_nonce}")


def is_hex(text, length: int | None = None) -> bool:
    if not isinstance(text, str) or (length is not None and len(text) != length):
        return False
    return all(c in "0123456789abcdefABCDEF" for c in text)


# ---- secret files

def load_secret(path: str | Path) -> bytes:
    """The secret in ``path``: one line of at least 32 hex chars, readable by its owner only."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist (create it with `fab runq.secrets`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"secret file {path} cannot be read: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"secret file {path} is readable by others: run `chmod 600 {path}`")
    if len(text) < SECRET_MIN_HEX or not is_hex(text):
        raise SecretError(f"secret file {path} must hold one line of at least {SECRET_MIN_HEX} hex characters "
                          "(`fab runq.secrets` writes one)")
    return text.encode("ascii")


def make_secret() -> str:
    return _random.token_hex(SECRET_HEX // 2)


def write_secret(path: str | Path, force: bool = False) -> Path:
    """Create ``path`` (mode 0600, directory 0700) with a new secret; refuse to overwrite unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise SecretError(f"{path} exists; not overwriting it (use --force to replace it, which locks out "
                          "every peer still using the old secret)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(make_secret() + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


DEFAULT_FILES = {"worker": "var/secrets/worker.secret", "client": "var/secrets/client.secret"}


def create_secret_files(runq_conf, resolve, force: bool = False) -> dict[str, tuple[Path, bool]]:
    """`fab runq.secrets`: the worker and client secret files conf names (or the defaults,
    ``DEFAULT_FILES``), each written unless it exists (kept, unless ``force``: replacing one locks
    out every peer still using the old).  -> role: (the file, whether it was written now)."""
    configured = {role: getattr(runq_conf, f"{role}_secret_file") for role in ("worker", "client")}
    paths = {role: Path(resolve(configured[role] or DEFAULT_FILES[role])).absolute() for role in configured}
    out = {}
    for role, path in paths.items():
        if path.exists() and not force:
            load_secret(path)   # a kept file must be a usable secret (SecretError naming it, if not)
            out[role] = (path, False)
        else:
            out[role] = (write_secret(path, force=True), True)
    return out


# ---- what runq holds

@dataclasses.dataclass(frozen=True)
class Bounds:
    """What the workers of one secret may announce (None: anything)."""

    engines: tuple[str, ...] | None = None
    group: str | None = None
    user: str | None = None
    cost: tuple[float, float] | None = None
    speed: tuple[float, float] | None = None
    priority: tuple[float, float] | None = None

    def check(self, traits: dict) -> None:
        """Raise AuthError(403) naming the first trait outside the bounds."""
        for name in NUMERIC_TRAITS:
            value = traits[name]
            if not math.isfinite(value) or abs(value) > TRAIT_LIMIT:
                raise AuthError(f"{name} {value!r} is out of range: finite within "
                                f"[-{TRAIT_LIMIT:g}, {TRAIT_LIMIT:g}]", 403)
            lo_hi = getattr(self, name)
            if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
                raise AuthError(f"{name} {value!r} is outside [{lo_hi[0]:g}, {lo_hi[1]:g}] allowed "
                                "for this worker secret", 403)
        if self.engines is not None and traits["engine"] not in self.engines:
            raise AuthError(f"engine {traits['engine']!r} is not allowed for this worker secret "
                            f"(allowed: {', '.join(self.engines)})", 403)
        for name in ("group", "user"):
            pinned = getattr(self, name)
            if pinned is not None and traits[name] != pinned:
                raise AuthError(f"{name} {traits[name]!r} is not allowed for this worker secret "
                                f"(pinned to {pinned!r})", 403)


@dataclasses.dataclass(frozen=True)
class WorkerSecret:
    name: str
    secret: bytes = dataclasses.field(repr=False)
    bounds: Bounds = Bounds()


@dataclasses.dataclass(frozen=True)
class Secrets:
    """The secrets runq checks; empty means loopback development (null proofs)."""

    workers: tuple[WorkerSecret, ...] = ()
    client: bytes | None = dataclasses.field(default=None, repr=False)

    def worker_secret(self, kid: str | None) -> WorkerSecret | None:
        """The worker secret a Hello names by key_id (the first one when it names none)."""
        if not self.workers:
            return None
        if kid is None:
            return self.workers[0]
        for entry in self.workers:
            if hmac.compare_digest(key_id(entry.secret), kid):
                return entry
        raise AuthError(f"no worker secret with key id {kid!r} is configured on runq", 401)


@dataclasses.dataclass(eq=False)
class PeerState:
    """One connection's progress through the handshake (runq side)."""

    role: str
    peer_nonce: str
    runq_nonce: str
    entry: WorkerSecret | None = None
    authenticated: bool = False

    @property
    def secret(self) -> bytes | None:
        return self.entry.secret if self.entry is not None else None

    @property
    def bounds(self) -> Bounds:
        return self.entry.bounds if self.entry is not None else Bounds()


class Gate:
    """runq's side of the handshake: Hello -> RunqChallenge, Auth -> authenticated or refused.

    Keeps each connection's PeerState from its Hello until ``forget(conn)``."""

    def __init__(self, secrets: Secrets, instance: str):
        self.secrets, self.instance = secrets, instance
        self.states: dict[object, PeerState] = {}
        self.refused: set = set()     # refused connections: ignored until closed

    def role_of(self, conn) -> str | None:
        state = self.states.get(conn)
        return state.role if state is not None and state.authenticated else None

    def opening(self, conn, msg: dict) -> dict | None:
        """Hello: the RunqChallenge fields to send; Auth: None once authenticated.  AuthError if refused."""
        state = self.states.get(conn)
        if msg["type"] == "Hello":
            if state is not None:
                raise AuthError("Hello: this connection already said hello", 409)
            state, fields = self.challenge(msg)
            self.states[conn] = state
            return fields
        if state is None:
            raise AuthError("Auth before Hello", 400)
        if state.authenticated:
            raise AuthError("Auth: this connection is already authenticated", 409)
        self.authenticate(state, msg)
        return None

    def forget(self, conn) -> None:
        self.states.pop(conn, None)
        self.refused.discard(conn)

    def challenge(self, msg: dict) -> tuple[PeerState, dict]:
        """The state and the fields of the RunqChallenge answering a Hello; AuthError if refused."""
        if msg["version"] != VERSION:
            raise AuthError(f"protocol version {msg['version']} is not supported: runq speaks version {VERSION} "
                            f"(upgrade the peer or runq so both speak {VERSION})", 426)
        role = msg["role"]
        if role not in ROLES:
            raise AuthError(f"Hello: role must be 'worker' or 'client', not {role!r}", 400)
        if not is_hex(msg["nonce"], 2 * NONCE_BYTES):
            raise AuthError(f"Hello: nonce must be {2 * NONCE_BYTES} hex characters", 400)
        kid = msg.get("key_id")
        if kid is not None and not (isinstance(kid, str) and len(kid) <= 64):
            raise AuthError("Hello: key_id must be a short string", 400)
        state = PeerState(role=role, peer_nonce=msg["nonce"], runq_nonce=new_nonce())
        if role == "worker":
            state.entry = self.secrets.worker_secret(kid)
        secret = self._secret(state)
        proof = server_proof(secret, role, state.peer_nonce, state.runq_nonce) if secret else None
        return state, dict(version=VERSION, instance=self.instance, nonce=state.runq_nonce, proof=proof)

    def authenticate(self, state: PeerState, msg: dict) -> None:
        secret = self._secret(state)
        if secret is not None:
            want = peer_proof(secret, state.role, state.runq_nonce, state.peer_nonce)
            if not same(want, msg.get("proof")):
                raise AuthError(f"Auth: missing or wrong proof for the {state.role} secret", 401)
        state.authenticated = True

    def _secret(self, state: PeerState) -> bytes | None:
        return state.secret if state.role == "worker" else self.secrets.client

    def new_worker_key(self, state: PeerState) -> tuple[str, bool]:
        """(key, send_it): derived from this handshake with a secret; random and sent without one."""
        if state.secret is not None:
            return worker_key(state.secret, state.runq_nonce, state.peer_nonce), False
        return random_key(), True


# ---- loading what conf names

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    import ipaddress
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_secrets(runq_conf, resolve) -> Secrets:
    """The Secrets a RunqConfig names; ``resolve(path) -> Path`` applies root/var rules."""
    workers = []
    if runq_conf.worker_secret_file:
        workers.append(WorkerSecret("default", load_secret(resolve(runq_conf.worker_secret_file))))
    for entry in runq_conf.worker_secrets:
        workers.append(WorkerSecret(entry.name, load_secret(resolve(entry.file)), entry.bounds))
    client = load_secret(resolve(runq_conf.client_secret_file)) if runq_conf.client_secret_file else None
    return Secrets(workers=tuple(workers), client=client)


def check_exposure(listen, secrets: Secrets) -> None:
    """Protected mode: refuse to listen beyond loopback unless both kinds of secret are set."""
    exposed = [h for h in listen if not is_loopback(h)]
    if exposed and (not secrets.workers or secrets.client is None):
        missing = " and ".join(n for n, ok in (("a worker secret", bool(secrets.workers)),
                                              ("a client secret", secrets.client is not None)) if not ok)
        raise SecretError(
            f"refusing to listen on {', '.join(exposed)} (beyond loopback) without {missing}: anyone reaching "
            "the port could submit batches and run programs on your workers. Create the secrets with "
            "`fab runq.secrets`, then set runq.worker_secret_file and runq.client_secret_file in "
            "conf/simx.yaml (or SIMX_WORKER_SECRET_FILE / SIMX_CLIENT_SECRET_FILE); or listen on 127.0.0.1 only.")
