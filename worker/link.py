"""The worker's non-blocking TCP connection to runq: connect, framed output buffer, framed input.

The loop owns the selector; a Link only moves bytes and turns every socket or
framing error into ``LinkDown``, after which it must be closed and replaced.
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl

from simx import protocol

from .wire import Inbox

log = logging.getLogger("worker")
# TCP keepalive finds a runq host that vanished without closing the connection
# (runq sends nothing to an idle worker, so silence alone proves nothing).
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
USER_TIMEOUT_MS = 60_000  # unacknowledged data older than this ends the connection


class LinkDown(Exception):
    """The connection to runq failed or closed; the message says how."""


class Link:
    def __init__(self, sock: socket.socket, address: tuple[str, int]):
        self.sock = sock
        self.address = address
        self.connecting = True
        self.tls = False   # the socket is an ssl.SSLSocket
        self.handshaking = False   # TLS: between connect and the first message
        self.wants = selectors.EVENT_WRITE  # what the TLS handshake waits for
        self.inbox = Inbox()
        self.out = bytearray()
        self.watched = 0  # the selector events the loop registered for this socket

    @classmethod
    def open(cls, address: tuple[str, int]) -> "Link":
        """Start connecting; completion is signalled by the socket becoming writable."""
        host, port = address
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise LinkDown(f"cannot reach runq at {host}:{port}: {exc}") from None
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            raise LinkDown(f"cannot reach runq at {host}:{port}: {os.strerror(err)}")
        return cls(sock, address)

    def finish_connect(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise LinkDown(f"cannot reach runq at {self.address[0]}:{self.address[1]}: {os.strerror(err)}")
        self.connecting = False
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            if hasattr(socket, name):
                self.sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)

    def start_tls(self, context: ssl.SSLContext, server_name: str) -> None:
        """Wrap the connected socket; ``handshake()`` then runs as the selector says it may."""
        self.sock = context.wrap_socket(self.sock, server_hostname=server_name, do_handshake_on_connect=False)
        self.handshaking = self.tls = True

    def handshake(self) -> bool:
        """Advance the TLS handshake; True once done (``wants`` says what it waits for otherwise)."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.wants = selectors.EVENT_READ
            return False
        except ssl.SSLWantWriteError:
            self.wants = selectors.EVENT_WRITE
            return False
        except ssl.SSLCertVerificationError as exc:
            raise LinkDown(f"runq at {self.address[0]}:{self.address[1]} is not who it should be: "
                           f"{exc.verify_message} (check --tls-ca / runq.tls.ca and runq.tls_server_name)") from None
        except (ssl.SSLError, OSError) as exc:
            raise LinkDown(f"TLS with runq at {self.address[0]}:{self.address[1]} failed: {exc}") from None
        self.handshaking = False
        return True

    def queue(self, msg: dict) -> None:
        """Queue one message; ``flush()`` writes it."""
        self.out += protocol.encode(msg)

    def send(self, msg: dict) -> None:
        """Queue one message and write what the socket takes now."""
        self.out += protocol.encode(msg)
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as exc:
                raise LinkDown(f"lost runq while sending: {exc}") from None
            del self.out[:n]

    def receive(self) -> list[dict]:
        """The valid messages completed by what one recv() returns.

        A frame that is not a valid message is logged and skipped rather than
        ending the connection: reconnecting would bring the same message back.
        A frame too large to be read ends the connection (the stream is lost).
        """
        data = self._recv()
        # TLS: what the record layer has decrypted no selector will announce: take it now
        while data and self.tls and self.sock.pending():
            data += self._recv()
        try:
            messages, problems = self.inbox.feed(data)
        except protocol.ProtocolError as exc:
            raise LinkDown(f"bad frame from runq: {exc}") from None
        for problem in problems:
            log.error("ignoring a message from runq: %s", problem)
        return messages

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return b""
        except OSError as exc:
            raise LinkDown(f"lost runq while reading: {exc}") from None
        if not data:
            raise LinkDown("runq closed the connection")
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
