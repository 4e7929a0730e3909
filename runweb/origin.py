"""Refuse state-changing requests a browser says come from another site (CSRF).

A web page can make a visitor's browser POST to ``http://127.0.0.1:8097``, a
trusted loopback address that needs no password.  Browsers say where such a
request comes from: ``Sec-Fetch-Site`` (cross-site, same-site) and ``Origin``.
A POST (or any method but GET, HEAD, OPTIONS) whose ``Origin`` is not this
server's own (the ``Host`` it was sent to), or whose ``Sec-Fetch-Site`` is
``cross-site`` or ``same-site``, is refused with 403.  curl and scripts send
neither header, so they are unaffected; no token is needed.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from .errors import CrossSite

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def _netloc(scheme: str, host: str) -> str | None:
    """host:port in lower case, the scheme's default port made explicit; None if unusable."""
    try:
        parts = urlsplit(f"{scheme}://{host}")
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    return f"{(parts.hostname or '').lower()}:{port}" if parts.hostname else None


def foreign(method: str, scheme: str, host: str | None, origin: str | None, fetch_site: str | None) -> str | None:
    """Why this request comes from another site, or None."""
    if method in SAFE_METHODS:
        return None
    if fetch_site and fetch_site.strip().lower() in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site says {fetch_site.strip().lower()}"
    if origin is None:
        return None
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        parts = None
    theirs = _netloc(parts.scheme, parts.netloc) if parts and parts.scheme in DEFAULT_PORTS else None
    if theirs is None or theirs != _netloc(scheme, host or ""):
        return f"Origin {origin[:100]!r} is not this server"
    return None


class SameOrigin:
    """Middleware: 403 for a state-changing request from another site."""

    def process_request(self, req, resp) -> None:
        why = foreign(req.method, req.scheme, req.get_header("Host"), req.get_header("Origin"),
                      req.get_header("Sec-Fetch-Site"))
        if why:
            raise CrossSite(f"refused: this request comes from another site ({why}); "
                            "the API takes changes from its own pages and from programs like curl only")
