"""Where runq answers reads: on a reader thread or in a reader process (issue 10, P8).

Dispatch rate of N zero-step runs through W minimal workers (bench/driver.py), without
readers and with R clients each fetching a 1,000-run page of that batch every 0.5 s,
for each design; the ratio with/without readers is what matters.

    .venv/bin/python bench/readers_off_loop.py [--runs 20000] [--workers 8] [--readers 16] [--repeat 2]

`serve MODE PORT URL` is the runq it starts: the real coordinator and server with
  thread   runq/reader.py ReaderThread: a thread of runq's process
  process  runq/reader.py ReaderProcess (what runq ships): a child process with its own
           read connection
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import PY, ROOT, free_port, runq_client, stop_all, wait_until  # noqa: E402


def serve(mode: str, port: int, url: str) -> int:
    from simx.config import BatchDefaults, RunqConfig
    from runq import startup
    from runq.queries import Facts, Queries
    from runq.reader import ReaderProcess, ReaderThread
    from runq.server import Server
    from runq.store import SqlStore
    store = SqlStore(url)
    coord = startup.coordinator(store, RunqConfig(), BatchDefaults(), now=time.time())
    facts = Facts(coord.presence)
    reader = {"thread": lambda: ReaderThread(Queries(store.reader(), facts)),
              "process": lambda: ReaderProcess(store.engine.url, facts)}[mode]()
    server = Server(coord, store, [("127.0.0.1", port)], reader=reader)
    import signal
    signal.signal(signal.SIGTERM, lambda *a: setattr(server, "stopping", True))
    server.serve()
    return 0


def one_round(port: int, runs: int, readers: int) -> float:
    client = runq_client(port)
    bid = client.request("StartBatch", name="bench", engine="dummy", n_runs=runs, param={})["batch_id"]
    stop = threading.Event()

    def read():
        c = runq_client(port)
        while not stop.is_set():
            c.request("BatchStatus", batch_id=bid, offset=0, limit=1000)
            stop.wait(0.5)

    threads = [threading.Thread(target=read, daemon=True) for _ in range(readers)]
    for t in threads:
        t.start()
    state = {}

    def done():
        state.update(client.request("BatchStatus", batch_id=bid, limit=0)["batch"])
        return state["execution_time"] is not None

    wait_until(done, 600, "batch done")
    stop.set()
    for t in threads:
        t.join()
    return runs / state["execution_time"]


def measure(mode: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, SIMX_LOG_LEVEL="WARNING", SIMX_VAR=tmp)
        srv = subprocess.Popen([PY, __file__, "serve", mode, str(port), f"sqlite:///{tmp}/runq.sqlite"],
                               cwd=ROOT, env=env, stderr=open(f"{tmp}/runq.log", "ab"))
        workers = []
        try:
            wait_until(lambda: runq_client(port, timeout=2).request("Ping")["status"] == "ok", 20, "runq up")
            workers = [subprocess.Popen([PY, str(ROOT / "bench" / "driver.py"), str(port)], cwd=ROOT, env=env)
                       for _ in range(args.workers)]
            wait_until(lambda: runq_client(port).request("Ping")["runq"]["workers_connected"] == args.workers,
                       30, "workers")
            out = {"none": [], "readers": []}
            for _ in range(args.repeat):
                out["none"].append(one_round(port, args.runs, 0))
                out["readers"].append(one_round(port, args.runs, args.readers))
            return {k: statistics.median(v) for k, v in out.items()}
        finally:
            stop_all(workers + [srv])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        return serve(argv[1], int(argv[2]), argv[3])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20000)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--only", default="thread,process")
    args = p.parse_args(argv)
    print(f"{args.runs} zero-step runs, {args.workers} driver workers, {args.readers} readers of a 1,000-run "
          f"page every 0.5 s; median of {args.repeat}")
    results = {}
    for mode in args.only.split(","):
        r = results[mode] = measure(mode, args)
        print(f"{mode:8s} no readers {r['none']:8.0f} runs/s   with readers {r['readers']:8.0f} runs/s   "
              f"ratio {r['readers'] / r['none']:.2f}", flush=True)
    best = max(results, key=lambda m: results[m]["readers"] / results[m]["none"])
    print(f"headline: best design under readers: {best} "
          f"(ratio {results[best]['readers'] / results[best]['none']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
