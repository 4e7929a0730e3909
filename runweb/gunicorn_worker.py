"""runweb's gunicorn worker class: gthread, with a bound on a silent socket and errors in the API's format.

* **Slow sockets.**  gunicorn's gthread worker hands a connection to a thread once
  its first bytes arrive; the thread then reads the request head with a blocking
  socket and no timeout, so a client that sends half a header and stops holds that
  thread for ever (with the sync worker, the whole process, until gunicorn's 30 s
  worker timeout kills it).  Here every read and write of a request waits at most
  ``runweb.io_timeout`` seconds for progress; the socket is then closed.  With
  ``runweb.threads`` threads per process, a few such sockets cost a few threads
  for a few seconds, and other clients are served meanwhile.  Measured with
  bench/slowloris.py: see docs/ARCHITECTURE.md, "runweb under slow clients".
* **Errors gunicorn answers itself** (a request line over 4094 bytes: 414, headers
  too large: 431, a malformed request: 400) get the API's envelope
  ``{status: error, message}`` in YAML (JSON if the request preferred it) instead
  of gunicorn's HTML page.  gunicorn still logs them as usual.
"""
from __future__ import annotations

import json

from gunicorn import util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers import gthread

from simx import config as simx_config

from .media import dump_yaml


class Stalled(NoMoreData, TimeoutError):
    """The client sent nothing for io_timeout seconds: gthread treats it as a client that went
    away (a debug line, no traceback); runweb's body reader answers 408."""


class _Watch:
    """The socket as gunicorn's request reader sees it: marks the connection when a read times out."""

    def __init__(self, sock, conn):
        self.sock, self.conn = sock, conn

    def recv(self, size):
        try:
            return self.sock.recv(size)
        except TimeoutError:
            self.conn.stalled = True
            raise Stalled(f"no data for {self.sock.gettimeout()} s") from None

    def __getattr__(self, name):
        return getattr(self.sock, name)


class _Capture:
    """Stands in for the client socket while gunicorn writes its HTML error page: keeps the bytes."""

    def __init__(self):
        self.data = b""

    def gettimeout(self):
        return 0.0

    def setblocking(self, flag):
        pass

    def sendall(self, data):
        self.data += data


def error_reply(status_line: bytes, message: str, accept: str | None) -> bytes:
    """A complete HTTP/1.1 error response with the API's envelope."""
    as_json = "json" in (accept or "") and "yaml" not in (accept or "")
    media = {"status": "error", "message": message}
    if as_json:
        body, ctype = json.dumps(media).encode("utf-8"), "application/json"
    else:
        body, ctype = dump_yaml(media).encode("utf-8"), "application/yaml; charset=utf-8"
    head = (status_line + b"\r\nConnection: close\r\nContent-Type: " + ctype.encode("ascii")
            + b"\r\nContent-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n")
    return head + body


def _message(status: int, exc: Exception) -> str:
    text = str(exc)[:300]
    if status == 414:
        return f"the request line is too long ({text}); send long data in a POST body"
    if status == 431:
        return f"the request headers are too large ({text})"
    if status >= 500:
        return "internal error in runweb's HTTP server; see its log"
    return f"malformed HTTP request: {type(exc).__name__} {text}".strip()


class ThreadWorker(gthread.ThreadWorker):
    io_timeout = simx_config.RunwebConfig.io_timeout

    def init_process(self):
        self.io_timeout = simx_config.load().runweb.io_timeout  # as get_app() reads it
        super().init_process()

    def handle(self, conn):
        # gthread makes the socket blocking (no timeout) right before it calls conn.init() and
        # parses; init is wrapped once per connection so every request read gets the timeout.
        if not getattr(conn, "_io_timeout", False):
            conn._io_timeout, init = True, conn.init

            def init_with_timeout():
                init()
                conn.sock.settimeout(self.io_timeout)
                unreader = getattr(conn.parser, "unreader", None)
                if unreader is not None and not isinstance(getattr(unreader, "sock", None), _Watch):
                    unreader.sock = _Watch(unreader.sock, conn)
            conn.init = init_with_timeout
        result = super().handle(conn)
        if result is False:
            # gthread would close it on its main thread, lingering up to 2 s to drain what the
            # client still sends: a few silent sockets would stall accepting.  Linger here instead,
            # and not at all for a client that stalled (it is owed no reply).
            if getattr(conn, "stalled", False):
                util.close(conn.sock)
            else:
                util.close_graceful(conn.sock, timeout=min(2.0, self.io_timeout))
        return result

    def handle_error(self, req, client, addr, exc):
        capture = _Capture()
        super().handle_error(req, capture, addr, exc)  # gunicorn's status, logging and access log
        status_line = capture.data.split(b"\r\n", 1)[0] or b"HTTP/1.1 500 Internal Server Error"
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            status, status_line = 500, b"HTTP/1.1 500 Internal Server Error"
        accept = None
        for name, value in getattr(req, "headers", None) or ():
            if name.upper() == "ACCEPT":
                accept = value
        try:
            client.setblocking(True)
            client.settimeout(self.io_timeout)
            client.sendall(error_reply(status_line, _message(status, exc), accept))
        except OSError:
            self.log.debug("failed to send an error reply")
