"""The periodic activity line: what runq did since the last one (INFO), so an operator sees
activity in the log while per-run lines stay at DEBUG.

    runq: last 60 s: 9412 runs ended (dummy: 2 failed, 9400 finished; aurora: 10 finished), 3 requeued; 4 batches active, 16 workers connected
"""
from __future__ import annotations


class Summary:
    def __init__(self, every: float):
        self.every = every
        self.since: float | None = None
        self.by_engine: dict[str, dict[str, int]] = {}   # engine -> run state -> count
        self.requeued = 0

    def ended(self, engine: str, state: str) -> None:
        """An attempt of a run of `engine` ended, moving the run to `state`."""
        if state == "waiting":
            self.requeued += 1
            return
        counts = self.by_engine.setdefault(engine, {})
        counts[state] = counts.get(state, 0) + 1

    def line(self, now: float, batches: int, workers: int) -> str | None:
        """The line for the period ending now (None when nothing ended), and a new period."""
        since = self.since if self.since is not None else now - self.every
        self.since = now
        if not self.by_engine and not self.requeued:
            return None
        total = sum(sum(c.values()) for c in self.by_engine.values())
        engines = "; ".join(f"{engine}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                            for engine, counts in sorted(self.by_engine.items()))
        text = (f"last {now - since:.0f} s: {total} runs ended ({engines}), {self.requeued} requeued; "
                f"{batches} batches active, {workers} workers connected")
        self.by_engine, self.requeued = {}, 0
        return text
