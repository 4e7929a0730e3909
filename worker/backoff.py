"""Delays between attempts to reach runq: exponential, capped, with jitter."""
from __future__ import annotations

import random


class Backoff:
    """Each ``next()`` doubles the delay up to ``cap``; ``reset()`` after a success.

    The delay is scaled by a random factor in [0.5, 1) so that workers cut off
    together by a runq restart do not all come back in the same instant.
    """

    def __init__(self, initial: float = 0.2, cap: float = 10.0, jitter=random.random):
        self.initial = initial
        self.cap = max(cap, initial)
        self.jitter = jitter
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay * (0.5 + 0.5 * self.jitter())

    def reset(self) -> None:
        self.failures = 0
