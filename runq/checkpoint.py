"""SQLite's WAL checkpoints, off runq's loop: a thread of its own copies the write-ahead log
back into the database file (PASSIVE: it never blocks the writer or readers), so no loop commit
pays for a checkpoint.

SQLite checkpoints automatically inside the commit that grows the WAL past 1,000 pages; with
synchronous=NORMAL that commit then fsyncs the database file, a 2-6 ms stall of the loop every
few hundred commits (P5's p99).  With the thread, the writer's own automatic checkpoint is only a
backstop (``BACKSTOP_PAGES``), bounding the WAL if the thread falls behind or dies.  The thread
holds no state of runq's and writes no row: crash-only semantics are untouched (SQLite
recovers the WAL on open).  While nothing is committed (an idle fleet) and the last checkpoint
was complete, it wakes without touching the database.
"""
from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("runq.checkpoint")

EVERY = 0.1              # seconds between PASSIVE checkpoints
BACKSTOP_PAGES = 10000   # the writer checkpoints itself past this many WAL pages (~40 MB)


class Checkpointer:
    def __init__(self, path: str, every: float = EVERY, commits=None):
        """`commits`: a counter of the writer's commits (a callable); unchanged since a complete
        checkpoint means nothing to copy.  None: checkpoint every `every` seconds regardless."""
        self.path, self.every, self.commits = path, every, commits
        self.done = 0            # checkpoints run (tests wait for it)
        self.wakes = 0           # periods passed
        self.covered = None      # the commit count a complete checkpoint has copied
        self.last: tuple | None = None   # (busy, WAL pages, pages checkpointed) of the latest
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runq-checkpoint", daemon=True)

    @classmethod
    def start_for(cls, store, every: float = EVERY) -> "Checkpointer | None":
        """For a Store on an SQLite file: move its checkpoints here; None for any other database."""
        url = store.engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        store.defer_checkpoints(BACKSTOP_PAGES)
        cp = cls(url.database, every, commits=lambda: store.commits)
        cp._thread.start()
        return cp

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("checkpoint thread cannot open %s: %s; the writer checkpoints past %d pages",
                      self.path, exc, BACKSTOP_PAGES)
            return
        try:
            while not self._stop.wait(self.every):
                self.wakes += 1
                count = self.commits() if self.commits is not None else None   # read before: it may only grow
                if count is not None and count == self.covered:
                    continue   # no commit since a complete checkpoint: nothing to copy
                try:
                    self.last = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.done += 1
                    if self.last[0] == 0 and self.last[1] == self.last[2]:
                        self.covered = count
                except sqlite3.Error as exc:   # busy or I/O: the next one tries again
                    log.debug("checkpoint failed: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
