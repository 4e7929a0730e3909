"""The loop's commit, and what runq does while the database refuses it.

A full disk, a lock another process holds on the database (a backup, a ``sqlite3`` shell) or
a database server gone are states, not crashes: the turn's writes stay buffered and nothing
that depends on them is sent; the loop goes on answering what depends on no commit
(handshakes, Ping, heartbeats, reads of what was committed) while the core refuses new work
with the reason (``Coordinator.store_fault``); the commit is tried again every RETRY_EVERY
seconds and runq carries on by itself once it works.  One line says when it starts (and
every minute while it lasts, to stderr as well as the log, which may be on the full disk),
one when it ends.  A lock held longer than ``lock_limit`` ends runq with that reason.
"""
from __future__ import annotations

import logging
import sys
import time

from .store import StoreFault

log = logging.getLogger("runq")

RETRY_EVERY = 1.0     # seconds between tries while the database refuses commits
REMIND_EVERY = 60.0   # seconds between log lines while it lasts


class LockedTooLong(RuntimeError):
    pass


class Committer:
    def __init__(self, store, coord, clock, lock_limit: float = 600.0, stderr=sys.stderr):
        self.store, self.coord, self.clock, self.lock_limit, self.stderr = store, coord, clock, lock_limit, stderr
        self.fault: StoreFault | None = None
        self.since = self.retry_at = self.said_at = 0.0

    def commit(self) -> bool:
        """Commit the turn; False while the database refuses (what depends on it must wait)."""
        now = self.clock()
        if self.fault is not None and now < self.retry_at:
            return False
        pending, started = self.store.pending(), time.perf_counter()
        try:
            self.store.commit()
        except StoreFault as exc:
            self._failed(exc, now)
            return False
        if self.fault is not None:
            self._say(logging.WARNING, f"runq: the database takes commits again after {now - self.since:.0f} s "
                                       "of refusing them; carrying on")
            self.fault = None
            self.coord.store_fault(None)
        if pending:
            self.coord.committed(time.perf_counter() - started, self.store.take_purged())
        return True

    def _failed(self, exc: StoreFault, now: float) -> None:
        self.retry_at = now + RETRY_EVERY
        first = self.fault is None or self.fault.kind != exc.kind
        if first:
            self.since = now if self.fault is None else self.since
            self.coord.store_fault(exc)
        self.fault = exc
        if exc.kind == "locked" and now - self.since > self.lock_limit:
            raise LockedTooLong(f"runq: the database has been locked by another process for {now - self.since:.0f} s "
                                f"(runq.lock_limit {self.lock_limit:.0f} s): {exc.detail}; ending") from exc
        if first or now - self.said_at >= REMIND_EVERY:
            self._say(logging.ERROR, f"runq: cannot commit: {exc.describe()}; holding every reply that depends "
                                     f"on it, refusing new work and trying again every {RETRY_EVERY:.0f} s")

    def _say(self, level: int, line: str) -> None:
        self.said_at = self.clock()
        log.log(level, "%s", line)
        try:   # the log may be on the full disk: stderr too (under supervisor, also a file; best effort)
            if not any(getattr(h, "stream", None) is self.stderr for h in logging.getLogger().handlers):
                print(line, file=self.stderr, flush=True)
        except OSError:
            pass
