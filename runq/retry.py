"""Retries of transient failures, sans I/O: the delay before a run may go again, and the
runs waiting out that delay in one heap ordered by deadline (no sweeps over runs).

A run in backoff is in state ``waiting`` but not in its batch's ``requeued`` heap;
``Coordinator.tick`` takes the runs that are due (``due(now)``) and puts them back.
"""
from __future__ import annotations

import heapq


class Backoff:
    def __init__(self, base: float = 1.0, cap: float = 60.0):
        self.base, self.cap = base, cap
        self._heap: list[tuple[float, object]] = []
        self._live: dict[object, float] = {}      # run key -> its deadline

    def delay(self, failures: int) -> float:
        """Seconds to wait after the run's `failures`-th failure: base, doubling, at most cap."""
        return min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), 64))

    def hold(self, key, until: float) -> None:
        self._live[key] = until
        heapq.heappush(self._heap, (until, key))

    def discard(self, key) -> None:
        self._live.pop(key, None)

    def __contains__(self, key) -> bool:
        return key in self._live

    def __len__(self) -> int:
        return len(self._live)

    def due(self, now: float) -> list:
        """Remove and return the keys whose deadline has come, earliest first."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            if self._live.get(key) == until:
                del self._live[key]
                out.append(key)
        if len(heap) > 2 * len(self._live) + 32:   # many discarded entries: drop them
            self._heap = [(u, k) for k, u in self._live.items()]
            heapq.heapify(self._heap)
        return out

    def next_deadline(self) -> float | None:
        return min(self._live.values()) if self._live else None
