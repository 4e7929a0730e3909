"""Deadlines in order: a heap with lazy invalidation.  Pure: no clock, no I/O.

Each timer is named by ``(kind, key)`` (e.g. ``("lease", worker_id)``) and has at
most one live deadline.  ``set`` replaces the live deadline (the older heap
entry stays behind and is skipped when it surfaces), ``cancel`` forgets it,
``due(now)`` pops what is due.  A turn therefore costs O(due * log n) whatever
the number of timers waiting: a quiet fleet of 10,000 workers costs nothing
until one of their deadlines comes.

Usable by any part of the core (leases, grace, time limits, contact writes,
retention; backoff of failed runs) without knowing of the others.
"""
from __future__ import annotations

import heapq
import itertools
import math


class Timers:
    def __init__(self):
        self.heap: list = []                  # (when, seq, kind, key)
        self.live: dict[tuple, float] = {}    # (kind, key) -> its live deadline
        self.seq = itertools.count()
        self.popped = 0                       # heap entries taken off so far (work done; tests count it)

    def __len__(self) -> int:
        return len(self.live)

    def set(self, kind: str, key, when: float) -> None:
        """Arm (kind, key) for `when`, replacing any deadline it had."""
        name = (kind, key)
        if self.live.get(name) == when:
            return
        self.live[name] = when
        heapq.heappush(self.heap, (when, next(self.seq), kind, key))

    def set_earliest(self, kind: str, key, when: float) -> None:
        """Arm (kind, key) for `when` unless it is already armed for an earlier time."""
        if self.live.get((kind, key), math.inf) > when:
            self.set(kind, key, when)

    def cancel(self, kind: str, key) -> None:
        self.live.pop((kind, key), None)

    def when(self, kind: str, key) -> float | None:
        return self.live.get((kind, key))

    def next_deadline(self) -> float:
        """The earliest live deadline (math.inf if none); drops stale entries on the way."""
        while self.heap:
            when, _, kind, key = self.heap[0]
            if self.live.get((kind, key)) == when:
                return when
            heapq.heappop(self.heap)
            self.popped += 1
        return math.inf

    def due(self, now: float):
        """Yield (kind, key) of every live timer due at `now`, earliest first; each fires once.
        A handler may set new timers while this runs (those due by `now` fire in this pass too)."""
        heap, live = self.heap, self.live
        while heap and heap[0][0] <= now:
            when, _, kind, key = heapq.heappop(heap)
            self.popped += 1
            if live.get((kind, key)) != when:
                continue   # replaced or cancelled since
            del live[(kind, key)]
            yield kind, key
        if len(heap) > 64 and len(heap) > 4 * len(live):   # mostly stale entries: rebuild
            self.heap = [(w, next(self.seq), k, key) for (k, key), w in live.items()]
            heapq.heapify(self.heap)
