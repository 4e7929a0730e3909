"""Failed-login throttling that cannot lock anyone out (pure; runq's, so every gunicorn
worker of runweb counts into the same tally).

runweb reports each failed login with its address and user name.  Three windows of
`window` seconds are kept: per (address, user) at most `pair_limit` failures, per address
`address_limit`, and per user a ceiling `user_ceiling` across all addresses.  A login is
refused (429, Retry-After) while its (address, user) or its address is over its limit, or
its user is over the ceiling: below the ceiling a correct password from an address that is
not itself over its limit gets in, however hard someone else guesses that user's password.

Memory is bounded (`max_keys` keys, the stalest dropped first).  Counts survive a restart:
the changed keys are written in batches (``take_changes``, at most once a second: runq/core/
deadlines.py) and read back at start (``load``).
"""
from __future__ import annotations

from collections import OrderedDict, deque


class Throttle:
    def __init__(self, pair_limit: int = 10, address_limit: int = 30, user_ceiling: int = 300,
                 window: float = 60.0, max_keys: int = 100_000):
        self.limits = {"pair": pair_limit, "address": address_limit, "user": user_ceiling}
        self.window, self.max_keys = window, max_keys
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._changed: set[str] = set()

    @staticmethod
    def keys(address: str, user: str) -> tuple[str, str, str]:
        return f"pair {address} {user}", f"address {address}", f"user {user}"

    def _limit(self, key: str) -> int:
        return self.limits[key.split(" ", 1)[0]]

    def _recent(self, key: str, now: float) -> deque | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            self._changed.add(key)
            return None
        return times

    def _wait(self, key: str, now: float) -> float | None:
        times, limit = self._recent(key, now), self._limit(key)
        if times is None or len(times) < limit:
            return None
        return max(times[-limit] + self.window - now, 0.001)

    def retry_after(self, address: str, user: str, now: float) -> float | None:
        """Seconds until a login for `user` from `address` may be tried, or None when it may now."""
        waits = [w for w in (self._wait(k, now) for k in self.keys(address, user)) if w is not None]
        return max(waits) if waits else None

    def fail(self, address: str, user: str, now: float) -> None:
        for key in self.keys(address, user):
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque(maxlen=self._limit(key))
            times.append(now)
            self._failures.move_to_end(key)
            self._changed.add(key)
        while len(self._failures) > self.max_keys:
            self._changed.add(self._failures.popitem(last=False)[0])

    # ---- what survives a restart
    def take_changes(self) -> dict[str, list[float] | None]:
        """The keys changed since last asked: key -> its failure times (None: gone)."""
        out = {k: (list(self._failures[k]) if k in self._failures else None) for k in self._changed}
        self._changed = set()
        return out

    def load(self, rows, now: float) -> None:
        """Counts read back at start: (key, times) rows; what is older than the window is dropped."""
        for key, times in rows:
            kind = key.split(" ", 1)[0]
            if kind not in self.limits or not isinstance(times, list):
                continue
            recent = [t for t in times if isinstance(t, (int, float)) and t > now - self.window]
            if recent:
                self._failures[key] = deque(sorted(recent)[-self._limit(key):], maxlen=self._limit(key))
