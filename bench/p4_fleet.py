"""P4: a fleet of idle workers on one runq: its memory, its heartbeat load, one dispatch into it.

A load generator (bench/fleet.py: --procs processes, each holding many sockets) connects
--workers protocol-level workers, each doing the v2 handshake and registering, then
heartbeating at runq's interval (RUNQ_HEARTBEAT, conf default 10 s).  Then:
    RSS        runq's resident memory with the whole fleet connected (and before it)
    heartbeat  runq's CPU over --window seconds of an idle fleet, as a share of one core
    dispatch   a one-run batch submitted at runq's socket until a worker read its assignment
               (median and worst of --samples), the fleet all idle

    .venv/bin/python bench/p4_fleet.py [--workers 10000] [--procs 4] [--window 30] [--heartbeat 10]
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401
import profiles as profile
import report
from fleet import Fleet
from p5_latency import wait_assignment
from report import Row, median, percentile
from stack import BenchStack


def run(args) -> list[Row]:
    print(f"P4: {args.workers:,} idle protocol-level workers in {args.procs} load-generator processes, "
          f"heartbeat every {args.heartbeat} s", flush=True)
    with BenchStack() as s:
        s.start_runq(env_extra={"RUNQ_HEARTBEAT": str(args.heartbeat), "RUNQ_LEASE": str(args.heartbeat * 3),
                                "RUNQ_GRACE": str(args.heartbeat * 6)})
        rss0 = report.rss_mb(s.runq.pid)
        t0 = time.monotonic()
        fleet = Fleet(s, args.workers, procs=args.procs)
        try:
            common.wait_until(lambda: fleet.registered() >= args.workers, 600,
                              f"{args.workers} fake workers registered", interval=0.2)
            t_conn = time.monotonic() - t0
            print(f"  {args.workers:,} workers registered in {t_conn:.1f} s ({args.workers / t_conn:,.0f}/s); "
                  f"errors: {fleet.errors[:3] or 'none'}", flush=True)
            time.sleep(min(args.heartbeat, 10))   # let the registration burst settle into heartbeats
            rss = report.rss_mb(s.runq.pid)
            spying = None
            if args.profile and profile.PYSPY:
                spying = profile.spy(s.runq.pid, f"{s.tmp}/runq-idle.raw")   # --nonblocking: runq is not paused
                time.sleep(0.5)
            c0, g0, w0 = report.cpu_seconds(s.runq.pid), report.cpu_of(fleet.pids), time.monotonic()
            time.sleep(args.window)
            c1, g1, w1 = report.cpu_seconds(s.runq.pid), report.cpu_of(fleet.pids), time.monotonic()
            if spying:
                profile.stop_spy(spying)
                profile.summarize(f"{s.tmp}/runq-idle.raw", "runq with an idle fleet (py-spy)",
                                  (c1 - c0) / (w1 - w0), 8)
            share = (c1 - c0) / (w1 - w0)
            gen = (g1 - g0) / (w1 - w0)
            lat = []
            for _ in range(args.samples):
                t = time.monotonic_ns()
                bid = s.request("StartBatch", name="p4", engine="dummy", n_runs=1, param={})["batch_id"]
                lat.append((wait_assignment(fleet, bid, t) - t) / 1e6)
                time.sleep(0.05)
            rss_after = report.rss_mb(s.runq.pid)
            connected = s.request("Ping")["runq"].get("workers_connected")
        finally:
            fleet.close()
    print(f"  runq RSS {rss0:.0f} MB alone, {rss:.0f} MB with the fleet ({(rss - rss0) * 1024 / args.workers:.1f} "
          f"KB per worker), {rss_after:.0f} MB after the dispatches; runq says {connected} connected", flush=True)
    print(f"  idle fleet: runq CPU {share * 100:.2f}% of a core over {args.window:.0f} s "
          f"(load generator {gen * 100:.1f}%)", flush=True)
    print(f"  one run into the fleet: median {median(lat):.2f} ms, p99 {percentile(lat, 99):.2f} ms, "
          f"worst {max(lat):.2f} ms over {len(lat)}", flush=True)
    rows = [Row("P4", f"runq RSS with {args.workers:,} workers (MB)", f"{rss:.0f}", "< 100", rss < 100),
            Row("P4", f"heartbeats: runq CPU, % of a core ({args.heartbeat:g} s interval)", f"{share * 100:.2f}",
                "< 5", share < 0.05),
            Row("P4", "one run dispatched into the fleet, median / worst (ms)",
                f"{median(lat):.2f} / {max(lat):.2f}", "< 2", median(lat) < 2)]
    report.print_rows(rows, f"P4 {args.workers:,} idle workers: RSS {rss:.0f} MB, heartbeats {share * 100:.2f}% "
                            f"of a core, one dispatch {median(lat):.2f} ms "
                            f"({', '.join(r.verdict for r in rows)})")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--window", type=float, default=30)
    p.add_argument("--heartbeat", type=float, default=10)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="sample runq with py-spy during the idle window (default on when py-spy is there)")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p4_fleet")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
