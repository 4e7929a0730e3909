"""The worker's periodic INFO line: the runs it ended, by outcome, and their mean time.

Each run's own lines are at DEBUG: at INFO two lines per run cost as much CPU as a zero-step
run.  This line, about once a minute while runs end, is what an operator sees of a busy worker
at the default level (a failed run still has its own WARNING line).  Time is the loop's ``now``:
``record`` starts a period at the first run that ends in it, ``take`` is due ``interval`` later.
"""
from __future__ import annotations

import math

SUMMARY_INTERVAL = 60.0  # seconds between two summary lines of a busy worker
# Report type -> how the line names it, in the line's order.
OUTCOMES = {"WorkerFinishedRun": "finished", "WorkerFailedRun": "failed", "WorkerAbortedRun": "aborted",
            "WorkerStoppedRun": "stopped"}


class Summary:
    """Counts runs ended since the last line; ``due`` is math.inf while there is nothing to tell."""

    __slots__ = ("engine", "interval", "counts", "seconds", "since", "due")

    def __init__(self, engine: str, interval: float = SUMMARY_INTERVAL):
        if not interval > 0:
            raise ValueError(f"the summary interval must be positive, not {interval!r}")
        self.engine, self.interval = engine, interval
        self.counts: dict[str, int] = {}
        self.seconds = 0.0  # run time of the runs counted, from their start to their outcome
        self.since = self.due = math.inf

    def record(self, report: str, seconds: float, now: float) -> None:
        """A run ended with ``report`` (a terminal report type) after ``seconds`` (Session inlines this)."""
        counts = self.counts
        if not counts:
            self.start(now)
        counts[report] = counts.get(report, 0) + 1
        self.seconds += seconds

    def start(self, now: float) -> None:
        """The first run of a period ended at ``now``: the line is due ``interval`` later."""
        self.since, self.due = now, now + self.interval

    def take(self, now: float) -> str | None:
        """The line for the runs counted so far (None if none), and a fresh count."""
        counts = self.counts
        if not counts:
            return None
        n = sum(counts.values())
        ended = ", ".join(f"{counts.get(report, 0)} {name}" for report, name in OUTCOMES.items()
                          if report in counts or name in ("finished", "failed"))
        line = (f"runs ended in the last {max(0.0, now - self.since):.0f}s, engine {self.engine}: {ended}; "
                f"mean run time {duration(self.seconds / n)}")
        self.counts, self.seconds, self.since, self.due = {}, 0.0, math.inf, math.inf
        return line


def duration(seconds: float) -> str:
    """A run time as an operator reads it: 0.041 ms, 812 ms, 3.2 s, 2.5 min, 1.3 h."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 100:
        return f"{seconds:.3g} s"
    if seconds < 6000:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"
