"""Blocking client side of the runq protocol, used by runweb, worker, fab tasks and tests."""
from __future__ import annotations

import os
import select
import socket
import ssl
import threading

from . import auth, protocol


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
            except TimeoutError:
                raise RunqUnavailable(f"runq did not answer within {self.sock.gettimeout():g} s") from None
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


class RunqRefused(RunqUnavailable):
    """runq refused the handshake (wrong secret, other version) or did not prove itself."""


def handshake(link, role: str, secret: bytes | None = None, key_id: str | None = None) -> dict:
    """Open the conversation as `role` ("worker" or "client"); return runq's RunqChallenge.

    Hello, RunqChallenge, Auth (runq/auth.py).  With a secret, runq must prove it holds it
    too, or RunqRefused is raised: a peer with a secret never talks to an impostor.
    `link` is a Link or a connected blocking socket.
    """
    if isinstance(link, socket.socket):
        link = Link(link)
    nonce = auth.new_nonce()
    if secret is not None and key_id is None:
        key_id = auth.key_id(secret)
    link.send(protocol.message("Hello", version=protocol.VERSION, role=role, nonce=nonce, key_id=key_id))
    answer = link.recv()
    if answer["type"] != "RunqChallenge":
        raise RunqRefused(f"runq refused the {role} handshake: {answer.get('message', answer['type'])}")
    check_challenge(answer, role, secret, nonce)
    proof = auth.peer_proof(secret, role, answer["nonce"], nonce) if secret is not None else None
    link.send(protocol.message("Auth", proof=proof))
    return answer


def check_challenge(answer: dict, role: str, secret: bytes | None, nonce: str) -> None:
    """Raise RunqRefused unless runq's RunqChallenge is usable (and, with a secret, proves runq holds it)."""
    if answer["version"] != protocol.VERSION:
        raise RunqRefused(f"runq speaks protocol version {answer['version']}, this program {protocol.VERSION}")
    if not auth.is_hex(answer["nonce"], 2 * auth.NONCE_BYTES):
        raise RunqRefused("runq's challenge has a malformed nonce")
    if secret is not None and not auth.same(auth.server_proof(secret, role, nonce, answer["nonce"]),
                                            answer.get("proof")):
        raise RunqRefused(f"runq did not prove it holds the {role} secret"
                          + (" (it has none configured)" if answer.get("proof") is None else ""))


class RunqClient:
    """Request/reply client, as runweb, fab and the benches use it.

    Each thread keeps one authenticated connection and reuses it across requests (the
    handshake costs a round trip).  A kept connection that runq closed meanwhile is noticed
    before the request is sent and replaced; a request is never sent twice.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8096, timeout: float = 30.0,
                 secret: bytes | None = None, *, tls: ssl.SSLContext | None = None, server_name: str | None = None):
        self.host, self.port, self.timeout, self.secret = host, port, timeout, secret
        self.tls, self.server_name = tls, server_name
        self._local = threading.local()

    @classmethod
    def from_config(cls, config, timeout: float = 30.0, port: int | None = None) -> "RunqClient":
        """The client runweb, fab and the benches use: runq's address, the client secret and TLS from conf."""
        from . import config as simx_config
        from . import tls as runq_tls
        path = config.runq.client_secret_file
        secret = (auth.load_secret(simx_config.resolve_var_path(path, config.root, config.var))
                  if path else None)
        context, server_name = runq_tls.client_context_from(config.runq, config.root, config.var)
        return cls(config.runq.host, port or config.runq.port, timeout=timeout, secret=secret,
                   tls=context, server_name=server_name)

    def _link(self) -> Link:
        link = getattr(self._local, "link", None)
        if link is not None and getattr(self._local, "pid", None) != os.getpid():
            link = None   # inherited through fork (gunicorn): the parent's, never shared
        if link is not None and not _idle_and_open(link):
            link.close()
            link = None
        if link is None:
            link = Link.connect(self.host, self.port, self.timeout, self.tls, self.server_name)
            try:
                handshake(link, "client", self.secret)
            except BaseException:
                link.close()
                raise
            self._local.link, self._local.pid = link, os.getpid()
        return link

    def request(self, mtype: str, **fields) -> dict:
        """Send one request; return runq's Reply dict (status ok or error)."""
        msg = protocol.message(mtype, **fields)
        link = self._link()
        try:
            link.send(msg)
            answer = link.recv()
        except BaseException:
            self.close()
            raise
        if answer.get("type") == "RunqError":
            self.close()
            raise RunqRefused(f"runq refused {mtype}: {answer['message']}")
        if answer.get("type") != "Reply":
            self.close()
            raise RunqUnavailable(f"runq answered {answer.get('type')} to {mtype}: {answer.get('message', '')}")
        return answer

    def close(self) -> None:
        """Close this thread's connection (the next request opens another)."""
        link = getattr(self._local, "link", None)
        self._local.link = None
        if link is not None:
            link.close()


def _idle_and_open(link: Link) -> bool:
    """A kept connection with nothing to read is still open; EOF or stray bytes mean replace it."""
    if link.pending or link.reader.buf:
        return False
    try:
        readable, _, _ = select.select([link.sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
