"""One connection of runq's loop: its buffers and clocks, and when it is due for closing;
and the quota on log lines about misbehaving peers.

A connection is closed when it does not say who it is within ``auth_timeout`` (the TLS
handshake counts), does not finish a frame within ``frame_timeout`` (a worker's frame only
has to keep moving), or is a worker silent for ``worker_idle_factor`` heartbeats; while
runq itself does not read it (its output is too large, its read is with the reader) no
clock runs against it.  Deadlines sit in a heap, so a turn never sweeps every connection.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import selectors
import socket
import ssl

from simx import protocol

log = logging.getLogger("runq.server")

SILENT = "worker silent too long"   # why an idle worker's connection is closed (the core is told)


class LogQuota:
    """Lines about misbehaving peers: at most `burst` per `period` seconds, the rest counted and
    reported once, so a flood of bad peers cannot flood the log (or the disk)."""

    def __init__(self, clock, burst: int = 20, period: float = 1.0):
        self.clock, self.burst, self.period = clock, burst, period
        self.start, self.used, self.held = -math.inf, 0, 0

    def log(self, level: int, fmt: str, *args) -> None:
        now = self.clock()
        if now - self.start >= self.period:
            if self.held:
                log.warning("%d more lines about peers held back in the last %.0f s", self.held,
                            now - self.start)
            self.start, self.used, self.held = now, 0, 0
        if self.used < self.burst:
            self.used += 1
            log.log(level, fmt, *args)
        else:
            self.held += 1


class Connection:
    __slots__ = ("sock", "peer", "reader", "outbuf", "staged", "closing", "events", "role",
                 "handshaking", "opened", "last_input", "frame_started", "scheduled", "paused", "closed",
                 "reading")

    def __init__(self, sock: socket.socket, peer: str, max_frame: int, now: float, handshaking: bool):
        self.sock, self.peer = sock, peer
        self.reader = protocol.FrameReader(max_frame)
        self.outbuf = bytearray()     # encoded, committed: being sent
        self.staged = bytearray()     # encoded this turn: sent after the commit
        self.closing = False
        self.events = selectors.EVENT_READ
        self.role: str | None = None
        self.handshaking = handshaking
        self.opened = self.last_input = now
        self.frame_started: float | None = None
        self.scheduled = math.inf     # the time of this connection's entry in the deadline heap
        self.paused = False           # not reading: too much output waiting, or the input budget is spent
        self.closed = False
        self.reading = False          # one of its reads is with the reader: take no frame until answered

    def __repr__(self):
        return f"<conn {self.peer} fd={self.sock.fileno()}>"

    def restart_clocks(self, now: float) -> None:
        """runq made it wait (paused, or its read was with the reader): its clocks restart."""
        self.last_input = now
        if self.frame_started is not None:
            self.frame_started = now

    def handshake(self) -> tuple[int | None, Exception | None]:
        """One step of the TLS handshake: (the event it waits for, None), (None, None) once done,
        or (None, the error)."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ, None
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE, None
        except (ssl.SSLError, OSError) as exc:
            return None, exc
        self.handshaking = False
        return None, None

    def deadline(self, limits, idle_timeout: float) -> tuple[float, str]:
        """When this connection is next due for closing, and why."""
        if (self.role == "worker" and self.frame_started is None and not self.paused  # the common case:
                and not self.reading):                                                # an idle worker
            return self.last_input + idle_timeout, SILENT
        times = [(math.inf, "")]
        if self.role is None:
            times.append((self.opened + limits.auth_timeout, "did not say who it is in time"))
        if (self.paused or self.reading) and self.role is not None:
            return min(times)   # not reading is runq's choice: no frame or idle deadline meanwhile
        if self.frame_started is not None:
            # A stranger or client finishes a frame in frame_timeout; a worker's frame (a result
            # over a slow link) only has to keep moving.
            begun = self.last_input if self.role == "worker" else self.frame_started
            times.append((begun + limits.frame_timeout, "did not finish a frame in time"))
        if self.role == "worker":
            times.append((self.last_input + idle_timeout, SILENT))
        return min(times)


class Deadlines:
    """When each connection is next due for closing, in a heap (lazily invalidated), so a turn
    never sweeps every connection."""

    def __init__(self, limits, idle_timeout: float):
        self.limits, self.idle_timeout = limits, idle_timeout
        self.heap: list = []   # (time, seq, conn)
        self.seq = itertools.count()

    def soonest(self) -> float:
        return self.heap[0][0] if self.heap else math.inf

    def schedule(self, conn: Connection) -> None:
        when = conn.deadline(self.limits, self.idle_timeout)[0]
        if when < conn.scheduled:
            conn.scheduled = when
            heapq.heappush(self.heap, (when, next(self.seq), conn))

    def expired(self, now: float):
        """The connections due by `now`, with why: (conn, reason)."""
        while self.heap and self.heap[0][0] <= now:
            when, _, conn = heapq.heappop(self.heap)
            if conn.closed or when != conn.scheduled:
                continue   # stale entry: the connection has gone or was rescheduled sooner
            conn.scheduled = math.inf
            due, reason = conn.deadline(self.limits, self.idle_timeout)
            if due <= now:
                yield conn, reason
            else:
                self.schedule(conn)
