"""runq's reader: client reads answered off the dispatch loop, from committed data.

The server hands a read (BatchList, BatchStatus, RunStatus, ...; ``queries.READS``)
to ``submit(conn, msg)`` after the turn's commit, so a client sees its own earlier
changes; the reader answers it through its own read connection (``ReadStore``
read-only: never a commit, never a write), encodes the reply (the costly part
of a big page) and hands the bytes back through ``done()``, after waking the
loop through ``wake_r`` (a socket the server watches).  While one of its reads
is out, the server reads nothing more from that connection, so replies keep the
order of the requests and a client has at most one read queued.

``ReaderProcess`` (what runq runs) answers in a child process, ``python -m
runq.reader``, on the other core, so a big page costs the loop only the copy of
its bytes and never holds the GIL the loop needs.  ``ReaderThread`` answers on
a thread of runq's process: the same interface, used by tests that drive the
server in-process.  Measured (docs/ARCHITECTURE.md, "Reads off the loop"): with
16 clients each fetching a 1,000-run page every 0.5 s, dispatch kept 0.47 of its
rate with the process, 0.14 with the thread, 0.13 with reads on the loop.

The child holds no model: the only in-memory fact a read needs is which
(engine, group, user) keys have a present worker (`served`); the loop sends that
set whenever it changed, before the read that may show it.  A child that dies
ends runq (crash-only: supervisor restarts both).
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from simx import protocol
from .core.errors import RunqError

log = logging.getLogger("runq.reader")

_REPLY_HEAD = struct.Struct(">QI")   # read number, bytes of the encoded reply that follows


class ReaderGone(RuntimeError):
    """The reader process exited: runq ends too (crash-only)."""


def answer(queries, msg: dict, now: float) -> bytes:
    """One read, encoded; errors become error replies (a read changes nothing, so a bug in one
    is that reply's 500, not runq's end)."""
    try:
        reply = queries.handle(msg, now)
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


class ReaderThread:
    """Reads answered on a thread of runq's process (shares the GIL with the loop)."""

    def __init__(self, queries, clock=time.time):
        self.queries, self.clock = queries, clock
        self.kinds = frozenset(queries.handlers)     # the requests it answers
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox: collections.deque = collections.deque()
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)
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
        self._wake_w.close()

    def _serve(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            conn, msg = item
            self.outbox.append((conn, answer(self.queries, msg, self.clock())))
            try:
                self._wake_w.send(b"!")
            except (BlockingIOError, InterruptedError):
                pass   # wake-ups pending already: the loop will look
            except OSError:
                return   # closed under us: runq is stopping


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ReaderProcess:
    """Reads answered by a child process over a socket pair; the loop never blocks on it
    (requests it cannot write yet wait in a buffer, at most one per client connection)."""

    def __init__(self, url, facts, log_level: str = "WARNING", python: str = sys.executable, files_dir=None):
        from .queries import READS
        self.kinds, self.facts = READS, facts
        self.wake_r, child = socket.socketpair()
        # TERM/INT ignored from the fork on (an ignored signal stays ignored across exec): one sent to
        # the group while the child is still importing must not end it under a runq stopping gracefully
        self.proc = subprocess.Popen([python, "-m", "runq.reader", "--fd", str(child.fileno())],
                                     pass_fds=(child.fileno(),), close_fds=True, preexec_fn=_ignore_stop_signals)
        child.close()
        self.wake_r.setblocking(False)
        self.pending: dict[int, object] = {}   # read number -> connection
        self.numbers = 0
        self.outbuf = bytearray()
        self.inbuf = bytearray()
        self.sent_keys = None                  # the facts (presence keys) the child has
        # the URL travels over the socket, not the command line (a password would show in ps)
        self._write({"url": url.render_as_string(hide_password=False) if hasattr(url, "render_as_string")
                     else str(url), "log_level": log_level,
                     "files_dir": None if files_dir is None else str(files_dir)})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _write(self, item: dict) -> None:
        body = json.dumps(item, ensure_ascii=False).encode("utf-8")
        self.outbuf += protocol.HEADER.pack(len(body)) + body
        self._flush()

    def _flush(self) -> None:
        while self.outbuf:
            try:
                sent = self.wake_r.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return   # the child is busy (or stopped): the rest goes with a later call
            except OSError as exc:
                raise ReaderGone(f"runq's reader process is gone: {exc}") from None
            del self.outbuf[:sent]

    def submit(self, conn, msg: dict) -> None:
        keys = self.facts.present_keys()
        if keys != self.sent_keys:
            self.sent_keys = keys
            self._write({"served": sorted(keys)})
        self.numbers += 1
        self.pending[self.numbers] = conn
        self._write({"read": self.numbers, "msg": msg, "now": time.time()})

    def done(self) -> list:
        try:
            while True:
                try:
                    data = self.wake_r.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    raise
                except OSError as exc:
                    raise ReaderGone(f"runq's reader process is gone: {exc}") from None
                if not data:
                    raise ReaderGone(f"runq's reader process exited ({self.proc.poll()})")
                self.inbuf += data
        except (BlockingIOError, InterruptedError):
            pass
        out = []
        while len(self.inbuf) >= _REPLY_HEAD.size:
            number, size = _REPLY_HEAD.unpack_from(self.inbuf)
            end = _REPLY_HEAD.size + size
            if len(self.inbuf) < end:
                break
            out.append((self.pending.pop(number), bytes(self.inbuf[_REPLY_HEAD.size:end])))
            del self.inbuf[:end]
        self._flush()
        return out

    def close(self) -> None:
        self.wake_r.close()   # the child sees EOF and exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_child(sock: socket.socket) -> int:
    """The reader process: frames in (url first, then served-key sets and reads), replies out."""
    from .queries import Facts, Queries
    from .store import ReadStore
    frames = protocol.FrameReader(protocol.MAX_FRAME)
    queries = None
    facts = Facts()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return 0   # runq closed its end: it is stopping
        frames.push(data)
        while (body := frames.pop()) is not None:
            item = json.loads(body)
            if "url" in item:
                logging.basicConfig(level=item["log_level"].upper(), stream=sys.stderr,
                                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
                queries = Queries(ReadStore.open(item["url"]), facts, item.get("files_dir"))
            elif "served" in item:
                facts.keys = frozenset(tuple(k) for k in item["served"])
            else:
                reply = answer(queries, item["msg"], item["now"])
                sock.sendall(_REPLY_HEAD.pack(item["read"], len(reply)) + reply)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="runq.reader", description="runq's reader process (runq starts it)")
    parser.add_argument("--fd", type=int, required=True, help="the socket runq passed")
    args = parser.parse_args(argv)
    # runq decides when its reader ends (it closes the socket, or dies): a TERM or INT sent to
    # the process group must not end the reader under a runq that is still stopping gracefully
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        return serve_child(sock)
    finally:
        sock.close()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
