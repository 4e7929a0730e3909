"""The worker's link to runq: one single-threaded poll loop (``poller.Poller``).

Owns the I/O around ``Session``: connecting and reconnecting with backoff,
moving frames, the wakeup socketpair that the engine thread and signal
handlers write to, and the exit.  The engine computes on the engine thread
(``job.EngineThread``); everything else runs on this thread, so no state needs
a lock.  Messages sent during a turn (a poll and the advance after it) are
written together at its end (one send() for a report and the next run's start,
or a burst of replies).  Time comes
from the injected ``clock``, and the only waiting is the selector's timeout,
so signals, the engine's news and runq's messages are all served while the
worker waits to reconnect.
"""
from __future__ import annotations

import logging
import math
import selectors
import socket
import ssl
import time

from simx import protocol

from .backoff import Backoff
from .engines.base import Engine
from .job import run_name
from .link import Link, LinkDown
from .poller import Poller
from .session import Session, Traits

log = logging.getLogger("worker")

UPLOAD_BUFFER = 2 * 1024 * 1024  # bytes of output file chunks queued on the link at most
CONNECT_TIMEOUT = 10.0  # seconds from connect() to RunqAcceptWorker; a silent runq must not stall us


class WorkerLoop:
    """Runs one worker until it is stopped, drained or refused: ``WorkerLoop(...).run()``.

    ``session_options`` (update_interval, stop_timeout, drain_linger, prefetch, summary_interval) go to
    ``Session``.
    """

    def __init__(self, traits: Traits, engine: Engine, address: tuple[str, int], secret: bytes | None = None, *,
                 clock=time.monotonic, backoff: Backoff | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, tls: ssl.SSLContext | None = None,
                 server_name: str | None = None, **session_options):
        self.address = address
        self.tls, self.server_name = tls, server_name or address[0]  # verify runq when tls is set
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self.session = Session(traits, engine, self._send, self.wake, secret, **session_options)
        self.log = self.session.log
        self.link: Link | None = None  # while connecting or connected
        self.retry_at = -math.inf  # when to connect next while there is no link
        self.connect_deadline = math.inf
        # Set by signal handlers or other threads; acted on by the loop.
        self._stop_flag = False
        self._drain_flag = False
        self.selector = Poller()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ)

    # -- entry points for other threads and signal handlers ------------------------------

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full (a wakeup is pending anyway) or closed at exit

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: give the run back to runq and exit."""
        self._stop_flag = True
        self.wake()

    def request_drain(self) -> None:
        """SIGUSR1: finish the current run, take no other, exit."""
        self._drain_flag = True
        self.wake()

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Serve runq until stopped, drained or refused; return the exit status."""
        try:
            while True:
                code = self.advance(self.clock())
                if code is not None:
                    return code
                self.poll(self.timeout(self.clock()))
        finally:
            self.close()

    def advance(self, now: float) -> int | None:
        """Act on everything due at ``now``; the exit status once the worker should exit."""
        session = self.session
        if session.exit_code is not None:
            self._flush()   # what the last messages made the session send
            return session.exit_code
        if self._stop_flag and not session.stopping:
            session.stop(now)
        if self._drain_flag:
            self._drain_flag = False
            session.drain(now, "SIGUSR1")
        session.advance(now)
        if session.upload is not None:
            self._pump_upload(now)
        link = self.link
        if link is None and now >= self.retry_at and not session.stopping:
            self._connect(now)
        elif link is not None and not session.online and now >= self.connect_deadline:
            self._drop(now, "runq did not accept the worker in time")
        self._flush()
        if session.exit_code is None and not (session.stopping or session.draining):   # check_exit's only cases
            return None
        return session.check_exit(now, reachable=self.link is not None,
                                  flushed=self.link is None or not self.link.out)

    def timeout(self, now: float) -> float | None:
        """Seconds until advance() has something to do unless woken earlier."""
        soonest = min(self.session.soonest(now), self.connect_deadline)
        if self.link is None:
            soonest = min(soonest, self.retry_at)
        return None if soonest == math.inf else max(0.0, soonest - now)

    def poll(self, timeout: float | None) -> None:
        for obj, events in self.selector.select(timeout):
            if obj is self._wake_r:
                self._drain_wakeups()
                continue
            link = self.link
            if link is None or obj is not link.sock:
                continue
            try:
                if link.connecting:
                    link.finish_connect()
                    if self.tls is not None:
                        plain = link.sock
                        link.start_tls(self.tls, self.server_name)   # a new socket object, same descriptor
                        self.selector.unregister(plain)
                        self.selector.register(link.sock, selectors.EVENT_WRITE)
                        link.watched = selectors.EVENT_WRITE
                    else:
                        self._connected(link)
                        continue
                if link.handshaking:
                    if link.handshake():
                        self._connected(link)
                    continue
                if events & selectors.EVENT_READ:
                    session = self.session
                    for msg in link.receive():
                        if msg["type"] == "RunqAcceptWorker":
                            self.backoff.reset()
                            self.connect_deadline = math.inf
                        session.handle(msg, self.clock())
                        if self.session.hangup is not None and self.link is link:
                            self._drop(self.clock(), self.session.hangup)
                        if self.link is not link or self.session.exit_code is not None:
                            break
                if events & selectors.EVENT_WRITE and self.link is link:
                    link.flush()
            except LinkDown as exc:
                if self.link is link:
                    self._drop(self.clock(), str(exc))
        # What the messages made the session send is written by the advance() that follows, with
        # whatever that adds: one send() per turn.

    def _connected(self, link: Link) -> None:
        self.log.info("connected to runq at %s:%s%s", *self.address, " (TLS)" if self.tls is not None else "")
        link.queue(self.session.hello())

    # -- the connection ----------------------------------------------------------------

    def _connect(self, now: float) -> None:
        try:
            self.link = Link.open(self.address)
        except LinkDown as exc:
            self._retry_later(now, str(exc))
            return
        self.connect_deadline = now + self.connect_timeout
        self.selector.register(self.link.sock, selectors.EVENT_WRITE)
        self.link.watched = selectors.EVENT_WRITE

    def _drop(self, now: float, reason: str) -> None:
        self.selector.unregister(self.link.sock)
        self.link.close()
        self.link = None
        self.connect_deadline = math.inf
        self.session.disconnected()
        if self.session.stopping:
            self.log.warning("lost runq while stopping (%s)", reason)
        else:
            self._retry_later(now, reason)

    def _retry_later(self, now: float, reason: str) -> None:
        delay = self.backoff.next()
        self.retry_at = now + delay
        self.log.warning("%s; reconnecting in %.1fs", reason, delay)

    def _send(self, msg: dict) -> None:
        """The session's way out; messages are dropped while runq is away (the session re-sends reports).
        Queued here, written at the end of the turn (``_flush``)."""
        link = self.link
        if link is None or link.connecting:
            return
        link.out += protocol.encode(msg)   # Link.queue, inlined: once or twice per run

    def _pump_upload(self, now: float) -> None:
        """Send output file chunks while fewer than UPLOAD_BUFFER bytes wait to be written: the
        socket's pace, never a whole file in memory."""
        while (self.link is not None and not self.link.connecting and len(self.link.out) < UPLOAD_BUFFER
               and self.session.send_upload(now)):
            pass

    def _flush(self) -> None:
        """Write what this turn queued (one send() for all of it), then watch the socket accordingly."""
        link = self.link
        if link is not None and link.out and not link.connecting and not link.handshaking:
            try:
                link.flush()
            except LinkDown as exc:
                self._drop(self.clock(), str(exc))
        self._watch()

    def _watch(self) -> None:
        """Ask the selector for writability only while output is waiting."""
        link = self.link
        if link is None or link.connecting:
            return
        if link.handshaking:
            wanted = link.wants
        else:
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.out else 0)
        if link.watched != wanted:
            self.selector.modify(link.sock, wanted)
            link.watched = wanted

    def _drain_wakeups(self) -> None:
        try:
            self._wake_r.recv(4096)   # one byte per wakeup; any left over wake the next select at once
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Release sockets; give an engine still running a moment to clean up (kill its children)."""
        session = self.session
        session.log_summary(self.clock())   # the runs ended since the last summary line
        job = session.last_job
        if job is not None and not job.done():
            job.request_abort("worker exiting")
            remaining = session.stop_deadline - self.clock() if session.stopping else 1.0
            if not job.wait(max(0.1, remaining)):
                self.log.warning("engine of run %s still running at exit", run_name(job.key))
        if self.link is not None:
            self.selector.unregister(self.link.sock)
            self.link.close()
            self.link = None
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
