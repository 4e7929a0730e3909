"""runq's reader: client reads answered on a thread of their own, off the dispatch loop.

The server hands a read (BatchList, BatchStatus, RunStatus, ...; ``queries.READS``)
to ``submit`` after the turn's commit, so a client sees its own earlier
changes; the reader answers it from committed rows through its own read
connection (``Store.reader()``: never a commit, never a write), encodes the
reply (the costly part of a big page) and hands the bytes back through
``done()``, waking the loop through a socket pair.  While one of its reads is
out, the server reads nothing more from that connection, so replies keep the
order of the requests and a client holds at most one read in the queue.

A reply costs the loop only the copy of its bytes: a 1,000-run page that
blocked the loop ~9 ms now blocks it for tens of microseconds, and a stalled
reader (stopped, or slow on a big page) delays reads only, never dispatch.
Why a thread and not a process: see docs/ARCHITECTURE.md ("Reads off the loop").
"""
from __future__ import annotations

import collections
import logging
import queue
import socket
import threading
import time

from . import protocol
from .errors import RunqError

log = logging.getLogger("runq.reader")


class Reader:
    def __init__(self, queries, clock=time.time):
        self.queries, self.clock = queries, clock
        self.kinds = frozenset(queries.handlers)     # the requests it answers
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox: collections.deque = collections.deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.answered = 0
        self.thread = threading.Thread(target=self._serve, name="runq-reader", daemon=True)
        self.thread.start()

    def submit(self, conn, msg: dict) -> None:
        self.inbox.put((conn, msg))

    def done(self) -> list:
        """The replies ready: [(conn, encoded bytes)], in the order they were answered."""
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        out = []
        while self.outbox:
            out.append(self.outbox.popleft())
        return out

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=5)
        self.wake_r.close()
        self.wake_w.close()

    def answer(self, msg: dict) -> bytes:
        """One read, encoded; errors become error replies (a read changes nothing, so a bug in
        one is that reply's 500, not runq's end)."""
        try:
            reply = self.queries.handle(msg, self.clock())
        except RunqError as exc:
            log.warning("%s refused: %s", msg["type"], exc)
            reply = protocol.reply("error", exc.code, str(exc))
        except Exception:
            log.exception("%s failed", msg["type"])
            reply = protocol.reply("error", 500, f"{msg['type']} failed in runq (see its log)")
        try:
            return protocol.encode(reply)
        except protocol.ProtocolError as exc:   # our own reply too large
            log.error("not sending a %s reply: %s", msg["type"], exc)
            return protocol.encode(protocol.reply(
                "error", 413, f"the reply would exceed {protocol.MAX_FRAME} bytes; ask for less (a smaller limit)"))

    def _serve(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            conn, msg = item
            data = self.answer(msg)
            self.outbox.append((conn, data))
            self.answered += 1
            try:
                self.wake_w.send(b"!")
            except (BlockingIOError, InterruptedError):
                pass   # the pipe is full of wake-ups already: the loop will look
            except OSError:
                return   # closed under us: runq is stopping
