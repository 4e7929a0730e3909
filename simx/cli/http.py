"""The HTTP client of the command line: JSON requests to runweb, errors as one line.

Every failure becomes ``SimxError`` with a message fit to print as is: the HTTP status and
runweb's reason, or why runweb could not be reached.  Basic auth when a user and a password
are set; https verified against ``cacert`` when given (else the system's CAs).
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

from .config import Settings

CHUNK = 65536
MAX_REPLY = 64 * 1024 * 1024   # a JSON reply larger than this is refused (pages are far smaller)


class SimxError(Exception):
    """Something the user should read: one line.  `status` is the HTTP status, if there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    def __init__(self, settings: Settings, timeout: float = 30.0, warn=None):
        self.settings, self.timeout = settings, timeout
        self.headers = {"Accept": "application/json", "User-Agent": "simx-cli"}
        if settings.user and settings.password is not None:
            token = base64.b64encode(f"{settings.user}:{settings.password}".encode("utf-8")).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
            if settings.url.startswith("http://") and not _loopback(settings.url):
                (warn or (lambda m: print(m, file=sys.stderr)))(
                    f"simx: warning: sending a password over plain http to {settings.url}; use https")
        context = None
        if settings.url.startswith("https://"):
            context = ssl.create_default_context(cafile=settings.cacert) if settings.cacert else \
                ssl.create_default_context()
        # never through a proxy from the environment: runweb is addressed directly
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=context))

    def url(self, path: str, params: dict | None = None) -> str:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return self.settings.url + path + (f"?{query}" if query else "")

    def open(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
             headers: dict | None = None):
        """The response object of one request; SimxError for anything but 2xx."""
        url = self.url(path, params)
        req = urllib.request.Request(url, data=body, method=method, headers={**self.headers, **(headers or {})})
        try:
            return self.opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise SimxError(_http_error(exc, method, path), exc.code) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise SimxError(f"TLS with runweb at {self.settings.url} failed: {reason} "
                                "(--cacert or SIMX_CACERT names the CA that signed runweb's certificate)") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise SimxError(f"cannot reach runweb at {self.settings.url}: {text} "
                            "(--url, SIMX_URL or ~/.config/simx/config.yaml say where it is)") from None
        except (socket.timeout, TimeoutError):
            raise SimxError(f"runweb at {self.settings.url} did not answer within {self.timeout:.0f} s") from None
        except OSError as exc:
            raise SimxError(f"cannot reach runweb at {self.settings.url}: {exc}") from None

    def request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                headers: dict | None = None) -> dict:
        with self.open(method, path, params, body, headers) as resp:
            data = _read(resp, MAX_REPLY)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SimxError(f"runweb answered {method} {path} with something that is not JSON") from None

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params)

    def post(self, path: str, body: bytes | None = None, headers: dict | None = None) -> dict:
        return self.request("POST", path, body=body if body is not None else b"", headers=headers)

    def pages(self, path: str, key: str, params: dict | None = None, most: int | None = None):
        """Every item of a paged listing (following next_offset); at most `most` items."""
        params, got = dict(params or {}), 0
        while True:
            reply = self.get(path, **params)
            for item in reply.get(key, []):
                if most is not None and got >= most:
                    return
                got += 1
                yield item
            if reply.get("next_offset") is None:
                return
            params["offset"] = reply["next_offset"]

    def stream(self, path: str, params: dict | None = None, headers: dict | None = None):
        """The body of a streamed reply, chunk by chunk."""
        with self.open("GET", path, params, headers=headers) as resp:
            try:
                while chunk := resp.read(CHUNK):
                    yield chunk
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise SimxError(f"the stream from runweb broke off: {exc}") from None


def _read(resp, limit: int) -> bytes:
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise SimxError(f"runweb's reply is larger than {limit} bytes")
    return data


def _http_error(exc: urllib.error.HTTPError, method: str, path: str) -> str:
    try:
        body = exc.read(65536).decode("utf-8", errors="replace")
    except OSError:
        body = ""
    message = None
    try:
        data = json.loads(body)
        message = data.get("message") if isinstance(data, dict) else None
    except ValueError:
        message = body.strip().splitlines()[0] if body.strip() else None
    text = f"HTTP {exc.code}: {message or exc.reason}"
    if exc.code == 401:
        text += " (check SIMX_USER and SIMX_PASSWORD, or --user)"
    return text
