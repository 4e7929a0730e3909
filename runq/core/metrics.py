"""runq's own counters and latency histograms, kept as plain numbers, and the Metrics reply.

The coordinator and the server call one-line observations (``dispatched``,
``attempt_ended``, ``batch_ended``, ``committed``); nothing here does I/O or takes a lock, so it
costs a few additions on the dispatch path.  ``snapshot()`` builds the answer
to the ``Metrics`` client request from these numbers plus the coordinator's
in-memory model, so every runweb process (any gunicorn worker) shows the same
figures.  runweb turns the snapshot into Prometheus text (runweb/metrics.py).

Runs of ended batches are not in memory: their totals by state come from the
store once at start (``store.ended_batch_totals()``), grow as batches end,
and are read again after a purge.
"""
from __future__ import annotations

import bisect

from . import states

# upper bounds in seconds; +Inf is implied
DISPATCH_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Counts per bucket (not cumulative), their sum and count: Prometheus' histogram, by hand."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # the last one is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def view(self) -> dict:
        """Cumulative counts per upper bound, as Prometheus wants them; "+Inf" last."""
        cumulative, total = [], 0
        for bound, n in zip(list(self.bounds) + ["+Inf"], self.counts):
            total += n
            cumulative.append([bound, total])
        return {"buckets": cumulative, "sum": round(self.sum, 6), "count": self.count}


class Metrics:
    def __init__(self, started: float = 0.0):
        self.started = started
        self.n_dispatched = 0
        self.n_finished = 0                       # runs that ended finished (not attempts)
        self.n_failed = 0                         # runs that ended failed (their last attempt)
        self.outcomes: dict[str, int] = {}        # attempts ended, by outcome
        self.dispatch_latency = Histogram(DISPATCH_BUCKETS)
        self.commit_latency = Histogram(COMMIT_BUCKETS)
        # ended batches: state -> count, and run state -> runs in them
        self.ended_batches: dict[str, int] = {}
        self.ended_runs: dict[str, int] = {}

    # ---- observations (one-liners at the call sites)
    def dispatched(self, waited: float) -> None:
        """A run was handed to a worker after waiting `waited` seconds since it became ready."""
        self.n_dispatched += 1
        self.dispatch_latency.observe(waited)

    def attempt_ended(self, outcome: str, new_state: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if new_state == states.FINISHED:
            self.n_finished += 1
        elif new_state == states.FAILED:
            self.n_failed += 1

    def committed(self, seconds: float) -> None:
        self.commit_latency.observe(seconds)

    def batch_ended(self, batch) -> None:
        self.ended_batches[batch.state] = self.ended_batches.get(batch.state, 0) + 1
        for state in (states.FINISHED, states.FAILED, states.CANCELLED):
            self.ended_runs[state] = self.ended_runs.get(state, 0) + getattr(batch, "n_" + state)

    def load_ended(self, totals: dict[str, dict[str, int]]) -> None:
        """Adopt the store's totals of ended batches: {batch state: {"batches": n, run state: n}}."""
        self.ended_batches, self.ended_runs = {}, {}
        for bstate, row in totals.items():
            self.ended_batches[bstate] = row.get("batches", 0)
            for state in (states.FINISHED, states.FAILED, states.CANCELLED):
                self.ended_runs[state] = self.ended_runs.get(state, 0) + row.get(state, 0)

    # ---- the Metrics reply
    def snapshot(self, batches, workers, now: float, label=lambda engine: engine) -> dict:
        """Everything /metrics shows, from the active batches and the workers held in memory.
        `label(engine)`: the name an engine's series gets (only declared names: a worker may
        announce any engine, and each name would be a series of its own)."""
        runs = {s: self.ended_runs.get(s, 0) for s in states.RUN_STATES}
        batch_states = dict(self.ended_batches)
        queue: dict[str, int] = {}
        for batch in batches:
            batch_states[batch.state] = batch_states.get(batch.state, 0) + 1
            for s in states.RUN_STATES:
                runs[s] += getattr(batch, "n_" + s)
            # every engine asked for or served gets a series, 0 included, so it does not vanish
            name = label(batch.engine)
            queue[name] = queue.get(name, 0) + (batch.n_waiting if batch.has_waiting() else 0)
        by_worker: dict[tuple[str, str], int] = {}
        for w in workers:
            name = label(w.engine)
            if w.conn is not None:
                queue.setdefault(name, 0)
            by_worker[(name, w.state)] = by_worker.get((name, w.state), 0) + 1
        return {
            "uptime": round(now - self.started, 3),
            "runs": runs,
            "batches": batch_states,
            "queue": dict(sorted(queue.items())),
            "workers": [{"engine": e, "state": s, "count": n} for (e, s), n in sorted(by_worker.items())],
            "totals": {"dispatched": self.n_dispatched, "finished": self.n_finished, "failed": self.n_failed,
                       "attempts": dict(sorted(self.outcomes.items()))},
            "histograms": {"dispatch_latency_seconds": self.dispatch_latency.view(),
                           "commit_latency_seconds": self.commit_latency.view()},
        }
