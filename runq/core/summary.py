"""runq's periodic activity line (INFO), so an operator sees activity in the log while the
per-run lines are at DEBUG; the same shape as the worker's (worker/summary.py):

    runs ended in the last 60s, engine aurora: 12 finished, 0 failed; engine dummy: 9400 finished, 2 failed; 3 requeued; 4 batches active, 16 workers connected

A period starts when the first run ends after the last line; nothing ended, no line.
"""
from __future__ import annotations

SHOWN = ("finished", "failed", "cancelled")   # the run states a line counts; finished and failed always shown


class Summary:
    def __init__(self, every: float):
        self.every = every
        self.since: float | None = None
        self.by_engine: dict[str, dict[str, int]] = {}   # engine -> run state -> count
        self.requeued = 0

    def ended(self, engine: str, state: str, now: float) -> None:
        """An attempt of a run of `engine` ended at `now`, moving the run to `state`."""
        if self.since is None:
            self.since = now
        if state == "waiting":
            self.requeued += 1
            return
        counts = self.by_engine.setdefault(engine, {})
        counts[state] = counts.get(state, 0) + 1

    def line(self, now: float, batches: int, workers: int) -> str | None:
        """The line for the period ending now (None when nothing ended), and a new period."""
        if self.since is None:
            return None
        engines = "; ".join(
            f"engine {engine}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in SHOWN
                                             if s in counts or s != "cancelled")
            for engine, counts in sorted(self.by_engine.items()))
        text = (f"runs ended in the last {max(0.0, now - self.since):.0f}s, {engines or 'none'}; "
                f"{self.requeued} requeued; {batches} batches active, {workers} workers connected")
        self.by_engine, self.requeued, self.since = {}, 0, None
        return text
