"""P7: runq restarted with --waiting runs waiting and --workers workers reconnecting.

A batch of waiting+workers runs is submitted; a fleet of protocol-level workers (bench/fleet.py,
mode hold) takes one run each and keeps it, so `--waiting` runs wait.  runq is then killed
(SIGKILL: a crash; --term for a clean stop) and started again on the same port and database.
The workers reconnect, prove their identity (WorkerReconnect with their run), report the held
run finished and take the next one.  Times from the new runq process's start:
    ping       runq answers Ping (recovered)
    first      the first new assignment read by a worker: dispatching again
    all        every worker re-registered / every worker holding a new assignment

    .venv/bin/python bench/p7_restart.py [--waiting 100000] [--workers 1000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401
import report
from fleet import Fleet
from report import Row, median
from stack import BenchStack


def one(args) -> dict:
    with BenchStack() as s:
        s.start_runq(env_extra={"RUNQ_GRACE": "120", "RUNQ_LEASE": "60"})
        fleet = Fleet(s, args.workers, procs=args.procs, mode="hold")
        try:
            common.wait_until(lambda: fleet.registered() >= args.workers, 300, "fleet registered", interval=0.1)
            bid = s.request("StartBatch", name="p7", engine="dummy", n_runs=args.waiting + args.workers,
                            param={})["batch_id"]
            common.wait_until(lambda: len(fleet.assignments_since(0)) >= args.workers, 120,
                              "every worker holding a run", interval=0.1)
            batch = s.request("BatchStatus", batch_id=bid, offset=0, limit=0)["batch"]
            s.stop_runq(kill=not args.term)
            t0 = time.monotonic_ns()
            s.start_runq(env_extra={"RUNQ_GRACE": "120", "RUNQ_LEASE": "60"}, timeout=120)
            t_ping = time.monotonic_ns()
            common.wait_until(lambda: fleet.assignments_since(t0), 120, "a new assignment", interval=0.002)
            first = min(a[0] for a in fleet.assignments_since(t0))
            common.wait_until(lambda: fleet.reregistered() >= args.workers and
                              len(fleet.assignments_since(t0)) >= args.workers, 120,
                              "every worker back and re-assigned", interval=0.05)
            every = sorted(a[0] for a in fleet.assignments_since(t0))[args.workers - 1]
            rss = report.rss_mb(s.runq.pid)
            return {"ping": (t_ping - t0) / 1e9, "first": (first - t0) / 1e9, "all": (every - t0) / 1e9,
                    "waiting": batch["n_waiting"], "running": batch["n_running"], "rss": rss,
                    "errors": fleet.errors[:3]}
        finally:
            fleet.close()


def run(args) -> list[Row]:
    print(f"P7: runq {'stopped (TERM)' if args.term else 'killed (KILL)'} and restarted with {args.waiting:,} "
          f"waiting runs and {args.workers:,} workers holding runs, median of {args.repeat}", flush=True)
    rs = []
    for _ in range(args.repeat):
        r = one(args)
        rs.append(r)
        print(f"  before: {r['waiting']:,} waiting, {r['running']:,} running; after restart: Ping {r['ping']:.2f} s, "
              f"first dispatch {r['first']:.2f} s, all {args.workers:,} re-assigned {r['all']:.2f} s; "
              f"RSS {r['rss']:.0f} MB; errors {r['errors'] or 'none'}", flush=True)
    first, every = median(r["first"] for r in rs), median(r["all"] for r in rs)
    rows = [Row("P7", f"restart to first dispatch, {args.waiting:,} waiting, {args.workers:,} workers (s)",
                f"{first:.2f}", "< 1", first < 1),
            Row("P7", f"restart to all {args.workers:,} workers re-assigned (s)", f"{every:.2f}")]
    report.print_rows(rows, f"P7 dispatching again {first:.2f} s after a restart (target < 1 s: {rows[0].verdict}); "
                            f"whole fleet busy again after {every:.2f} s")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--waiting", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--term", action="store_true", help="stop runq with TERM instead of killing it")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p7_restart")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
