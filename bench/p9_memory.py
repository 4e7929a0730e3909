"""P9: runq's resident memory over a 1,000,000-run batch: flat, no per-run object kept after a run ends.

16 minimal protocol-level workers (bench/driver.py) take the batch's runs as fast as runq
dispatches them; runq's RSS (/proc) is sampled every --every runs finished.  Flat means the
growth from the 10% mark to the end stays under --slack MB (a kept object of even 50 bytes per
run would add 45 MB over 900,000 runs).

    .venv/bin/python bench/p9_memory.py [--runs 1000000] [--slack 5]
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401
import report
from report import Row
from stack import BenchStack


def run(args) -> list[Row]:
    print(f"P9: runq RSS over a {args.runs:,}-run batch through {args.workers} drivers", flush=True)
    samples = []
    with BenchStack() as s:
        s.start_runq()
        s.start_workers(args.workers, kind="driver")
        s.wait_connected(args.workers)
        rss0 = report.rss_mb(s.runq.pid)
        t0 = time.perf_counter()
        bid = s.request("StartBatch", name="p9", engine="dummy", n_runs=args.runs, param={})["batch_id"]
        mark = 0
        while True:
            b = s.request("BatchStatus", batch_id=bid, offset=0, limit=0)["batch"]
            if b["n_finished"] >= mark or b["state"] != "active":
                samples.append((b["n_finished"], report.rss_mb(s.runq.pid), time.perf_counter() - t0))
                mark += args.every
            if b["state"] != "active":
                break
            time.sleep(0.1)
        peak_hwm = _hwm(s.runq.pid)
    line = "  ".join(f"{n // 1000}k:{r:.0f}" for n, r, _ in samples)
    print(f"  RSS before {rss0:.0f} MB; by runs finished (k: MB): {line}; peak {peak_hwm:.0f} MB", flush=True)
    tenth = next(r for n, r, _ in samples if n >= args.runs // 10)
    end = samples[-1][1]
    growth = end - tenth
    elapsed = samples[-1][2]
    print(f"  {args.runs:,} runs in {elapsed:.0f} s ({args.runs / elapsed:,.0f} runs/s); growth from 10% to the end "
          f"{growth:+.1f} MB ({growth * 1048576 / (args.runs * 0.9):+.1f} bytes per run)", flush=True)
    rows = [Row("P9", f"runq RSS at 10% / end of {args.runs:,} runs (MB)", f"{tenth:.0f} / {end:.0f}",
                f"flat (< +{args.slack:g} MB)", growth < args.slack)]
    report.print_rows(rows, f"P9 runq RSS {tenth:.0f} MB at 10% and {end:.0f} MB at the end of {args.runs:,} runs "
                            f"(flat: {rows[0].verdict})")
    return rows


def _hwm(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--every", type=int, default=100_000)
    p.add_argument("--slack", type=float, default=5)
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p9_memory")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
