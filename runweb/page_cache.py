"""Serialized pages of GET /batch/{id}, kept per runweb process and bounded by bytes.

An entry is the part of a page that depends only on the batch's stored rows (its runs,
offset, limit, next_offset), already encoded in one media type, with the validators runq gave
with it (the page's `page` tag).  It is never served on its own authority: every request still asks runq
(BatchStatus with ``if_page``), which checks who asks and answers ``not_modified`` only
while that tag is still the page's; the small batch header (`served`, `elapsed`, hints) comes
fresh from runq every time.  So the key needs no asker: access is decided in runq on each
request, and the cached part is the same for everyone who may see it.

A page not kept yet is filled by the first request for it while the others wait for it
(runq is then asked with its version: one full page per process, not one per connection).
Least recently used entries go first; one larger than the whole budget is not kept;
a budget of 0 keeps nothing.  Thread-safe (gunicorn's gthread workers share it).
"""
from __future__ import annotations

import collections
import threading


class PageCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: collections.OrderedDict = collections.OrderedDict()   # key -> (validators, bytes)
        self._lock = threading.Lock()
        self._flights: dict = {}   # key -> Event set when the caller filling it is done

    def get_or_lead(self, key, timeout: float = 10.0) -> tuple[tuple[object, bytes] | None, bool]:
        """(entry, leading): the entry; or, when there is none, whether this caller is the one to
        fill it (then it calls `landed(key)` when done, filled or not).  Callers that come while
        another fills it wait for that (at most `timeout` s), so a cold page under many
        connections is asked for and encoded in full once, not once per connection."""
        if self.max_bytes <= 0:
            return None, False
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry, False
            flight = self._flights.get(key)
            if flight is None:
                self._flights[key] = threading.Event()
                return None, True
        flight.wait(timeout)
        return self.get(key), False

    def landed(self, key) -> None:
        with self._lock:
            flight = self._flights.pop(key, None)
        if flight is not None:
            flight.set()

    def get(self, key) -> tuple[object, bytes] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key, version, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= len(old[1])
            self._entries[key] = (version, body)
            self.size += len(body)
            while self.size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.size -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)
