"""Throughput: N zero-step runs through W workers, runs/s, median of R repeats.

Compares, in the same run on the same machine:
  runq/driver   runq with minimal protocol-level workers (bench/driver.py)
  runq/worker   runq with real `python -m worker` dummy workers
  probe/driver  a bare dispatcher of the same shape with no database (bench/probe.py)

    .venv/bin/python bench/throughput.py [--runs 5000] [--workers 16] [--repeat 3] [--only runq/driver,...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import PY, ROOT, free_port, stop_all, wait_until, runq_client  # noqa: E402  (bench/ is on sys.path when run)
from simx.client import RunqClient  # noqa: E402
import report  # noqa: E402


def start_server(kind: str, port: int, tmp: str) -> subprocess.Popen:
    env = dict(os.environ, RUNQ_PORT=str(port), SIMX_DB_URL=f"sqlite:///{tmp}/runq.sqlite",
               SIMX_LOG_LEVEL="WARNING", SIMX_VAR=tmp)
    cmd = [PY, "-m", "runq"] if kind == "runq" else [PY, str(ROOT / "bench" / "probe.py"), str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=open(f"{tmp}/{kind}.log", "ab"))
    wait_until(lambda: runq_client(port, timeout=2).request("Ping")["status"] == "ok", 20, f"{kind} up")
    return proc


def start_workers(kind: str, port: int, n: int, tmp: str) -> list[subprocess.Popen]:
    env = dict(os.environ, RUNQ_PORT=str(port), SIMX_LOG_LEVEL="WARNING")
    if kind == "driver":
        cmd = [PY, str(ROOT / "bench" / "driver.py"), str(port)]
    else:
        cmd = [PY, "-m", "worker", "--engine", "dummy", "--port", str(port)]
    log = open(f"{tmp}/workers.log", "ab")
    return [subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log, stdout=log) for _ in range(n)]


def one_round(client: RunqClient, runs: int) -> float:
    reply = client.request("StartBatch", name="bench", group="", user="", engine="dummy", n_runs=runs,
                           param={"step_count": 0})
    bid = reply["batch_id"]
    state = {}

    def done():
        state.update(client.request("BatchStatus", batch_id=bid, offset=0, limit=1)["batch"])
        return state["execution_time"] is not None

    wait_until(done, 600, f"batch {bid} done")
    return runs / state["execution_time"]


def measure(server: str, workers: str, args) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        srv = start_server(server, port, tmp)
        procs = start_workers(workers, port, args.workers, tmp)
        client = runq_client(port)
        try:
            if server == "runq":
                wait_until(lambda: sum(w["connected"] for w in client.request("WorkerList")["workers"])
                           >= args.workers, 60, "workers connected")
            else:
                time.sleep(1.0)  # the probe keeps no worker list; give the drivers a moment
            one_round(client, min(args.runs, 500))  # warm-up
            return [one_round(client, args.runs) for _ in range(args.repeat)]
        finally:
            stop_all(procs + [srv])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="runq/driver,runq/worker,probe/driver")
    parser.add_argument("--rows", help="append the figures to this file (JSON lines; the suite uses it)")
    args = parser.parse_args(argv)
    print(f"throughput: {args.runs} zero-step runs through {args.workers} workers, "
          f"median of {args.repeat} (cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.2f})")
    results = {}
    for combo in args.only.split(","):
        server, workers = combo.split("/")
        rates = measure(server, workers, args)
        results[combo] = statistics.median(rates)
        print(f"  {combo:14s} median {results[combo]:8.0f} runs/s   all: "
              + ", ".join(f"{r:.0f}" for r in rates), flush=True)
    rows = [report.Row("", f"{combo} runs/s (runq's own execution_time)", f"{rate:,.0f}") for combo, rate in results.items()]
    if "runq/driver" in results and "probe/driver" in results:
        ratio = results['runq/driver'] / results['probe/driver']
        print(f"  runq/probe ratio: {ratio:.2f}")
        rows.append(report.Row("", "runq/driver ÷ probe/driver (cost of durability and matching)", f"{ratio:.2f}"))
    report.save_rows(args.rows, rows)
    print("HEADLINE: throughput " + ", ".join(f"{c} {r:,.0f} runs/s" for c, r in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
