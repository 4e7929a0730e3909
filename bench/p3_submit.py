"""P3: submit cost against batch size, through HTTP (POST /batch/new) and at runq's socket.

Run rows are created on first dispatch, so accepting a batch writes one row whatever n_runs
is: the times should not grow with it.  No workers are connected.  Median of --repeat.

    .venv/bin/python bench/p3_submit.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401
import report
from report import Row, median
from stack import BenchStack

SIZES = (1, 1_000, 100_000, 1_000_000)


def run(args) -> list[Row]:
    print(f"P3: submit round trip by n_runs, median of {args.repeat} (no workers connected)", flush=True)
    res = {}
    with BenchStack() as s:
        s.start_runq()
        s.start_runweb()
        s.post_batch(1, name="warm-up")
        for n in SIZES:
            for via in ("http", "socket"):
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    if via == "http":
                        s.post_batch(n, name="p3", param={})
                    else:
                        s.request("StartBatch", name="p3", engine="dummy", n_runs=n, param={})
                    times.append((time.perf_counter() - t0) * 1000)
                res[via, n] = median(times)
            print(f"  n_runs {n:>9,}: HTTP median {res['http', n]:6.2f} ms, socket {res['socket', n]:6.2f} ms", flush=True)
    big, small = res["http", 1_000_000], res["http", 1]
    independent = big < 2 * small + 2
    rows = [Row("P3", "POST /batch/new n_runs 1,000,000 (ms)", f"{big:.1f}", "< 500", big < 500),
            Row("P3", "same, n_runs 1 (ms): independent of n_runs", f"{small:.1f}", "1M < 2× 1 + 2 ms", independent)]
    report.print_rows(rows, f"P3 POST /batch/new 1,000,000 runs in {big:.1f} ms, 1 run in {small:.1f} ms "
                            f"(target < 500 ms and flat: {'met' if big < 500 and independent else 'NOT met'})")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p3_submit")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
