"""Where the time goes: py-spy samples of runq, a worker and a runweb process under load.

    dispatch  P1's workload (--runs zero-step runs, 16 real workers, through the API):
              runq and one `python -m worker` sampled throughout
    page      wrk on GET /batch/N?limit=1000 (JSON) for --seconds: runq and one gunicorn
              worker sampled; plus one page timed alone, at runq's socket and through HTTP
For each process: its CPU share while sampled, the functions with most samples on top of
the stack (self) and the functions most often anywhere on it (inclusive), as % of its
non-idle samples.  py-spy comes with the bench extra; without it this prints why and stops.

    .venv/bin/python bench/profiles.py [--runs 30000] [--seconds 10] [--top 12] [--only dispatch,page]
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
from report import median
from stack import Options, BenchStack

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


def cprofiled_worker(s: BenchStack) -> tuple[subprocess.Popen, str]:
    """One more worker, under cProfile (deterministic, so it sees every call; slower than real)."""
    out = f"{s.tmp}/worker.pstats"
    proc = s.spawn([sys.executable, "-m", "cProfile", "-o", out, "-m", "worker", "--engine", "dummy",
                    "--port", str(s.port)], "workers")
    return proc, out


def summarize_pstats(path: str, runs: int, top: int) -> None:
    import pstats
    st = pstats.Stats(path)
    # cProfile times the main thread's wall clock: leave out where it blocks (epoll, lock waits, sleep)
    waits = ("poll' of 'select.epoll", "acquire' of '_thread.lock", "time.sleep", "'select' of")
    items = sorted(((k, v) for k, v in st.stats.items() if not any(w in k[2] for w in waits)),
                   key=lambda kv: kv[1][2], reverse=True)   # by tottime
    total = sum(v[2] for _, v in items)
    print(f"  one worker under cProfile (main thread, waits left out, start-up included): {runs} runs, "
          f"{total / max(runs, 1) * 1e6:.0f} µs per run (cProfile inflates; shares are what count)")
    for (file, line, func), (cc, nc, tt, ct, _) in items[:top]:
        where = file.split("site-packages/")[-1].split("lib/python3.11/")[-1].replace(str(report.ROOT) + "/", "")
        print(f"    {tt * 100 / total:5.1f}%  {tt / max(runs, 1) * 1e6:6.1f} µs/run  {nc:>7} calls  {func} ({where}:{line})")
    sys.stdout.flush()


def dispatch(args):
    from p1_throughput import stack_up
    s = stack_up(Options(), 15)
    prof, prof_out = cprofiled_worker(s)
    s.wait_connected(16)
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
        prof.terminate()
        prof.wait(30)
        n = _runs_of(s, prof.pid, bid)
        summarize_pstats(prof_out, n, args.top)
    finally:
        if prof.poll() is None:
            prof.kill()
        s.close()


def _runs_of(s: BenchStack, pid: int, bid: int) -> int:
    """How many runs of batch bid the worker with this pid finished (read from the database)."""
    import sqlite3
    db = sqlite3.connect(f"file:{s.tmp}/runq.sqlite?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM attempts a JOIN workers w ON a.worker_id = w.id "
                          "WHERE w.pid = ? AND a.batch_id = ?", (pid, bid)).fetchone()[0]
    finally:
        db.close()


def page(args):
    from p6_web import wrk
    with BenchStack() as s:
        s.start_runq()
        bid = s.ended_batch(1000)
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
    report.print_header("profiles")
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
