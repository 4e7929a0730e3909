"""runq's only socket code: a single-threaded ``selectors`` loop.

It moves bytes and knows the framing, nothing of what messages mean.  Each
loop turn: read what is ready and hand each whole message to the coordinator,
run its timers, **commit the store once**, then queue what the coordinator
wants sent.  An error on one connection closes that connection only.
"""
from __future__ import annotations

import errno
import logging
import selectors
import socket
import time

from . import protocol

log = logging.getLogger("runq.server")

TICK_EVERY = 0.5          # seconds between coordinator.tick() calls
RECV_SIZE = 256 * 1024


class Connection:
    __slots__ = ("sock", "peer", "reader", "outbuf", "closing", "is_worker", "want_write")

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self.reader = protocol.FrameReader()
        self.outbuf = bytearray()
        self.closing = False
        self.is_worker = False
        self.want_write = False

    def __repr__(self):
        return f"<conn {self.peer} fd={self.sock.fileno()}>"


class Server:
    def __init__(self, coordinator, store, addresses: list[tuple[str, int]], clock=time.time):
        self.coord, self.store, self.clock = coordinator, store, clock
        self.sel = selectors.DefaultSelector()
        self.listeners = []
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, None)
            self.listeners.append(sock)
        self.stopping = False
        self.last_tick = 0.0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.listeners]

    def serve(self) -> None:
        log.info("runq listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))
        while not self.stopping:
            self.step(TICK_EVERY)
        self.store.commit()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()

    def step(self, timeout: float) -> None:
        """One loop turn."""
        outgoing = []
        for key, mask in self.sel.select(timeout):
            if key.data is None:
                outgoing += self._accept(key.fileobj)
                continue
            conn = key.data
            if mask & selectors.EVENT_READ:
                outgoing += self._read(conn)
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
        now = self.clock()
        if now - self.last_tick >= TICK_EVERY:
            self.last_tick = now
            outgoing += self.coord.tick(now)
        # Commit before send: nothing goes out about state that is not durable.
        pending, started = self.store.pending(), time.perf_counter()
        self.store.commit()
        if pending:
            self.coord.metrics.committed(time.perf_counter() - started)
        touched = []
        for conn, msg in outgoing:
            if conn.sock.fileno() < 0:
                continue
            if msg is None:
                conn.closing = True
            elif not conn.closing:
                try:
                    conn.outbuf += protocol.encode(msg)
                except protocol.ProtocolError as exc:  # our own message too large
                    log.error("not sending %s to %r: %s", msg.get("type"), conn, exc)
                    if msg.get("type") != "Reply":
                        continue
                    conn.outbuf += protocol.encode(protocol.reply(
                        "error", 413, f"the reply would exceed {protocol.MAX_FRAME} bytes; ask for less "
                                      "(a smaller limit)"))
            touched.append(conn)
        for conn in dict.fromkeys(touched):
            self._flush(conn)

    def _accept(self, listener: socket.socket) -> list:
        out = []
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return out
            except OSError as exc:  # EMFILE and friends: log, keep serving the others
                log.error("accept failed: %s", exc)
                return out
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, addr[0])
            self.sel.register(sock, selectors.EVENT_READ, conn)
            out += self.coord.connected(conn, addr[0], self.clock())
        return out

    def _read(self, conn: Connection) -> list:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            log.info("%r read error: %s", conn, exc)
            self._finish_close(conn)
            return []
        if not data:
            self._finish_close(conn)
            return []
        out = []
        try:
            bodies = conn.reader.feed(data)
            for body in bodies:
                msg = protocol.decode_message(body)
                if msg["type"] in protocol.FROM_WORKER:
                    conn.is_worker = True
                out += self.coord.handle(conn, msg, self.clock())
        except protocol.ProtocolError as exc:
            log.warning("%r sent a bad frame: %s; closing it", conn, exc)
            error = (protocol.message("RunqError", message=str(exc)) if conn.is_worker
                     else protocol.reply("error", 400, str(exc)))
            out += [(conn, error), (conn, None)]
        except Exception:  # a bug while handling one message: that connection only
            log.exception("error handling a message from %r; closing it", conn)
            out += [(conn, None)]
        return out

    def _flush(self, conn: Connection) -> None:
        if conn.sock.fileno() < 0:
            return
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    log.info("%r write error: %s", conn, exc)
                self._finish_close(conn)
                return
            del conn.outbuf[:sent]
        if conn.closing and not conn.outbuf:
            self._finish_close(conn)
        elif bool(conn.outbuf) != conn.want_write:
            conn.want_write = bool(conn.outbuf)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.want_write else 0)
            self.sel.modify(conn.sock, events, conn)

    def _finish_close(self, conn: Connection) -> None:
        if conn.sock.fileno() < 0:
            return
        self.sel.unregister(conn.sock)
        conn.sock.close()
        conn.outbuf.clear()
        # The coordinator's reaction (a worker now disconnected) is buffered like any
        # other change; nothing needs sending for it.
        self.coord.disconnected(conn, self.clock())
