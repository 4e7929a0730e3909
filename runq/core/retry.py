"""Retries of transient failures, sans I/O: the delay before a run may go again.

A run in backoff is in state ``waiting`` but not in its batch's ``requeued`` heap; its
deadline is a ``("retry", run key)`` timer in the coordinator's one deadline heap
(runq/timers.py), which puts it back when it falls due: no sweep over runs, and no
deadline structure of its own.
"""
from __future__ import annotations


class Backoff:
    def __init__(self, base: float = 1.0, cap: float = 60.0):
        self.base, self.cap = base, cap

    def delay(self, failures: int) -> float:
        """Seconds to wait after the run's `failures`-th failure: base, doubling, at most cap."""
        return min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), 64))
