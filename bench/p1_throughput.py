"""P1: zero-step runs through 16 real `python -m worker` processes, through the public API.

Each round: POST /batch/new (n_runs, engine dummy, step_count 0) to runweb, then poll
GET /batch/N?runs=none until the batch is no longer active; the rate is n_runs over the time
from just before the POST to the poll that saw it done (so polling lag counts against simx).
CPU per run is the user+system time of runq and of the workers (from /proc) over the round,
over n_runs; runweb's is shown apart.  Median of --repeat rounds on one stack, after a warm-up.

    .venv/bin/python bench/p1_throughput.py [--runs 10000] [--big 100000] [--workers 16] [--repeat 3]
        [--sync NORMAL,FULL] [--log-levels defaults,WARNING] [--prefetch 4] [--secure]
P1 is judged at the defaults, as a user runs simx: runq, runweb and the workers at the log level
conf/simx.yaml gives (INFO).  --log-levels adds round sets at other levels (SIMX_LOG_LEVEL for
every process; WARNING by default, the level every other figure here is measured at), shown beside it.
The FULL, prefetch and secure round sets stay at WARNING.
--prefetch N adds a round set with workers started with --prefetch N (reported, not judged: the
target is for the default, one run at a time).  --secure adds a round set with worker and client
secrets (and TLS when this runq has runq.tls.*).  --big 0 skips the 100,000-run round.
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401  (puts the simx root on sys.path)
import report
from report import Row, fmt, median
from stack import Options, BenchStack, tls_available

TARGET = 8000
DEFAULTS = "defaults"   # a log level: none set, so conf/simx.yaml's (INFO) for every process


def one_round(s: BenchStack, runs: int) -> dict:
    wpids = [w.pid for w in s.workers]
    cpu0 = (report.cpu_seconds(s.runq.pid), report.cpu_of(wpids), report.cpu_of(s.runweb_pids()))
    t0 = time.perf_counter()
    bid = s.post_batch(runs)
    t_end, batch = s.wait_batch_http(bid)
    cpu1 = (report.cpu_seconds(s.runq.pid), report.cpu_of(wpids), report.cpu_of(s.runweb_pids()))
    return {"rate": runs / (t_end - t0), "seconds": t_end - t0, "runq_rate": runs / batch["execution_time"],
            "runq_us": (cpu1[0] - cpu0[0]) / runs * 1e6, "worker_us": (cpu1[1] - cpu0[1]) / runs * 1e6,
            "web_us": (cpu1[2] - cpu0[2]) / runs * 1e6}


def stack_up(options: Options, workers: int, log_level: str | None = None) -> BenchStack:
    """runq, runweb and `workers` workers, warmed up.  `log_level`: SIMX_LOG_LEVEL for every process
    (None: the BenchStack's, WARNING; DEFAULTS: none, as a user runs simx)."""
    s = BenchStack(options)
    if log_level == DEFAULTS:
        s.env.pop("SIMX_LOG_LEVEL", None)
    elif log_level is not None:
        s.env["SIMX_LOG_LEVEL"] = log_level
    try:
        s.start_runq()
        s.start_runweb()
        s.start_workers(workers)
        s.wait_connected(workers)
        one_round(s, 500)   # warm-up: imports, first connections, page cache
    except BaseException:
        s.close()
        raise
    return s


def measure(options: Options, runs: int, workers: int, repeat: int, big: int = 0,
            log_level: str | None = None) -> dict:
    """Rounds of `runs` on one stack (`log_level` as in stack_up)."""
    s = stack_up(options, workers, log_level)
    try:
        rounds = [one_round(s, runs) for _ in range(repeat)]
        out = {k: median(r[k] for r in rounds) for k in rounds[0]}
        out["all"] = [r["rate"] for r in rounds]
        if big:
            out["big"] = one_round(s, big)
        return out
    finally:
        s.close()


def describe(label: str, m: dict) -> str:
    return (f"{label}: median {m['rate']:,.0f} runs/s through the API (all: "
            + ", ".join(f"{r:,.0f}" for r in m["all"])
            + f"); runq's own execution_time {m['runq_rate']:,.0f}/s; CPU per run: runq {m['runq_us']:.0f} µs, "
              f"worker {m['worker_us']:.0f} µs, runweb {m['web_us']:.0f} µs")


def run(args) -> list[Row]:
    rows: list[Row] = []
    print(f"P1: {args.runs:,} zero-step runs, {args.workers} real workers, POST /batch/new to last completion "
          f"seen through the API, median of {args.repeat}; SQLite synchronous by runq.synchronous "
          f"(SIMX_DB_SYNCHRONOUS)", flush=True)
    results = {}
    for sync in args.sync.split(","):
        level = DEFAULTS if sync == "NORMAL" else None
        m = measure(Options(sync=sync), args.runs, args.workers, args.repeat, args.big if sync == "NORMAL" else 0,
                    level)
        results[sync] = m
        print("  " + describe(f"synchronous={sync}" + (", log level at the defaults" if level else ""), m),
              flush=True)
        if sync == "NORMAL":
            rows.append(Row("P1", f"{args.runs:,} runs, 16 workers, NORMAL, defaults (runs/s)", fmt(m["rate"]),
                            f"≥ {TARGET:,}", m["rate"] >= TARGET))
            rows.append(Row("P1", "CPU per run: runq / worker / runweb (µs)",
                            f"{m['runq_us']:.0f} / {m['worker_us']:.0f} / {m['web_us']:.0f}",
                            "worker ≤ 80, runq → 60", m["worker_us"] <= 80))
            if "big" in m:
                b = m["big"]
                print(f"  {args.big:,} runs (one round): {b['rate']:,.0f} runs/s, {b['seconds']:.1f} s; CPU per run "
                      f"runq {b['runq_us']:.0f} µs, worker {b['worker_us']:.0f} µs", flush=True)
                rows.append(Row("P1", f"{args.big:,} runs, NORMAL, defaults (runs/s)", fmt(b["rate"])))
            for other in filter(None, args.log_levels.split(",")):
                if other == DEFAULTS:
                    continue
                o = measure(Options(sync=sync), args.runs, args.workers, args.repeat, 0, other)
                print("  " + describe(f"synchronous={sync}, SIMX_LOG_LEVEL={other}", o), flush=True)
                rows.append(Row("P1", f"{args.runs:,} runs, NORMAL, SIMX_LOG_LEVEL={other} (runs/s; CPU µs "
                                      "runq/worker/runweb)",
                                f"{fmt(o['rate'])} ({o['runq_us']:.0f}/{o['worker_us']:.0f}/{o['web_us']:.0f})"))
        else:
            rows.append(Row("P1", f"{args.runs:,} runs, {sync} (runs/s)", fmt(m["rate"])))
    if args.prefetch > 1:
        opts = Options(prefetch=args.prefetch)
        m = measure(opts, args.runs, args.workers, args.repeat)
        print("  " + describe(opts.label(), m), flush=True)
        rows.append(Row("P1", f"{args.runs:,} runs, {opts.label()} (runs/s; CPU µs runq/worker)",
                        f"{fmt(m['rate'])} ({m['runq_us']:.0f}/{m['worker_us']:.0f})"))
    if args.secure:
        tls = tls_available()
        opts = Options(secrets=True, tls=tls)
        m = measure(opts, args.runs, args.workers, args.repeat)
        print("  " + describe(opts.label(), m) + ("" if tls else "  (TLS: this runq has no runq.tls keys yet)"),
              flush=True)
        rows.append(Row("P1", f"{args.runs:,} runs, {opts.label()} (runs/s)", fmt(m["rate"])))
    normal = results.get("NORMAL") or next(iter(results.values()))
    print_headline = (f"P1 {normal['rate']:,.0f} runs/s through the API with {args.workers} real workers at the defaults "
                      f"(target ≥ {TARGET:,}: {'met' if normal['rate'] >= TARGET else 'NOT met'}); CPU/run "
                      f"runq {normal['runq_us']:.0f} µs + worker {normal['worker_us']:.0f} µs")
    report.print_rows(rows, print_headline)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--big", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sync", default="NORMAL,FULL")
    p.add_argument("--log-levels", default=f"{DEFAULTS},WARNING",
                   help="NORMAL is judged at the defaults; also measured at these levels (comma-separated)")
    p.add_argument("--prefetch", type=int, default=4, help="also with workers' --prefetch N (1: not)")
    p.add_argument("--secure", action="store_true", help="also with secrets (and TLS when available)")
    p.add_argument("--rows", help="append the target rows to this file (JSON lines; the suite uses it)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p1_throughput")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
