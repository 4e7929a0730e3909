"""P5: from the StartBatch frame to a worker's receipt of its assignment, with idle workers.

16 protocol-level workers (bench/fleet.py, one process) wait idle.  Each sample submits a
one-run batch and takes the time from just before the request is sent to the moment a worker
read its RunqAssignRun (time.monotonic_ns on both sides: one clock per machine on Linux):
    socket  StartBatch sent by a RunqClient straight to runq
    HTTP    POST /batch/new to runweb (gunicorn), which forwards it to runq
p50 and p99 over --samples each (a few ms apart, so the workers are idle again).

    .venv/bin/python bench/p5_latency.py [--samples 300] [--secure]
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401
import report
from fleet import Fleet
from report import Row, percentile
from stack import Options, BenchStack, tls_available


def wait_assignment(fleet: Fleet, bid: int, t0: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, b, _ in fleet.assignments_since(t0):
            if b == bid:
                return t
        time.sleep(0.0005)
    raise TimeoutError(f"no assignment of batch {bid} within {timeout} s")


def sample(s: BenchStack, fleet: Fleet, via: str, n: int) -> list[float]:
    out = []
    for i in range(n + 5):
        t0 = time.monotonic_ns()
        if via == "socket":
            bid = s.request("StartBatch", name="p5", engine="dummy", n_runs=1, param={})["batch_id"]
        else:
            bid = s.post_batch(1, name="p5", param={})
        t1 = wait_assignment(fleet, bid, t0)
        if i >= 5:   # the first few warm connections and caches
            out.append((t1 - t0) / 1e6)
        time.sleep(0.005)
    return out


def measure(options: Options, n: int, workers: int = 16) -> dict:
    with BenchStack(options) as s:
        s.start_runq()
        s.start_runweb()
        fleet = Fleet(s, workers, procs=1)
        try:
            common.wait_until(lambda: fleet.registered() >= workers, 60, "fleet registered")
            return {via: sample(s, fleet, via, n) for via in ("socket", "http")}
        finally:
            fleet.close()


def run(args) -> list[Row]:
    print(f"P5: StartBatch to the worker's receipt of its assignment, 16 idle protocol-level workers, "
          f"{args.samples} samples each", flush=True)
    rows = []
    sets = [Options()]
    if args.secure:
        sets.append(Options(secrets=True, tls=tls_available()))
    for opts in sets:
        m = measure(opts, args.samples)
        for via in ("socket", "http"):
            p50, p99 = percentile(m[via], 50), percentile(m[via], 99)
            print(f"  {opts.label()}, {via:6}: p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {max(m[via]):.3f} ms",
                  flush=True)
            label = "" if opts == Options() else f", {opts.label()}"
            if via == "socket" and opts == Options():
                rows.append(Row("P5", "at runq's socket p50 / p99 (ms)", f"{p50:.2f} / {p99:.2f}",
                                "< 0.5 / < 2", p50 < 0.5 and p99 < 2))
            else:
                rows.append(Row("P5", f"{'through HTTP' if via == 'http' else 'at the socket'}{label} p50 / p99 (ms)",
                                f"{p50:.2f} / {p99:.2f}"))
    head = rows[0]
    report.print_rows(rows, f"P5 StartBatch→assignment at runq's socket p50/p99 {head.value} ms "
                            f"(target < 0.5 / < 2: {head.verdict}); through HTTP {rows[1].value} ms")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--secure", action="store_true")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p5_latency")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
