"""Fair share among batch owners (HTCondor's model), sans I/O: usage and ranks, no clock of its own.

An owner's usage is worker-seconds with exponential decay (``sched.half_life``).
A free worker goes to the owner with waiting runs whose usage divided by its
share (``sched.shares``, 1 by default) is the smallest: its *rank*.

Decay never needs a sweep: usage is stored scaled, ``V = U(t) * e^(lambda (t - base))``,
which stays constant while nothing is added (U decays exactly as the factor
grows), and adding x worker-seconds at time t adds ``x * e^(lambda (t - base))``.
Ranks ``V / share`` therefore compare owners at any time without being updated.
When ``lambda (t - base)`` passes RENORM the values are divided by the factor and
``base`` moves to t (``renormalize``; the matcher then re-ranks: every few days
at the default half-life).

A run in progress counts too, so a burst of dispatches does not all go to one
owner: at dispatch the owner is charged an estimate of the run's length (a
moving mean of its recent runs), at the end the estimate is replaced by the
worker-seconds the run really took.
"""
from __future__ import annotations

import math

RENORM = 30.0            # e^30 ~ 1e13: renormalize long before floats lose anything
ESTIMATE_WEIGHT = 0.2    # weight of the latest run in an owner's moving mean run time
FIRST_ESTIMATE = 1.0     # seconds charged per dispatch before any run of anyone has ended
HISTORY_HALF_LIVES = 20  # usage restored at start-up from attempts this many half-lives back (2^-20 left)
HISTORY_SLOTS_PER_HALF_LIFE = 128


class FairShare:
    def __init__(self, half_life: float = 3600.0, shares=(), now: float = 0.0):
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self.rate = math.log(2) / half_life
        self.shares = dict(shares)
        self.base = now
        self._scaled: dict[str, float] = {}                 # owner -> V
        self._estimate: dict[str, float] = {}               # owner -> moving mean run time (s)
        self._running: dict[object, tuple[str, float, float]] = {}  # run key -> (owner, started, charged V)
        self._mean = FIRST_ESTIMATE                         # over all owners: an owner's first estimate

    # ---- reading
    def share(self, owner: str) -> float:
        return self.shares.get(owner, 1.0)

    def rank(self, owner: str) -> float:
        """Smaller goes first.  Comparable between owners at any time (until renormalize)."""
        return self._scaled.get(owner, 0.0) / self.share(owner)

    def usage(self, owner: str, now: float) -> float:
        """Decayed worker-seconds at `now`, runs in progress counted at their estimate."""
        return self._scaled.get(owner, 0.0) / self._factor(now)

    def running(self) -> int:
        return len(self._running)

    def _factor(self, now: float) -> float:
        return math.exp(self.rate * (now - self.base))

    # ---- changing
    def charge(self, owner: str, seconds: float, now: float) -> None:
        """Add worker-seconds used at `now`."""
        self._add(owner, max(0.0, seconds) * self._factor(now))

    def _add(self, owner: str, scaled: float) -> None:
        self._scaled[owner] = max(0.0, self._scaled.get(owner, 0.0) + scaled)

    def started(self, key, owner: str, now: float) -> None:
        """A run of `owner` was dispatched: charge its estimated length now."""
        self.ended(key, now, charge=False)   # a key still recorded (never ended) is replaced
        charged = self._estimate.get(owner, self._mean) * self._factor(now)
        self._add(owner, charged)
        self._running[key] = (owner, now, charged)

    def ended(self, key, now: float, charge: bool = True) -> str | None:
        """The attempt of run `key` ended: its estimate becomes the time it really took.
        Returns its owner (None for a run this index never saw start, e.g. before a restart)."""
        held = self._running.pop(key, None)
        if held is None:
            return None
        owner, started, charged = held
        self._add(owner, -charged)
        if charge:
            took = max(0.0, now - started)
            self.charge(owner, took, now)
            old = self._estimate.get(owner, self._mean)
            self._estimate[owner] = old + ESTIMATE_WEIGHT * (took - old)
            self._mean += ESTIMATE_WEIGHT * (took - self._mean)
        return owner

    def restore(self, history) -> None:
        """Usage as it had decayed to now, from stored attempts: (owner, slot start, worker-seconds,
        attempts) per slot of ended attempts (runq/startup.py reads them), charged at the
        middle of their slot; an owner's estimate is the mean run time of its latest slot."""
        latest: dict[str, tuple[float, float, int]] = {}
        width = self.history_window(0.0)[1]
        for owner, start, seconds, n in history:
            self.charge(owner, seconds, start + width / 2)
            if n and (owner not in latest or start > latest[owner][0]):
                latest[owner] = (start, seconds, n)
        for owner, (_, seconds, n) in latest.items():
            self._estimate[owner] = seconds / n
        if latest:
            self._mean = sum(s / n for _, s, n in latest.values()) / len(latest)

    def history_window(self, now: float) -> tuple[float, float]:
        """(since, slot width) of the stored attempts restore() wants: HISTORY_HALF_LIVES back,
        HISTORY_SLOTS_PER_HALF_LIFE slots a half-life (a slot's decay varies by under 0.6 %)."""
        half_life = math.log(2) / self.rate
        return now - HISTORY_HALF_LIVES * half_life, half_life / HISTORY_SLOTS_PER_HALF_LIFE

    # ---- keeping numbers small
    def due(self, now: float) -> bool:
        """Whether renormalize(now) should run (then the caller re-ranks everything)."""
        return now >= self.due_at()

    def due_at(self) -> float:
        """The time from which due() is true (math.inf if never)."""
        return self.base + RENORM / self.rate if self.rate > 0 else math.inf

    def renormalize(self, now: float) -> None:
        factor = self._factor(now)
        self.base = now
        busy = {owner for owner, _, _ in self._running.values()}
        self._scaled = {o: v / factor for o, v in self._scaled.items() if v / factor > 1e-9 or o in busy}
        self._running = {k: (o, s, c / factor) for k, (o, s, c) in self._running.items()}
