"""TLS contexts for runq's port, built from conf (runq.tls): the server's and its peers'.

runq serves TLS when ``runq.tls.cert`` and ``runq.tls.key`` are set; workers,
runweb, fab and benches verify runq against ``runq.tls.ca`` (TLS is on for them
when it is set) and check the name ``runq.tls_server_name`` (default runq.host).
Paths are relative to the simx root; a leading ``var/`` means the run-time dir.
"""
from __future__ import annotations

import ssl
from pathlib import Path

from .config import ConfigError, RunqConfig, resolve_var_path


resolve = resolve_var_path   # a configured file: absolute as is, a leading var/ in the run-time dir, else under root


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """runq's side: TLS 1.2 or later with the given certificate chain and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)   # a peer must not make runq redo handshakes
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"configuration runq.tls.cert/key: cannot load {cert} and {key}: {exc}") from None
    return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    """A peer's side: verify runq's certificate against `ca` and check its name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"configuration runq.tls.ca: cannot load {ca}: {exc}") from None
    return ctx


def server_context_from(config: RunqConfig, root: Path, var: Path | None = None) -> ssl.SSLContext | None:
    tls = config.tls
    if bool(tls.cert) != bool(tls.key):
        raise ConfigError("configuration runq.tls: set both cert and key (or neither)")
    if not tls.cert:
        return None
    return server_context(resolve(tls.cert, root, var), resolve(tls.key, root, var))


def client_context_from(config: RunqConfig, root: Path, var: Path | None = None,
                        ca: str | None = None) -> tuple[ssl.SSLContext | None, str]:
    """(context or None when no CA is configured, the server name to check)."""
    ca = ca or config.tls.ca
    name = config.tls_server_name or config.host
    if not ca:
        return None, name
    return client_context(resolve(ca, root, var)), name
