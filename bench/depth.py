"""Queue depth: runq's dispatch rate with 1,000,000 runs waiting against 1,000.

runq (a real process, SQLite) and W protocol-level workers (bench/driver.py, which report
each run finished at once, so the rate is runq's own) work through the runs; the rate is
dispatches per second over windows of M consecutive dispatches, timed from the start times
runq records (read from its database afterwards: nothing polls runq while it works), the
median of R windows after a warm-up one.  The waiting runs are
spread over batches of --per-batch runs belonging to --owners owners (priorities 0-4 when
this runq knows batch priority), so depth means runs, batches and owners at once:

    shallow  1,000 runs waiting      (1 batch, 1 owner; a fresh batch per repeat)
    deep     1,000,000 runs waiting  (1,000 batches of 1,000, 100 owners; M runs used per repeat)

Matching is O(log n) per dispatch, so the ratio deep/shallow should stay near 1.

    .venv/bin/python bench/depth.py [--deep 1000000] [--shallow 1000] [--workers 8] [--window 600] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from common import PY, ROOT, free_port, stop_all, wait_until  # noqa: E402  (bench/ is on sys.path when run)
from runq import protocol  # noqa: E402
from runq.client import RunqClient  # noqa: E402

HAS_PRIORITY = "priority" in protocol.SCHEMA["StartBatch"]


def start_runq(port: int, tmp: str) -> subprocess.Popen:
    env = dict(os.environ, RUNQ_PORT=str(port), SIMX_DB_URL=f"sqlite:///{tmp}/runq.sqlite",
               SIMX_LOG_LEVEL="WARNING", SIMX_VAR=tmp)
    proc = subprocess.Popen([PY, "-m", "runq"], cwd=ROOT, env=env, stderr=open(f"{tmp}/runq.log", "ab"))
    wait_until(lambda: RunqClient(port=port, timeout=2).request("Ping")["status"] == "ok", 20, "runq up")
    return proc


def submit(client: RunqClient, runs: int, per_batch: int, owners: int) -> list[int]:
    ids = []
    for i, lo in enumerate(range(0, runs, per_batch)):
        extra = {"priority": i % 5} if HAS_PRIORITY else {}
        reply = client.request("StartBatch", name=f"depth{i}", user=f"u{i % owners}", engine="dummy",
                               n_runs=min(per_batch, runs - lo), param={"step_count": 0}, **extra)
        assert reply["status"] == "ok", reply
        ids.append(reply["batch_id"])
    return ids


def dispatched(client: RunqClient) -> int:
    return client.request("Metrics")["totals"]["dispatched"]


def dispatch_times(db: str) -> dict[int, list[float]]:
    """batch id -> sorted start times of its attempts, from runq's database once it has stopped
    (timing from the records, not from polling, so the measurement does not disturb runq)."""
    conn = sqlite3.connect(db)
    try:
        out: dict[int, list[float]] = {}
        for batch_id, started in conn.execute("SELECT batch_id, started FROM attempts"):
            out.setdefault(batch_id, []).append(started)
    finally:
        conn.close()
    return {b: sorted(ts) for b, ts in out.items()}


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def measure(depth: int, args) -> list[float]:
    """Dispatches per second in each of --repeat windows of --window dispatches (after one warm-up)."""
    deep = depth > args.per_batch
    n = args.repeat + 1
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        srv = start_runq(port, tmp)
        client = RunqClient(port=port, timeout=60)
        drivers = []
        try:
            if deep:   # once, before any worker: every run is waiting
                t = time.perf_counter()
                submit(client, depth, args.per_batch, args.owners)
                print(f"    submitted {depth:,} runs in {-(-depth // args.per_batch):,} batches "
                      f"in {time.perf_counter() - t:.1f} s", flush=True)
            log = open(f"{tmp}/drivers.log", "ab")
            drivers = [subprocess.Popen([PY, str(ROOT / "bench" / "driver.py"), str(port)], cwd=ROOT,
                                        stdout=log, stderr=log) for _ in range(args.workers)]
            wait_until(lambda: client.request("Ping")["runq"]["workers_connected"] >= args.workers, 60,
                       "drivers connected")
            if deep:
                wait_until(lambda: dispatched(client) >= n * args.window + args.workers, 600,
                           "enough dispatches", interval=0.5)
            else:   # a fresh batch of `depth` runs per window
                for _ in range(n):
                    bid = submit(client, depth, args.per_batch, 1)[0]
                    wait_until(lambda: client.request("BatchStatus", batch_id=bid, offset=0, limit=1)
                               ["batch"]["state"] != "active", 120, "batch done", interval=0.2)
        finally:
            stop_all(drivers + [srv])
        times = dispatch_times(f"{tmp}/runq.sqlite")
    if deep:
        flat = sorted(t for ts in times.values() for t in ts)
        windows = [flat[i * args.window:(i + 1) * args.window] for i in range(n)]
    else:   # each batch from its first dispatch, while 1,000 down to 1,000 - window runs wait
        windows = [times[b][:args.window] for b in sorted(times)]
    return [rate(w) for w in windows[1:n]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deep", type=int, default=1_000_000)
    parser.add_argument("--shallow", type=int, default=1_000)
    parser.add_argument("--per-batch", type=int, default=1_000)
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--window", type=int, default=600, help="dispatches per measurement (< --shallow)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.window >= args.shallow:
        parser.error("--window must be smaller than --shallow")
    print(f"depth: dispatch rate, {args.workers} driver workers, windows of {args.window} dispatches, "
          f"median of {args.repeat} (batch priority: {'yes' if HAS_PRIORITY else 'no'}; cores: {os.cpu_count()}, "
          f"load: {os.getloadavg()[0]:.2f})", flush=True)
    medians = {}
    for name, depth in (("shallow", args.shallow), ("deep", args.deep)):
        rates = measure(depth, args)
        medians[name] = statistics.median(rates)
        print(f"  {name:8s} {depth:>10,} waiting: median {medians[name]:7.0f} dispatches/s   all: "
              + ", ".join(f"{r:.0f}" for r in rates), flush=True)
    ratio = medians["deep"] / medians["shallow"]
    print(f"depth: {medians['deep']:.0f} dispatches/s with {args.deep:,} runs waiting vs "
          f"{medians['shallow']:.0f} with {args.shallow:,}: ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
