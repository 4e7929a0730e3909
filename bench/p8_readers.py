"""P8: P1's workload while a dashboard-like load reads the same batch; ratio to without readers.

On one stack (runq, runweb, 16 real workers), rounds of --runs runs alternate: without
readers, then with --readers clients (threads of a separate process, each with its own
keep-alive connection) that each GET /batch/N?limit=1000 (JSON, a 1,000-run page of the batch
being run) every --period seconds.  Rate as in P1 (POST to the last completion seen through
the API; a round with readers is cut after --cut seconds, its rate then being the runs
finished by the cut).  Median of --repeat each; the ratio is with / without.

    .venv/bin/python bench/p8_readers.py [--runs 20000] [--readers 16] [--period 0.5] [--repeat 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time

import common  # noqa: F401
import report
from p1_throughput import stack_up
from report import Row, median, percentile
from stack import HTTP, Options


def readers_main(port: int, n: int, period: float, conn) -> None:
    """Child process: wait for a batch id, read its first page every `period` from n threads until told to stop."""
    bid = conn.recv()
    stop = threading.Event()
    times: list[float] = []

    def reader(offset: float):
        h = HTTP(port)
        time.sleep(offset)
        while not stop.is_set():
            t0 = time.perf_counter()
            status, _ = h.request("GET", f"/batch/{bid}?limit=1000&offset=0")
            times.append(time.perf_counter() - t0)
            stop.wait(max(0.0, period - (time.perf_counter() - t0)))
        h.close()

    threads = [threading.Thread(target=reader, args=(i * period / n,)) for i in range(n)]
    for t in threads:
        t.start()
    conn.recv()   # stop
    stop.set()
    for t in threads:
        t.join()
    conn.send(times)


def one_round(s, runs: int, readers: int, period: float, cut: float = 1200) -> tuple[float, list[float]]:
    child = None
    if readers:
        ours, theirs = mp.Pipe()
        child = mp.get_context("fork").Process(target=readers_main, args=(s.web_port, readers, period, theirs))
        child.start()
    t0 = time.perf_counter()
    bid = s.post_batch(runs)
    if child:
        ours.send(bid)
    try:
        t_end, _ = s.wait_batch_http(bid, timeout=cut)
        done = runs
    except TimeoutError:   # readers starve dispatch: count what finished by the cut, cancel the rest
        t_end, done = time.perf_counter(), s.batch_http(bid)["n_finished"]
        s.request("CancelBatch", batch_id=bid)
        print(f"    (round cut after {cut:.0f} s: {done:,} of {runs:,} runs finished)", flush=True)
    times = []
    if child:
        ours.send("stop")
        times = ours.recv()
        child.join()
    return done / (t_end - t0), times


def run(args) -> list[Row]:
    print(f"P8: {args.runs:,} runs through {args.workers} real workers, with and without {args.readers} readers "
          f"each fetching a 1,000-run page every {args.period} s; median of {args.repeat}", flush=True)
    s = stack_up(Options(), args.workers)
    without, with_, lat = [], [], []
    try:
        for _ in range(args.repeat):
            without.append(one_round(s, args.runs, 0, args.period)[0])
            r, t = one_round(s, args.runs, args.readers, args.period, args.cut)
            with_.append(r)
            lat += t
    finally:
        s.close()
    ratio = median(with_) / median(without)
    print(f"  without readers: median {median(without):,.0f} runs/s (all: {', '.join(f'{x:,.0f}' for x in without)})")
    print(f"  with readers:    median {median(with_):,.0f} runs/s (all: {', '.join(f'{x:,.0f}' for x in with_)}); "
          f"page latency p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms, "
          f"{len(lat)} pages", flush=True)
    rows = [Row("P8", f"{args.runs:,} runs with / without {args.readers} page readers (runs/s)",
                f"{median(with_):,.0f} / {median(without):,.0f} = {ratio:.2f}", "≥ 0.75", ratio >= 0.75)]
    report.print_rows(rows, f"P8 dispatch with {args.readers} page readers at {ratio:.2f}× the rate without "
                            f"(target ≥ 0.75: {rows[0].verdict})")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cut", type=float, default=30, help="end a round with readers after this many seconds "
                   "(rate = runs finished by then)")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("p8_readers")
    report.save_rows(args.rows, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
