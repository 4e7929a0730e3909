"""Which idle worker gets which waiting run: indexes only, no sockets, no DB, no clock.

Rule (ORIGINAL.md): engines equal; the worker's group is empty or equal to the
batch's; the worker's user is empty or equal.  Among idle matching workers the
lowest cost wins, then the highest speed, then the highest priority, then the
one idle longest.  A free worker serves, among the owners with waiting runs it
can take, the one furthest below its fair share (smallest rank, runq/fairshare.py);
within that owner the batch with the highest priority, then the lowest id (the
batch decides the order of its own runs).

Both sides are indexed so that a dispatch costs O(log n), whatever the length
of the queue, the number of batches or the number of workers:

* idle workers: one heap per (engine, group, user) key, "" being the wildcard;
  a batch (e, g, u) looks at the heads of at most four heaps:
  (e, g, u), (e, g, ""), (e, "", u), (e, "", "").
* batches with waiting runs, under each of the four keys a worker can ask with,
  ANY standing for "worker left this empty": (e, g, u), (e, g, ANY), (e, ANY, u),
  (e, ANY, ANY): a heap of owners by rank per ask key, and a heap of batches by
  (-priority, id) per (ask key, owner).  When an owner's usage changes it is
  pushed again, with its new rank, under the ask keys it has batches in that
  workers ask with (an owner heap is built the first time a key is asked).

Heaps use lazy deletion: an entry is live only while it is the one recorded
for its item; a heap with more dead entries than live ones is rebuilt.
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
    def __init__(self, rank=lambda owner: 0.0):
        self.rank = rank                          # owner -> fair-share rank (smaller first)
        self._idle: dict[tuple, list] = {}        # worker key -> heap of entries
        self._idle_entry: dict[int, tuple] = {}   # worker id -> its live entry
        self._idle_key: dict[int, tuple] = {}
        self._ready_keys: dict[int, tuple] = {}   # batch id -> (traits, owner), while ready
        self._owners: dict[tuple, LazyHeap] = {}  # ask key a worker asked with -> owners by rank
        self._key_owners: dict[tuple, set] = {}   # ask key -> owners with batches under it
        self._batches: dict[tuple, LazyHeap] = {}  # (ask key, owner) -> batches by (-priority, id)
        self._owner_keys: dict[str, set] = {}     # owner -> ask keys it has batches under
        self._stale: set = set()                  # owners whose rank changed since the last batch_for
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

    def add_ready(self, batch_id: int, traits: tuple[str, str, str], owner: str = "", priority: int = 0) -> None:
        if batch_id in self._ready_keys:
            return
        self._ready_keys[batch_id] = (traits, owner)
        for key in self._ask_keys(traits):
            batches = self._batches.get((key, owner))
            if batches is None:
                batches = self._batches[(key, owner)] = LazyHeap()
                self._owner_keys.setdefault(owner, set()).add(key)
                self._key_owners.setdefault(key, set()).add(owner)
                if key in self._owners:
                    self._owners[key].push(owner, self.rank(owner))
            batches.push(batch_id, (-priority, batch_id))

    def remove_ready(self, batch_id: int) -> None:
        held = self._ready_keys.pop(batch_id, None)
        if held is None:
            return
        traits, owner = held
        for key in self._ask_keys(traits):
            batches = self._batches[(key, owner)]
            batches.discard(batch_id)
            if not batches:
                del self._batches[(key, owner)]
                self._key_owners[key].discard(owner)
                if key in self._owners:
                    self._owners[key].discard(owner)
                keys = self._owner_keys[owner]
                keys.discard(key)
                if not keys:
                    del self._owner_keys[owner]

    def is_ready(self, batch_id: int) -> bool:
        return batch_id in self._ready_keys

    def ready_count(self) -> int:
        return len(self._ready_keys)

    def batch_for(self, worker_traits: tuple[str, str, str]) -> int | None:
        """The batch a free worker should take a run of, or None: the owner of smallest
        rank among those with waiting runs it can take, then that owner's first batch."""
        if self._stale:
            self._place_again()
        e, g, u = worker_traits
        key = (e, g or ANY, u or ANY)
        owners = self._owners.get(key)
        if owners is None:
            owners = self._owners[key] = self._owner_heap(key)
        head = owners.head()
        if head is None:
            return None
        return self._batches[(key, head[-1])].head()[-1]

    def _owner_heap(self, key: tuple) -> "LazyHeap":
        """The owners under an ask key no worker asked with before: built once, then kept up
        to date (most pools ask with one or two keys, so ranks are pushed under those only)."""
        heap = LazyHeap()
        present = self._key_owners.get(key, ())
        # ties keep arrival order: an owner's best batch entry carries its sequence number
        for owner in sorted(present, key=lambda o: (self.rank(o), self._batches[(key, o)].head()[1])):
            heap.push(owner, self.rank(owner))
        return heap

    def rerank(self, owner: str) -> None:
        """The owner's rank changed.  It is placed again under the asked keys it has batches in
        at the next batch_for (a run's end and the next dispatch often touch the same owner)."""
        self._stale.add(owner)

    def _place_again(self) -> None:
        for owner in self._stale:
            keys = self._owner_keys.get(owner)
            if keys:
                rank = self.rank(owner)
                for key in keys:
                    owners = self._owners.get(key)
                    if owners is not None:
                        owners.push(owner, rank)
        self._stale.clear()

    def rerank_all(self) -> None:
        """Every rank changed by the same factor (fairshare renormalize): rebuild the owner heaps."""
        self._stale.clear()
        for key in self._owners:
            self._owners[key] = self._owner_heap(key)


class LazyHeap:
    """A heap of (sort key, seq, item) with one live entry per item; stale entries are
    dropped when they reach the top, or all at once when they outnumber the live ones."""

    __slots__ = ("heap", "live")
    _seq = itertools.count()

    def __init__(self):
        self.heap: list = []
        self.live: dict = {}

    def __len__(self) -> int:
        return len(self.live)

    def push(self, item, sort_key) -> None:
        entry = (sort_key, next(self._seq), item)
        self.live[item] = entry
        heapq.heappush(self.heap, entry)
        if len(self.heap) > 2 * len(self.live) + 32:
            self.heap = list(self.live.values())
            heapq.heapify(self.heap)

    def discard(self, item) -> None:
        self.live.pop(item, None)

    def head(self):
        """The live entry with the smallest sort key, or None."""
        heap = self.heap
        while heap:
            entry = heap[0]
            if self.live.get(entry[-1]) is entry:
                return entry
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
