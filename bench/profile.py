"""Where the time goes: py-spy samples of runq, a worker and a runweb process under load.

    dispatch  P1's workload (--runs zero-step runs, 16 real workers, through the API):
              runq and one `python -m worker` sampled throughout
    page      wrk on GET /batch/N?limit=1000 (JSON) for --seconds: runq and one gunicorn
              worker sampled; plus one page timed alone, at runq's socket and through HTTP
For each process: its CPU share while sampled, the functions with most samples on top of
the stack (self) and the functions most often anywhere on it (inclusive), as % of its
non-idle samples.  py-spy comes with the bench extra; without it this prints why and stops.

    .venv/bin/python bench/profile.py [--runs 30000] [--seconds 10] [--top 12] [--only dispatch,page]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import common  # noqa: F401
import report
from common import wait_until
from report import median
from stack import Options, Stack

PYSPY = shutil.which("py-spy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def spy(pid: int, out: str) -> subprocess.Popen:
    return subprocess.Popen([PYSPY, "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", out, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_spy(p: subprocess.Popen):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def short(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3.11/", str(report.ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarize(path: str, title: str, cpu_share: float, top: int) -> None:
    self_c, incl = collections.Counter(), collections.Counter()
    total = 0
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print(f"  {title}: no samples ({path} missing)")
        return
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = [short(f) for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"  {title}: {cpu_share * 100:.0f}% of a core while sampled, {total} non-idle samples")
    if not total:
        return
    print("    self:      " + "\n               ".join(f"{c * 100 / total:5.1f}%  {f}" for f, c in self_c.most_common(top)))
    skip = {f for f, c in incl.items() if c >= 0.97 * total}   # <module>, main, serve...: everything
    print("    inclusive: " + "\n               ".join(f"{c * 100 / total:5.1f}%  {f}"
                                                      for f, c in incl.most_common(top + len(skip)) if f not in skip))
    sys.stdout.flush()


def dispatch(args):
    from p1_throughput import stack_up
    s = stack_up(Options(), 16)
    try:
        runq, worker = s.runq.pid, s.workers[0].pid
        wpids = [w.pid for w in s.workers]
        spies = [spy(runq, f"{s.tmp}/runq.raw"), spy(worker, f"{s.tmp}/worker.raw")]
        time.sleep(1.0)
        c0 = (report.cpu_seconds(runq), report.cpu_seconds(worker), report.cpu_of(wpids))
        t0 = time.perf_counter()
        bid = s.post_batch(args.runs)
        t1, _ = s.wait_batch_http(bid)
        c1 = (report.cpu_seconds(runq), report.cpu_seconds(worker), report.cpu_of(wpids))
        for p in spies:
            stop_spy(p)
        wall = t1 - t0
        print(f"dispatch: {args.runs:,} runs in {wall:.1f} s ({args.runs / wall:,.0f} runs/s under py-spy "
              f"--nonblocking); CPU per run: runq {(c1[0] - c0[0]) / args.runs * 1e6:.0f} µs, "
              f"all 16 workers {(c1[2] - c0[2]) / args.runs * 1e6:.0f} µs", flush=True)
        summarize(f"{s.tmp}/runq.raw", "runq", (c1[0] - c0[0]) / wall, args.top)
        summarize(f"{s.tmp}/worker.raw", "one worker", (c1[1] - c0[1]) / wall, args.top)
    finally:
        s.close()


def page(args):
    from p6_web import wrk
    with Stack() as s:
        s.start_runq()
        s.start_workers(4, kind="driver")
        s.wait_connected(4)
        bid = s.request("StartBatch", name="page", engine="dummy", n_runs=1000, param={})["batch_id"]
        wait_until(lambda: s.request("BatchStatus", batch_id=bid, offset=0, limit=0)["batch"]["state"] != "active",
                   120, "batch done")
        s.stop_workers()
        s.start_runweb()
        sock, web = [], []
        for _ in range(20):
            t = time.perf_counter()
            s.request("BatchStatus", batch_id=bid, offset=0, limit=1000)
            sock.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            s.http().request("GET", f"/batch/{bid}?limit=1000")
            web.append((time.perf_counter() - t) * 1000)
        yml = []
        for _ in range(3):
            t = time.perf_counter()
            s.http().conn.request("GET", f"/batch/{bid}?limit=1000")   # no Accept: YAML, as curl gets it
            s.http().conn.getresponse().read()
            yml.append((time.perf_counter() - t) * 1000)
        print(f"page: one 1,000-run page alone, median of 20: at runq's socket {median(sock):.1f} ms, through "
              f"runweb as JSON {median(web):.1f} ms; as YAML (median of 3) {median(yml):.0f} ms", flush=True)
        gworker = report.children_of(s.runweb.pid)[0]
        spies = [spy(s.runq.pid, f"{s.tmp}/runq.raw"), spy(gworker, f"{s.tmp}/web.raw")]
        time.sleep(1.0)
        c0 = (report.cpu_seconds(s.runq.pid), report.cpu_seconds(gworker))
        t0 = time.perf_counter()
        r = wrk(f"http://127.0.0.1:{s.web_port}/batch/{bid}?limit=1000", args.seconds, 64, ["Accept: application/json"])
        wall = time.perf_counter() - t0
        c1 = (report.cpu_seconds(s.runq.pid), report.cpu_seconds(gworker))
        for p in spies:
            stop_spy(p)
        print(f"page: wrk 64 connections, {r['rps']:.0f} req/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms", flush=True)
        summarize(f"{s.tmp}/runq.raw", "runq", (c1[0] - c0[0]) / wall, args.top)
        summarize(f"{s.tmp}/web.raw", "one gunicorn worker", (c1[1] - c0[1]) / wall, args.top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=30_000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--only", default="dispatch,page")
    args = p.parse_args(argv)
    report.print_header("profile")
    if not PYSPY:
        print("profile: py-spy not found (it comes with the bench extra: pip install -e '.[bench]')")
        print("HEADLINE: profile skipped (no py-spy)")
        return 0
    if "dispatch" in args.only:
        dispatch(args)
    if "page" in args.only:
        page(args)
    print("HEADLINE: profiles above (self = on top of the stack; inclusive = anywhere on it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
