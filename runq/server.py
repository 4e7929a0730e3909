"""runq's only socket code: a single-threaded ``selectors`` loop.

It moves bytes and knows the framing, nothing of what messages mean.  Each
loop turn: read what is ready and hand each whole message to the core, run its
timers, **commit the store once**, then send what the core wants sent (encoded
as it is produced, held back until the commit) and hand the reads it returned
to the reader.  What the core marks as not depending on the commit (handshakes,
errors, Ping) goes straight to the connection's output, ahead of the commit
when nothing held back precedes it on that connection.

A bad frame, a ``ProtocolError`` or a peer that breaks a limit closes that
connection only.  Any other exception escapes ``serve()``: runq ends without
committing the half turn (crash-only; supervisor restarts it from the last
commit).

Limits (conf ``runq.limits``): output waiting per connection, input buffered over
all connections, frame size by role, the clocks of runq/connection.py, and
unauthenticated connections per address (runq/acceptor.py).  TLS runs in the loop.
"""
from __future__ import annotations

import errno
import logging
import math
import selectors
import socket
import ssl
import time

from simx import protocol
from simx.config import Limits
from .acceptor import Acceptor
from .committer import Committer
from .connection import SILENT, Connection, Deadlines, LogQuota

log = logging.getLogger("runq.server")

