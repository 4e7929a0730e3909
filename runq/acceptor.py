"""runq's listening sockets: accept without spinning when descriptors run out (accept() pauses
for a moment, one log line an episode)."""
from __future__ import annotations

import errno
import logging
import math
import selectors
import socket

log = logging.getLogger("runq.server")

ACCEPT_PAUSE = 0.75       # seconds without accepting after EMFILE/ENFILE
ACCEPT_LOG_EVERY = 60.0   # an episode of failing accepts logs once, however often it recurs within this
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    def __init__(self, sel: selectors.BaseSelector, addresses: list[tuple[str, int]], clock):
        self.sel, self.clock = sel, clock
        self.listeners = []
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, None)
            self.listeners.append(sock)
        self.resume_at: float | None = None   # while accept() is paused for lack of descriptors
        self.failing = False                  # from the first EMFILE until an accept succeeds
        self.logged_at = -math.inf            # when the last episode was logged
        self.recovery_due = False             # log the recovery of the logged episode
        self.unauth: dict[str, int] = {}      # peer address -> its connections without a role

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.listeners]

    def admits(self, peer: str, limit: int) -> bool:
        """Whether another connection from `peer` may be taken (it has fewer than `limit` that
        have not said who they are)."""
        if self.unauth.get(peer, 0) >= limit:
            log.debug("refusing %s: %d connections from it have not said who they are", peer, self.unauth[peer])
            return False
        return True

    def count_unauth(self, peer: str, delta: int) -> None:
        n = self.unauth.get(peer, 0) + delta
        if n > 0:
            self.unauth[peer] = n
        else:
            self.unauth.pop(peer, None)

    def close(self) -> None:
        for sock in self.listeners:
            sock.close()

    def accept(self, listener: socket.socket, admit) -> None:
        """Take what is waiting on `listener` (64 at most), handing each to admit(sock, peer)."""
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self.pause(exc)
                else:  # ECONNABORTED and friends: that one peer only
                    log.debug("accept failed: %s", exc)
                return
            if self.failing:
                self.failing = False
                if self.recovery_due:
                    self.recovery_due = False
                    log.warning("accepting connections again")
            admit(sock, addr[0])

    def pause(self, exc: OSError) -> None:
        """Out of descriptors: stop listening for a moment instead of spinning on a failing accept()."""
        now = self.clock()
        if not self.failing and now - self.logged_at >= ACCEPT_LOG_EVERY:
            self.logged_at, self.recovery_due = now, True   # one log line per episode
            log.error("cannot accept connections: %s; pausing accept() until descriptors are free "
                      "(raise the open-files limit or find who holds the connections)", exc)
        self.failing = True
        for sock in self.listeners:
            if sock in self.sel.get_map():
                self.sel.unregister(sock)
        self.resume_at = now + ACCEPT_PAUSE

    def resume(self) -> None:
        for sock in self.listeners:
            self.sel.register(sock, selectors.EVENT_READ, None)
        self.resume_at = None
