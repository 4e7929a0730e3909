"""simx beside huey, dramatiq, celery and RQ: the same workloads, in the same run.

A private `redis-server` (Debian's) on a free loopback port is started and stopped here, once
without persistence and once with AOF (appendfsync everysec), since simx's state is durable.
For each peer and worker count (--counts; 16, and the best of the others):
    rate     --runs no-op tasks enqueued with the peer's fastest bulk API, from the first enqueue
             to the last completion (each task INCRs a Redis counter, polled every 5 ms),
             median of --repeat (fewer for a slow peer: --budget; a round longer than --cut
             seconds ends there, its rate being the tasks done by then), after a warm-up
    latency  enqueue to task start with idle workers (the task's start time minus the send
             time, one monotonic clock), p50 and p99 of --samples
    CPU      of the worker processes per task (from /proc), and of redis-server
simx is measured the same way in the same run: P1's workload through its HTTP API with real
workers (same counts), and P5's StartBatch to assignment receipt (a simx assignment is the
moment its worker can start), before the peers and again after them (the median of all its
rounds is its figure: the machine drifts over the minutes the peers take).  Ratios simx/peer
close the table.

    .venv/bin/python bench/peers.py [--runs 10000] [--counts 4,16] [--repeat 3] [--peers huey,dramatiq,celery,rq]
        [--redis none,aof]
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401
import report
from common import ROOT, free_port, wait_until
from report import Row, median, percentile

APPS = ROOT / "bench" / "peer_apps"
BIN = os.path.dirname(sys.executable)
DISTS = {"huey": "huey", "dramatiq": "dramatiq", "celery": "celery", "rq": "rq"}


def worker_cmds(peer: str, n: int, port: int) -> list[list[str]]:
    b = lambda name: os.path.join(BIN, name)   # noqa: E731
    if peer == "huey":
        return [[b("huey_consumer"), "huey_app.huey", "-w", str(n), "-k", "process", "-q", "-n"]]
    if peer == "dramatiq":
        return [[b("dramatiq"), "dramatiq_app", "-p", str(n), "-t", "1"]]
    if peer == "celery":
        return [[b("celery"), "-A", "celery_app", "worker", "-c", str(n), "-P", "prefork", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-l", "WARNING"]]
    if peer == "rq":
        return [[b("rq"), "worker", "-w", "rq.worker.SimpleWorker", "--url", f"redis://127.0.0.1:{port}/0",
                 "--logging_level", "WARNING", "bench"] for _ in range(n)]
    raise ValueError(peer)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += report.children_of(p)
    return out


class Redis:
    def __init__(self, tmp: str, mode: str):
        self.port = free_port()
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp,
                "--daemonize", "no", "--logfile", f"{tmp}/redis.log"]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if mode == "aof" else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        self.r = redis.Redis(host="127.0.0.1", port=self.port)
        wait_until(lambda: self.r.ping(), 20, "redis-server up", retry_on=(Exception,))

    def close(self):
        self.proc.terminate()
        self.proc.wait(20)


def run_peer(peer: str, n: int, red: Redis, tmp: str, args) -> dict:
    os.environ["BENCH_REDIS_PORT"] = str(red.port)
    if str(APPS) not in sys.path:
        sys.path.insert(0, str(APPS))
    import counter
    counter.PORT, counter._r = red.port, None
    name = f"{peer}_app"
    # the apps bind their broker's port when imported: a second redis-server needs them afresh
    mod = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    env = dict(os.environ, BENCH_REDIS_PORT=str(red.port), PYTHONPATH=str(APPS), PYTHONUNBUFFERED="1")
    log = open(f"{tmp}/{peer}-{n}.log", "ab")
    procs = [subprocess.Popen(c, cwd=APPS, env=env, stdout=log, stderr=log, start_new_session=True)
             for c in worker_cmds(peer, n, red.port)]
    r = red.r
    try:
        r.flushall()

        def batch(k: int, cut: float = 600) -> float:
            r.set("bench:done", 0)
            t0 = time.perf_counter()
            mod.enqueue_many(k)
            while (done := int(r.get("bench:done") or 0)) < k:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{peer} worker exited; log {tmp}/{peer}-{n}.log")
                if time.perf_counter() - t0 > cut:
                    # a slow peer: its rate so far, then drop what is still queued
                    elapsed = time.perf_counter() - t0
                    r.flushall()
                    time.sleep(1.0)
                    cuts.append(done)
                    return done / elapsed
                time.sleep(0.005)
            return k / (time.perf_counter() - t0)

        cuts: list[int] = []

        t_up = time.perf_counter()
        batch(200)   # warm-up: workers up, connections made
        up = time.perf_counter() - t_up
        pids = [q for p in procs for q in descendants(p.pid)]
        rates, cpus = [], []
        t_rounds = time.perf_counter()
        # a slow peer (RQ, celery at ~300/s) gets fewer rounds: at most --budget seconds of repeats
        while len(rates) < args.repeat and (not rates or time.perf_counter() - t_rounds < args.budget):
            c0, rc0 = report.cpu_of(pids), report.cpu_seconds(red.proc.pid)
            rates.append(batch(args.runs, args.cut))
            cpus.append(((report.cpu_of(pids) - c0) / args.runs * 1e6,
                         (report.cpu_seconds(red.proc.pid) - rc0) / args.runs * 1e6))
        time.sleep(0.2)
        lat = []
        r.delete("bench:lat")
        for i in range(args.samples):
            mod.enqueue_one(time.monotonic_ns())
            wait_until(lambda: r.llen("bench:lat") > i, 30, f"{peer} latency sample", interval=0.0005)
            time.sleep(0.01)
        lat = [int(x) / 1e6 for x in r.lrange("bench:lat", 0, -1)]
        return {"rate": median(rates), "all": rates, "cpu": median(c for c, _ in cpus),
                "redis_cpu": median(c for _, c in cpus), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                "warmup": up, "cut": cuts}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


def run_simx(counts, args, latency: bool = True) -> dict:
    from p1_throughput import measure as p1
    from p5_latency import measure as p5
    from stack import Options
    out = {}
    for n in counts:
        m = p1(Options(prefetch=args.simx_prefetch), args.runs, n, args.repeat)
        out[n] = {"rate": m["rate"], "all": m["all"], "cpu": m["worker_us"], "runq_cpu": m["runq_us"]}
        print(f"  simx    × {n:2}{f' prefetch {args.simx_prefetch}' if args.simx_prefetch > 1 else ''}: {m['rate']:7,.0f} runs/s (all: {', '.join(f'{x:,.0f}' for x in m['all'])}); "
              f"CPU per run: workers {m['worker_us']:.0f} µs, runq {m['runq_us']:.0f} µs, runweb {m['web_us']:.0f} µs",
              flush=True)
    if not latency:
        return out
    lat = p5(Options(), args.samples)
    out["p50"], out["p99"] = percentile(lat["socket"], 50), percentile(lat["socket"], 99)
    out["http_p50"], out["http_p99"] = percentile(lat["http"], 50), percentile(lat["http"], 99)
    print(f"  simx latency StartBatch→assignment: socket p50 {out['p50']:.2f} ms p99 {out['p99']:.2f} ms; "
          f"HTTP p50 {out['http_p50']:.2f} ms p99 {out['http_p99']:.2f} ms", flush=True)
    return out


def run(args) -> list[Row]:
    counts = [int(c) for c in args.counts.split(",")]
    peers = [p for p in args.peers.split(",") if p]
    if not shutil.which("redis-server"):
        print("peers: redis-server is not installed (apt-get install redis-server; `make bench-peers` does it as root)")
        return []
    print(f"peers: {args.runs:,} no-op tasks, worker counts {counts}, median of {args.repeat}; latency over "
          f"{args.samples} samples; {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.strip()}",
          flush=True)
    simx = run_simx(counts, args)
    results = {}
    modes = args.redis.split(",")
    for mode in args.redis.split(","):
        tmp = tempfile.mkdtemp(prefix=f"simx-peers-{mode}-")
        red = Redis(tmp, mode)
        try:
            for peer in peers:
                for n in counts:
                    try:
                        m = run_peer(peer, n, red, tmp, args)
                    except Exception as exc:  # noqa: BLE001  one peer failing must not hide the others
                        print(f"  {peer:8} × {n:2} [{mode}]: FAILED {exc}", flush=True)
                        continue
                    results[peer, mode, n] = m
                    print(f"  {peer:8} × {n:2} [redis {mode}]: {m['rate']:7,.0f} tasks/s (all: "
                          f"{', '.join(f'{x:,.0f}' for x in m['all'])}); CPU per task: workers {m['cpu']:.0f} µs, "
                          f"redis {m['redis_cpu']:.0f} µs; enqueue→start p50 {m['p50']:.2f} ms p99 {m['p99']:.2f} ms"
                          + (f" (rounds cut at {args.cut:g} s after {', '.join(map(str, m['cut']))} tasks)" if m["cut"] else ""),
                          flush=True)
        finally:
            red.close()
            shutil.rmtree(tmp, ignore_errors=True)
    if args.simx_again:
        # the machine drifts over the peers' minutes: simx again at the end, ratios from every round
        print("  simx again, after the peers:", flush=True)
        again = run_simx(counts, args, latency=False)
        for n in counts:
            simx[n]["all"] += again[n]["all"]
            simx[n]["rate"] = median(simx[n]["all"])
    rows = []
    best_simx_n = max(counts, key=lambda n: simx[n]["rate"])
    best_simx = simx[best_simx_n]["rate"]
    rows.append(Row("", "simx runs/s through the API, " + ", ".join(f"× {n}: {simx[n]['rate']:,.0f}" for n in counts),
                    f"best {best_simx:,.0f} (× {best_simx_n})"))
    rows.append(Row("", "simx StartBatch→assignment p50/p99 ms (socket; HTTP)",
                    f"{simx['p50']:.2f}/{simx['p99']:.2f}; {simx['http_p50']:.2f}/{simx['http_p99']:.2f}"))
    for mode in args.redis.split(","):
        fastest = None
        for peer in peers:
            got = {n: results[peer, mode, n] for n in counts if (peer, mode, n) in results}
            if not got:
                rows.append(Row("", f"{peer} [redis {mode}]", "failed"))
                continue
            bn = max(got, key=lambda n: got[n]["rate"])
            b = got[bn]
            at16 = got.get(16)
            rows.append(Row("", f"{peer} [redis {mode}] tasks/s best (× {bn}); simx/peer at 16 and best-vs-best",
                            f"{b['rate']:,.0f}; " + (f"{simx[16]['rate'] / at16['rate']:.2f}× at 16, " if at16 and 16 in simx else "")
                            + f"{best_simx / b['rate']:.2f}× best"))
            rows.append(Row("", f"{peer} [redis {mode}] enqueue→start p50/p99 ms (× {bn}); peer/simx p50",
                            f"{b['p50']:.2f}/{b['p99']:.2f}; {b['p50'] / simx['p50']:.2f}× (HTTP: {b['p50'] / simx['http_p50']:.2f}×)"))
            if fastest is None or b["rate"] > fastest[1]:
                fastest = (peer, b["rate"])
        if fastest:
            ratio = best_simx / fastest[1]
            rows.append(Row("P1", f"simx best / fastest peer ({fastest[0]}), redis {mode}", f"{ratio:.2f}×",
                            "≥ 1.3×", ratio >= 1.3))
    p1rows = [r for r in rows if r.target == "P1"]
    report.print_rows(rows, "peers: " + "; ".join(f"{r.measure.split(', ')[-1]}: {r.value} ({r.verdict})" for r in p1rows))
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--counts", default="4,16")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--cut", type=float, default=20,
                   help="end a round after this many seconds; its rate is then the tasks done by then")
    p.add_argument("--budget", type=float, default=30,
                   help="no further repeat of a peer's rate once its rounds took this many seconds")
    p.add_argument("--peers", default="huey,dramatiq,celery,rq")
    p.add_argument("--redis", default="none,aof", help="redis persistence modes: none, aof (appendfsync everysec)")
    p.add_argument("--simx-again", action=argparse.BooleanOptionalAction, default=True,
                   help="measure simx again after the peers; its figure is the median of all its rounds")
    p.add_argument("--simx-prefetch", type=int, default=1,
                   help="simx workers' --prefetch (1, the default: one run at a time, as P1 is judged)")
    p.add_argument("--rows")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    report.print_header("peers", *DISTS.values(), "redis")
    rows = run(args)
    report.save_rows(args.rows, rows)
    report.print_table("make bench-peers: simx beside huey, dramatiq, celery, RQ (same run)", rows,
                       *DISTS.values(), "redis")
    return 0


if __name__ == "__main__":
    sys.exit(main())