TICK_EVERY = 0.5          # longest wait in select (stopping is noticed within it)
RECV_SIZE = 256 * 1024
MIN_RECV = 4096           # what a read takes once the input budget is spent
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Server:
    def __init__(self, coordinator, store, addresses: list[tuple[str, int]], clock=time.time,
                 limits: Limits = Limits(), tls: ssl.SSLContext | None = None, heartbeat_interval: float = 0.0,
                 reader=None, lock_limit: float = 600.0):
        self.coord, self.store, self.clock = coordinator, store, clock
        self.committer = Committer(store, coordinator, clock, lock_limit)
        # Reads the core returns go to the reader (runq/reader.py) after the turn's commit.
        self.reader = reader
        self.reads: list = []               # (conn, msg) taken this turn, handed over after the commit
        self.limits, self.tls = limits, tls
        self.idle_timeout = (limits.worker_idle_factor * heartbeat_interval
                             if limits.worker_idle_factor > 0 and heartbeat_interval > 0 else math.inf)
        self.sel = selectors.DefaultSelector()
        self.acceptor = Acceptor(self.sel, addresses, clock)
        self.stopping = False
        # The coordinator's timers fire at their deadline: the loop wakes for the next one.
        self.next_timer = coordinator.next_deadline
        self.deadlines = Deadlines(limits, self.idle_timeout)
        self.input_total = 0                # bytes of half-received frames, all connections
        self.starved: set[Connection] = set()   # paused for the input budget
        # Past the budget one connection holding a half frame may still finish it, so the
        # others always get their turn (no deadlock when every frame in flight is large).
        self.privileged: Connection | None = None
        self.ready: list[Connection] = []   # resumed: may hold input no selector event will announce
        self.touched: dict[Connection, None] = {}
        self.peer_log = LogQuota(clock).log
        if reader is not None:
            self.sel.register(reader.wake_r, selectors.EVENT_READ, reader)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.acceptor.addresses

    def serve(self) -> None:
        """Loop until ``stopping``; an unexpected exception propagates with the turn uncommitted."""
        log.info("runq listening on %s%s", ", ".join(f"{h}:{p}" for h, p in self.addresses),
                 " (TLS)" if self.tls else "")
        while not self.stopping:
            self.step(TICK_EVERY)
        if not self.committer.commit() and self.store.pending():
            log.warning("stopping with this turn's writes uncommitted (the database refuses them): workers "
                        "send their reports again to the next runq")
        self.close()

    def close(self) -> None:
        if self.reader is not None:
            self.sel.unregister(self.reader.wake_r)
            self.reader.close()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.acceptor.close()
        self.sel.close()

    def step(self, timeout: float) -> None:
        """One loop turn."""
        now = self.clock()
        soonest = min(self.next_timer(), self.deadlines.soonest(),
                      self.acceptor.resume_at or math.inf)
        timeout = max(0.0, min(timeout, soonest - now))
        for key, mask in self.sel.select(timeout):
            if key.data is None:
                self.acceptor.accept(key.fileobj, self._admit)
                continue
            if key.data is self.reader:
                self._answered()
                continue
            conn = key.data
            if conn.closed:
                continue
            if conn.handshaking:
                self._handshake(conn)
                continue
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if mask & selectors.EVENT_READ and not conn.closed:
                self._input(conn)
        ready, self.ready = self.ready, []
        for conn in ready:
            if not conn.closed and not conn.paused:
                self._input(conn)
        now = self.clock()
        self._expire(now)
        if self.acceptor.resume_at is not None and now >= self.acceptor.resume_at:
            self.acceptor.resume()
        if now >= self.next_timer():
            self._queue(self.coord.tick(now))
        # Commit before send; while commits fail what depends on them stays staged (and touched).
        committed = self.committer.commit()
        reads, self.reads = self.reads, []
        for conn, msg in reads:   # after the commit: a client's read sees its earlier changes
            if not conn.closed:
                self.reader.submit(conn, msg)
        touched = self.touched
        if committed:
            self.touched = {}
        for conn in list(touched):
            if committed and conn.staged:
                conn.outbuf += conn.staged
                conn.staged.clear()
            self._flush(conn)
        if self.starved:
            if self.input_total < self.limits.max_input_total:
                for conn in list(self.starved):
                    self._unpause(conn)
            elif self.privileged is None or self.privileged.closed or not self.privileged.reader.buf:
                # the privileged frame is done or gone: the fullest waiting one may finish next
                self.privileged = max(self.starved, key=lambda c: len(c.reader.buf))
                self._unpause(self.privileged)

    def _admit(self, sock: socket.socket, peer: str) -> None:
        if not self.acceptor.admits(peer, self.limits.max_unauth_per_addr):
            sock.close()
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:  # the peer reset already
            log.debug("dropping %s at accept: %s", peer, exc)
            sock.close()
            return
        now = self.clock()
        conn = Connection(sock, peer, self.limits.max_client_frame, now, handshaking=self.tls is not None)
        self.acceptor.count_unauth(peer, +1)
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self._schedule(conn)
        if conn.handshaking:
            self._handshake(conn)
        else:
            self._queue(self.coord.connected(conn, peer, now))

    def _handshake(self, conn: Connection) -> None:
        waits, error = conn.handshake()
        if error is not None:
            self.peer_log(logging.INFO, "%r TLS handshake failed: %s", conn, error)
            self._finish_close(conn)
            return
        self._set_events(conn, waits or selectors.EVENT_READ)
        if waits is None:
            self._queue(self.coord.connected(conn, conn.peer, self.clock()))
            self.ready.append(conn)  # application data may have come with the handshake

    def _input(self, conn: Connection) -> None:
        """Handle the frames already buffered, then read once (TLS: records up to RECV_SIZE, and
        whatever the record layer already decrypted, which no selector event would announce)."""
        got = 0
        while True:
            # frames left from before (a resumed connection, a reply it waited for); usually none
            if conn.reader.buf and not self._take_frames(conn):
                return
            if conn.paused or conn.closed or conn.reading:
                return
            # Past the input budget a read takes only a little (enough for small frames), and
            # connections holding half frames wait, except the privileged one.
            room = self.limits.max_input_total - self.input_total
            size = RECV_SIZE if room >= RECV_SIZE or conn is self.privileged else max(room, MIN_RECV)
            try:
                data = conn.sock.recv(size)
            except WOULD_BLOCK:
                return
            except OSError as exc:
                self.peer_log(logging.INFO, "%r read error: %s", conn, exc)
                self._finish_close(conn)
                return
            if not data:
                self._finish_close(conn)
                return
            conn.last_input = self.clock()
            before = len(conn.reader.buf)
            conn.reader.push(data)
            self.input_total += len(conn.reader.buf) - before
            got += len(data)
            if not (self.tls is not None and (got < RECV_SIZE or conn.sock.pending())):
                self._take_frames(conn)
                return

    def _take_frames(self, conn: Connection) -> bool:
        """Hand whole frames to the core until none is left or the connection must wait; False if closed."""
        reader = conn.reader
        before = len(reader.buf)
        took = False
        try:
            while not conn.closing and not conn.paused and not conn.reading:
                body = reader.pop()
                if body is None:
                    break
                took = True
                self._queue(self.coord.handle(conn, protocol.decode_message(body), self.clock()))
                self._learn_role(conn)
                if len(conn.outbuf) + len(conn.staged) > self.limits.max_output:
                    self._pause(conn)   # it reads its replies slower than it asks: wait for it
        except protocol.ProtocolError as exc:
            self.peer_log(logging.WARNING, "%r sent a bad frame: %s; closing it", conn, exc)
            self._queue(self.coord.bad_frame(conn, str(exc)))
            reader.buf.clear()
        finally:
            self.input_total += len(reader.buf) - before
        if took or not reader.buf:
            conn.frame_started = None
        if reader.buf and conn.frame_started is None:
            conn.frame_started = self.clock()
        if not conn.closed and not conn.closing:
            if self.input_total > self.limits.max_input_total and reader.buf and not conn.paused:
                self._ration(conn)
            self._schedule(conn)
        return not conn.closed

    def _ration(self, conn: Connection) -> None:
        """Over the input budget with a half frame: wait, unless it is (or may become) the privileged one."""
        first = self.privileged
        if first is None or first.closed or not first.reader.buf:
            self.privileged = conn
        if conn is not self.privileged:
            self.starved.add(conn)
            self._pause(conn)

    def _learn_role(self, conn: Connection) -> None:
        role = self.coord.role_of(conn)
        if role == conn.role:
            return
        if conn.role is None:
            self.acceptor.count_unauth(conn.peer, -1)
        elif role is None:
            self.acceptor.count_unauth(conn.peer, +1)
        conn.role = role
        conn.reader.max_frame = (self.limits.max_worker_frame if role == "worker"
                                 else self.limits.max_client_frame)

    def _schedule(self, conn: Connection) -> None:
        self.deadlines.schedule(conn)

    def _expire(self, now: float) -> None:
        for conn, reason in self.deadlines.expired(now):
            self.peer_log(logging.INFO, "%r %s; closing it", conn, reason)
            self._finish_close(conn, silent=reason == SILENT)

    def _queue(self, out) -> None:
        """Encode what the core wants sent: after this turn's commit, or at once where it depends
        on no commit and nothing held back precedes it; reads wait for the commit too."""
        free = out.free
        for i, (conn, msg) in enumerate(out):
            if conn.closed:
                continue
            self.touched[conn] = None
            if msg is None:
                conn.closing = True
            elif not conn.closing:
                try:
                    data = protocol.encode(msg)
                except protocol.ProtocolError as exc:  # our own message too large
                    self._queue(self.coord.unsendable(conn, msg, str(exc)))
                    continue
                if i in free and not conn.staged:
                    conn.outbuf += data
                else:
                    conn.staged += data
        for conn, msg in out.reads:
            if conn.closed:
                continue
            if self.reader is None:
                conn.staged += protocol.encode(protocol.reply("error", 503, "this runq answers no reads"))
                self.touched[conn] = None
                continue
            conn.reading = True   # its next frames wait for this reply: replies stay in order
            self.reads.append((conn, msg))
            self._watch(conn)

    def _flush(self, conn: Connection) -> None:
        if conn.closed:
            return
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except WOULD_BLOCK:
                break
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    self.peer_log(logging.INFO, "%r write error: %s", conn, exc)
                self._finish_close(conn)
                return
            del conn.outbuf[:sent]
        if conn.closing and not conn.outbuf and not conn.staged:
            self._finish_close(conn)
            return
        if conn.paused and conn not in self.starved and len(conn.outbuf) <= self.limits.max_output:
            self._unpause(conn)
        self._watch(conn)

    def _answered(self) -> None:
        """Replies from the reader: they show what was committed, so they depend on no commit of
        this turn (they wait only behind what is held for it); the connection reads again."""
        for conn, data in self.reader.done():
            if conn.closed:
                continue
            conn.reading = False
            if conn.staged:
                conn.staged += data
            else:
                conn.outbuf += data
            self.touched[conn] = None
            conn.restart_clocks(self.clock())   # its wait was runq's doing
            self._watch(conn)
            self._schedule(conn)
            if not conn.paused:
                self.ready.append(conn)

    def _pause(self, conn: Connection) -> None:
        conn.paused = True
        self._watch(conn)

    def _unpause(self, conn: Connection) -> None:
        self.starved.discard(conn)
        conn.paused = False
        conn.restart_clocks(self.clock())   # its silence while paused was runq's doing
        self._watch(conn)
        self._schedule(conn)
        self.ready.append(conn)

    def _watch(self, conn: Connection) -> None:
        if conn.closed or conn.handshaking:
            return
        events = ((0 if conn.paused or conn.reading else selectors.EVENT_READ)
                  | (selectors.EVENT_WRITE if conn.outbuf else 0))
        self._set_events(conn, events)

    def _set_events(self, conn: Connection, events: int) -> None:
        if events == conn.events:
            return
        if conn.events and events:
            self.sel.modify(conn.sock, events, conn)
        elif events:
            self.sel.register(conn.sock, events, conn)
        else:
            self.sel.unregister(conn.sock)
        conn.events = events

    def _finish_close(self, conn: Connection, silent: bool = False) -> None:
        """Close `conn` and tell the core; `silent`: closed because the worker said nothing."""
        if conn.closed:
            return
        conn.closed = True
        if conn.events:
            self.sel.unregister(conn.sock)
        conn.events = 0
        conn.sock.close()
        conn.outbuf.clear()
        conn.staged.clear()
        self.input_total -= len(conn.reader.buf)
        conn.reader.buf.clear()
        self.starved.discard(conn)
        if conn is self.privileged:
            self.privileged = None
        if conn.role is None:
            self.acceptor.count_unauth(conn.peer, -1)
        # the core's reaction (a worker now disconnected) is buffered like any other change
        self._queue(self.coord.disconnected(conn, self.clock(), silent))
