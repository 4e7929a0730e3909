"""Whether runweb answers: one `GET /health` on the address it binds (from its own host).

supervisord calls runweb RUNNING a second after it started gunicorn, whose workers may
not serve yet; status tasks (and `fab all`, which waits for them) ask runweb itself.
Any HTTP reply counts (a 503 says runq is down, which runq's own line shows); only
no reply at all is "not answering".
"""
from __future__ import annotations

import http.client
import ssl
import urllib.parse

from simx.config import Config

_ANY = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}


def web_url(config: Config) -> str:
    """Where runweb answers on its own host: its bound address (a wildcard: loopback) and port."""
    web = config.runweb
    host = _ANY.get(web.bind, web.bind).strip("[]")
    scheme = "https" if web.tls.cert and web.tls.key else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{web.port}"


def answers(url: str, timeout: float = 3.0) -> bool:
    """True when an HTTP reply comes back from `url`/health (nothing is sent but the request)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":   # whether it answers, not who it is: nothing secret is sent
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"Accept": "application/json"})
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
