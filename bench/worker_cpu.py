"""Worker CPU per run: zero-step runs through real `python -m worker` processes, CPU read from /proc.

CPU per run = (CPU time of every worker process, all threads) / runs, over one batch after a
warm-up; runq's own CPU per run is printed beside it.  Median of R repeats.  The workers' time is
read exactly from /proc/PID/task/*/schedstat (the user/system split from /proc/PID/stat's ticks).

    .venv/bin/python bench/worker_cpu.py [--runs 5000] [--workers 16] [--repeat 3] [--worker-args "--prefetch 2"]
                                         [--param '{"step_count": 1, "step_delay": 0}'] [--driver]

SIMX_WORKER_PROFILE=DIR (passed through) makes each worker write a cProfile to DIR/worker-PID.prof at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from common import PY, ROOT, free_port, runq_client, stop_all, wait_until  # noqa: E402
from throughput import start_server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of a process, all its threads (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def sys_user(procs) -> tuple[float, float]:
    """(user, system) seconds of all ``procs``; their sum is made exact from /proc/PID/task/*/schedstat
    (nanoseconds on a CPU) where it exists: /proc/PID/stat counts 10 ms ticks, an error of up to
    16 x 10 ms over a 5,000-run measure, which was 30 us per run."""
    times = [cpu_times(p.pid) for p in procs]
    user, system = sum(t[0] for t in times), sum(t[1] for t in times)
    exact = sum(_on_cpu(p.pid) for p in procs)
    if not exact:
        return user, system
    share = user / (user + system) if user + system else 1.0
    return exact * share, exact * (1 - share)


def _on_cpu(pid: int) -> float:
    """Seconds every thread of ``pid`` has been on a CPU (0.0 where schedstat is missing)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return total / 1e9


def one_batch(client, runs: int, param: dict) -> float:
    bid = client.request("StartBatch", name="cpu", group="", user="", engine="dummy", n_runs=runs,
                         param=param)["batch_id"]
    state = {}

    def done():
        state.update(client.request("BatchStatus", batch_id=bid, offset=0, limit=1)["batch"])
        return state["execution_time"] is not None

    wait_until(done, 600, f"batch {bid} done", interval=0.05)
    return runs / state["execution_time"]


def fake_runq(args) -> int:
    """Worker CPU per run against bench/fake_runq.py: after 3,000 warm-up reports, over the next ``runs``."""
    port = free_port()
    warm = 3000
    total = warm + args.runs * args.repeat + 1000
    srv = subprocess.Popen([PY, str(ROOT / "bench" / "fake_runq.py"), str(port), str(total)], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    env = dict(os.environ, RUNQ_PORT=str(port), SIMX_LOG_LEVEL=os.environ.get("SIMX_LOG_LEVEL", "WARNING"))
    cmd = [PY, "-m", "worker", "--engine", "dummy", "--port", str(port), *shlex.split(args.worker_args)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL) for _ in range(args.workers)]
    rows = []
    try:
        marks = {warm + i * args.runs for i in range(args.repeat + 1)}
        last = None
        for line in srv.stdout:
            count = int(line.split()[0]) if line.strip().isdigit() else None
            if count in marks:
                now = (sys_user(procs), time.monotonic())
                if last is not None:
                    user, system = ((b - a) / args.runs * 1e6 for a, b in zip(last[0], now[0]))
                    rows.append(user + system)
                    print(f"  worker {user + system:6.1f} us/run (user {user:.0f}, system {system:.0f})   "
                          f"{args.runs / (now[1] - last[1]):6.0f} runs/s", flush=True)
                last = now
            if len(rows) == args.repeat:
                break
    finally:
        stop_all(procs + [srv])
    print(f"worker_cpu: fake runq, {args.runs} runs x {args.repeat}, {args.workers} workers {args.worker_args!r}: "
          f"worker {statistics.median(rows):.1f} us/run (median; load {os.getloadavg()[0]:.2f})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker-args", default="", help="extra flags for every worker")
    p.add_argument("--param", default='{"step_count": 0}', help="the dummy runs' param (JSON; default zero steps)")
    p.add_argument("--fake-runq", action="store_true",
                   help="against bench/fake_runq.py, which keeps each worker topped up to its --prefetch "
                        "(the worker's side of prefetch before runq has its own)")
    p.add_argument("--driver", action="store_true",
                   help="minimal protocol-level workers (bench/driver.py) instead: the floor of the round trip")
    args = p.parse_args(argv)
    if args.fake_runq:
        return fake_runq(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        srv = start_server("runq", port, tmp)
        env = dict(os.environ, RUNQ_PORT=str(port), SIMX_LOG_LEVEL=os.environ.get("SIMX_LOG_LEVEL", "WARNING"))
        cmd = ([PY, str(ROOT / "bench" / "driver.py"), str(port)] if args.driver else
               [PY, "-m", "worker", "--engine", "dummy", "--port", str(port), *shlex.split(args.worker_args)])
        log = open(f"{tmp}/workers.log", "ab")
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log, stdout=log) for _ in range(args.workers)]
        client = runq_client(port)
        try:
            wait_until(lambda: sum(w["connected"] for w in client.request("WorkerList")["workers"])
                       >= args.workers, 60, "workers connected")
            param = json.loads(args.param)
            one_batch(client, min(args.runs, 500), param)  # warm-up
            for _ in range(args.repeat):
                s0, q0 = sys_user(procs), cpu_seconds(srv.pid)
                rate = one_batch(client, args.runs, param)
                s1, q1 = sys_user(procs), cpu_seconds(srv.pid)
                user, system = ((b - a) / args.runs * 1e6 for a, b in zip(s0, s1))
                rows.append((user + system, (q1 - q0) / args.runs * 1e6, rate))
                print(f"  worker {rows[-1][0]:6.1f} us/run (user {user:.0f}, system {system:.0f})   "
                      f"runq {rows[-1][1]:6.1f} us/run   {rate:6.0f} runs/s", flush=True)
        finally:
            stop_all(procs + [srv])
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    what = "driver" if args.driver else f"workers {args.worker_args!r}"
    print(f"worker_cpu: {args.runs} runs x {args.repeat}, {args.workers} {what}: "
          f"worker {med[0]:.1f} us/run, runq {med[1]:.1f} us/run, {med[2]:.0f} runs/s (medians; "
          f"load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
