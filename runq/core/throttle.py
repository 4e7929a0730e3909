"""Failed-login throttling: at most `limit` failures per key within `window` seconds.

Pure and in memory (runq's, so every gunicorn worker of runweb counts into the same
tally): runweb reports each failed login for its address and its user name; a key
with `limit` failures in the last `window` seconds is refused until the oldest of
them is older than that.  Memory is bounded: at most `max_keys` keys are kept,
the stalest dropped first.
"""
from __future__ import annotations

from collections import OrderedDict, deque


class Throttle:
    def __init__(self, limit: int = 10, window: float = 60.0, max_keys: int = 100_000):
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until `key` may try again, or None when it may now."""
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return None
        return max(times[-self.limit] + self.window - now, 0.001)

    def fail(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)
