"""Blocking client side of the runq protocol, used by runweb, worker, fab tasks and tests."""
from __future__ import annotations

import socket
import ssl

from . import protocol


class RunqUnavailable(Exception):
    """runq could not be reached or went away mid-request."""


class Link:
    """One blocking TCP connection to runq that sends and receives whole messages."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = protocol.FrameReader()
        self.pending: list[bytes] = []

    @classmethod
    def connect(cls, host: str, port: int, timeout: float | None = 10.0, tls: ssl.SSLContext | None = None,
                server_name: str | None = None) -> "Link":
        """Connect, and with `tls` (runq.tls.client_context) verify runq as `server_name` (default host)."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise RunqUnavailable(f"cannot reach runq at {host}:{port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_name or host)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise RunqUnavailable(f"runq at {host}:{port} is not who it should be: {exc.verify_message}"
                                      f" (check runq.tls.ca and runq.tls_server_name)") from None
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise RunqUnavailable(f"TLS with runq at {host}:{port} failed: {exc}") from None
        return cls(sock)

    def send(self, msg: dict) -> None:
        try:
            self.sock.sendall(protocol.encode(msg))
        except OSError as exc:
            raise RunqUnavailable(f"lost runq while sending: {exc}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_available(self) -> list[dict]:
        """One recv() (blocking per the socket's timeout); the messages it completed."""
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return []
        except OSError as exc:
            raise RunqUnavailable(f"lost runq while reading: {exc}") from None
        if not data:
            raise RunqUnavailable("runq closed the connection")
        return [protocol.decode_message(b) for b in self.reader.feed(data)]

    def recv(self) -> dict:
        """Block until one whole message arrives (per the socket's timeout)."""
        while not self.pending:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise RunqUnavailable(f"lost runq while reading: {exc}") from None
            if not data:
                raise RunqUnavailable("runq closed the connection")
            self.pending.extend(self.reader.feed(data))
        return protocol.decode_message(self.pending.pop(0))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def handshake(link: "Link", role: str, secret: bytes | None = None, key_id: str | None = None) -> dict:
    """Open the conversation as `role` ("worker" or "client"); return runq's challenge.

    Placeholder until protocol v2 (docs: the auth stream): nothing to exchange yet.
    """
    return {}


class RunqClient:
    """Request/reply client: one short connection per request, as runweb uses it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8096, timeout: float = 30.0, *,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None):
        self.host, self.port, self.timeout = host, port, timeout
        self.tls, self.server_name = tls, server_name

    def request(self, mtype: str, **fields) -> dict:
        """Send one request; return runq's Reply dict (status ok or error)."""
        msg = protocol.message(mtype, **fields)
        link = Link.connect(self.host, self.port, self.timeout, self.tls, self.server_name)
        try:
            link.send(msg)
            answer = link.recv()
        finally:
            link.close()
        if answer.get("type") != "Reply":
            raise RunqUnavailable(f"runq answered {answer.get('type')} to {mtype}")
        return answer
