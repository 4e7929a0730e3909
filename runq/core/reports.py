"""Outcomes of recent attempts, bounded: how runq recognizes a re-sent report.

A worker keeps its terminal report until it gets the ack, and re-sends it after a
reconnect; if the outcome was already recorded (the ack was lost, or runq died between
commit and send) it is acked without being counted again.  The shell fills this from the
latest stored attempts at start-up (runq/core/recovery.py ``Start.recent``); the core adds
each attempt it ends.  An older report than the cache holds is acked ``accepted: false``
(the worker drops it either way; its outcome is stored).
"""
from __future__ import annotations

from collections import OrderedDict

# Attempts remembered, about 200 bytes each (2 MB).  What comes back is a reconnecting worker's
# unacknowledged reports, at most its prefetch + 1; 10,000 covers a fleet of 2,000 reconnecting
# at once.  A report older than that is still safe: its attempt has ended, so it changes nothing.
MAX_RECENT = 10_000


class RecentReports:
    def __init__(self, rows=(), limit: int = MAX_RECENT):
        self.limit = limit
        self.outcomes: OrderedDict = OrderedDict()
        for row in rows:
            self.add((row["batch_id"], row["batch_index"], row["attempt"]), row["worker_id"], row["outcome"])

    def add(self, key: tuple[int, int, int], worker_id: int | None, outcome: str) -> None:
        self.outcomes[key] = (worker_id, outcome)
        self.outcomes.move_to_end(key)
        if len(self.outcomes) > self.limit:
            self.outcomes.popitem(last=False)

    def get(self, key: tuple[int, int, int]) -> tuple[int | None, str] | None:
        return self.outcomes.get(key)
