"""Which idle worker gets which waiting run: indexes only, no sockets, no DB, no clock.

Rule (ORIGINAL.md): engines equal; the worker's group is empty or equal to the
batch's; the worker's user is empty or equal.  Among idle matching workers the
lowest cost wins, then the highest speed, then the highest priority, then the
one idle longest.  Runs go in submission order: lowest batch id first (the
batch decides the order of its own runs).

Both sides are indexed so that a dispatch costs O(log n), whatever the length
of the queue or the number of workers:

* idle workers: one heap per (engine, group, user) key, "" being the wildcard;
  a batch (e, g, u) looks at the heads of at most four heaps:
  (e, g, u), (e, g, ""), (e, "", u), (e, "", "").
* batches with waiting runs: a heap of batch ids under each of the four keys a
  worker can ask with, ANY standing for "worker left this empty":
  (e, g, u), (e, g, ANY), (e, ANY, u), (e, ANY, ANY).

Heaps use lazy deletion: an entry is live only while it is the one recorded
for its worker or batch.
"""
from __future__ import annotations

import heapq
import itertools

ANY = None


def matches(batch_traits: tuple[str, str, str], worker_traits: tuple[str, str, str]) -> bool:
    """The rule itself, for tests and for checks outside the indexes."""
    be, bg, bu = batch_traits
    we, wg, wu = worker_traits
    return be == we and wg in ("", bg) and wu in ("", bu)


class Matcher:
    def __init__(self):
        self._idle: dict[tuple, list] = {}        # worker key -> heap of entries
        self._idle_entry: dict[int, tuple] = {}   # worker id -> its live entry
        self._idle_key: dict[int, tuple] = {}
        self._ready: dict[tuple, list] = {}       # ask key -> heap of batch ids
        self._ready_keys: dict[int, tuple] = {}   # batch id -> its traits, while ready
        self._seq = itertools.count()

    # ---- idle workers
    def add_idle(self, worker_id: int, traits: tuple[str, str, str],
                 cost: float, speed: float, priority: float) -> None:
        self.remove_idle(worker_id)
        entry = (cost, -speed, -priority, next(self._seq), worker_id)
        self._idle_entry[worker_id] = entry
        self._idle_key[worker_id] = traits
        heapq.heappush(self._idle.setdefault(traits, []), entry)

    def remove_idle(self, worker_id: int) -> None:
        self._idle_entry.pop(worker_id, None)
        self._idle_key.pop(worker_id, None)

    def is_idle(self, worker_id: int) -> bool:
        return worker_id in self._idle_entry

    def idle_count(self) -> int:
        return len(self._idle_entry)

    def _head(self, key: tuple):
        heap = self._idle.get(key)
        while heap:
            entry = heap[0]
            if self._idle_entry.get(entry[-1]) is entry:
                return entry
            heapq.heappop(heap)
        return None

    def take_worker_for(self, batch_traits: tuple[str, str, str]) -> int | None:
        """Remove and return the best idle worker for a batch, or None."""
        e, g, u = batch_traits
        best = None
        for key in {(e, g, u), (e, g, ""), (e, "", u), (e, "", "")}:
            head = self._head(key)
            if head is not None and (best is None or head < best):
                best = head
        if best is None:
            return None
        self.remove_idle(best[-1])
        return best[-1]

    # ---- batches with waiting runs
    @staticmethod
    def _ask_keys(traits: tuple[str, str, str]) -> tuple[tuple, ...]:
        e, g, u = traits
        return (e, g, u), (e, g, ANY), (e, ANY, u), (e, ANY, ANY)

    def add_ready(self, batch_id: int, traits: tuple[str, str, str]) -> None:
        if batch_id in self._ready_keys:
            return
        self._ready_keys[batch_id] = traits
        for key in self._ask_keys(traits):
            heapq.heappush(self._ready.setdefault(key, []), batch_id)

    def remove_ready(self, batch_id: int) -> None:
        self._ready_keys.pop(batch_id, None)

    def is_ready(self, batch_id: int) -> bool:
        return batch_id in self._ready_keys

    def batch_for(self, worker_traits: tuple[str, str, str]) -> int | None:
        """The earliest batch with waiting runs this worker can take, or None."""
        e, g, u = worker_traits
        heap = self._ready.get((e, g or ANY, u or ANY))
        while heap:
            batch_id = heap[0]
            if batch_id in self._ready_keys:
                return batch_id
            heapq.heappop(heap)
        return None


class Presence:
    """Connected workers that take new runs, counted by traits, so that "does any worker serve
    this batch?" (views: `served`) and "which engines are served?" (Ping) cost O(1) and O(engines),
    not a scan of the workers.  The coordinator calls ``update`` whenever a worker connects,
    disconnects or starts draining; it is idempotent."""

    def __init__(self):
        self._traits: dict[int, tuple[str, str, str]] = {}   # worker id -> traits, while present
        self._count: dict[tuple[str, str, str], int] = {}
        self._engines: dict[str, int] = {}

    def update(self, worker_id: int, traits: tuple[str, str, str], present: bool) -> None:
        old = self._traits.pop(worker_id, None)
        if old is not None:
            self._add(old, -1)
        if present:
            self._traits[worker_id] = traits
            self._add(traits, +1)

    def _add(self, traits: tuple[str, str, str], delta: int) -> None:
        for table, key in ((self._count, traits), (self._engines, traits[0])):
            n = table.get(key, 0) + delta
            if n:
                table[key] = n
            else:
                del table[key]

    def serves(self, batch_traits: tuple[str, str, str]) -> bool:
        """Whether a present worker matches a batch with these (engine, group, user)."""
        e, g, u = batch_traits
        return any(key in self._count for key in ((e, g, u), (e, g, ""), (e, "", u), (e, "", "")))

    def present_keys(self) -> frozenset:
        """The traits with a present worker (runq's reader process gets a copy for `served`)."""
        return frozenset(self._count)

    def engines(self) -> dict[str, int]:
        """engine -> number of present workers, by name."""
        return dict(sorted(self._engines.items()))
