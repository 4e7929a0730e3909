"""P2: runq's dispatch rate with 1,000,000 runs waiting against with about 1,000.

16 minimal protocol-level workers (bench/driver.py: they report each run finished at once, so
runq is the limit) on a fresh runq for each measurement.  The rate is finished runs per second
from runq's Metrics totals, polled every 20 ms, over a window of --window runs after the first
2,000 (start-up excluded):
    deep     one batch of --deep runs (1,000,000): the window sees about a million waiting
    shallow  batches of 1,000 runs, the next submitted whenever fewer than 500 wait, so about
             1,000 (500 to 1,500) wait throughout
    spread   the same million in 1,000 batches of 1,000 runs of 100 owners (priorities 0-4), so
             fair share moves between owners' batches at every dispatch (reported, not judged)
Both poll the same way, so the poller's cost is the same.  Median of --repeat, alternating.
Importable: `p2_depth.measure(kind, args)`.

    .venv/bin/python bench/p2_depth.py [--deep 1000000] [--window 20000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401
import report
from report import Row, median
from stack import BenchStack

START = 2000


def measure(kind: str, args) -> float:
    with BenchStack() as s:
        s.start_runq()
        s.start_workers(args.workers, kind="driver")
        s.wait_connected(args.workers)
        if kind == "deep":
            s.request("StartBatch", name="deep", engine="dummy", n_runs=args.deep, param={})
        elif kind == "spread":
            per = 1000
            for i, lo in enumerate(range(0, args.deep, per)):
                s.request("StartBatch", name=f"spread{i}", user=f"u{i % 100}", engine="dummy",
                          n_runs=min(per, args.deep - lo), param={}, priority=i % 5)
        t_start = n_start = None
        while True:
            m = s.request("Metrics")
            now, done = time.perf_counter(), m["totals"]["finished"]
            if kind == "shallow" and m["queue"].get("dummy", 0) < 500:
                s.request("StartBatch", name="shallow", engine="dummy", n_runs=1000, param={})
            if t_start is None and done >= START:
                t_start, n_start = now, done
            elif t_start is not None and done - n_start >= args.window:
                return (done - n_start) / (now - t_start)
            time.sleep(0.02)


def run(args) -> list[Row]:
    print(f"P2: dispatch rate (16 drivers, window of {args.window:,} runs) with {args.deep:,} waiting vs ~1,000, "
          f"median of {args.repeat}", flush=True)
    rates = {"shallow": [], "deep": [], **({"spread": []} if args.spread else {})}
    for _ in range(args.repeat):
        for kind in rates:
            rates[kind].append(measure(kind, args))
    for kind, rs in rates.items():
        print(f"  {kind:8}: median {median(rs):,.0f} runs/s (all: {', '.join(f'{r:,.0f}' for r in rs)})", flush=True)
    ratio = median(rates["deep"]) / median(rates["shallow"])
    rows = [Row("P2", f"dispatch rate, {args.deep:,} waiting / ~1,000 waiting",
                f"{median(rates['deep']):,.0f} / {median(rates['shallow']):,.0f} = {ratio:.2f}", "≥ 0.9", ratio >= 0.9)]
    if args.spread:
        spread = median(rates["spread"]) / median(rates["shallow"])
        rows.append(Row("P2", f"same, the {args.deep:,} in batches of 1,000 of 100 owners / ~1,000 waiting",
                        f"{median(rates['spread']):,.0f} / {median(rates['shallow']):,.0f} = {spread:.2f}"))
    report.print_rows(rows, f"P2 dispatch with {args.deep:,} waiting at {ratio:.2f}× the rate with ~1,000 "
                            f"(target ≥ 0.9: {rows[0].verdict})")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deep", type=int, default=1_000_000)
    p.add_argument("--window", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--spread", action=argparse.BooleanOptionalAction, default=True,
                   help="also the million spread over 1,000 batches of 100 owners (--no-spread skips it)")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p2_depth")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
