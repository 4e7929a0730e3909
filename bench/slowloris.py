"""How long other clients wait while K sockets hang half-way through a request header.

    python bench/slowloris.py [--classes sync,gthread] [--sockets 2,8,64] [--requests 20]

Starts runq and runweb (gunicorn, 2 workers) on free loopback ports for each worker class,
opens K sockets that send half a request header and then nothing, and times GET /health
from a normal client meanwhile (each request with a 12 s timeout).  Prints one line per
(class, K): median and worst latency and how many requests failed.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import procs  # noqa: E402

HALF = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def hang(port: int, k: int) -> list[socket.socket]:
    socks = []
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HALF)
        socks.append(s)
    return socks


def measure(worker_class: str, k: int, n: int, extra_env: dict) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        runq = procs.start_runq(Path(tmp))
        port = procs.free_port()
        env = procs.base_env(Path(tmp), runq.port, RUNWEB_PORT=port, RUNWEB_WORKER_CLASS=worker_class, **extra_env)
        web = procs.start_runweb(Path(tmp), runq.port, port=port, env=env)
        socks = []
        try:
            time.sleep(0.5)
            socks = hang(port, k)
            time.sleep(1.0)  # let the workers pick them up
            times, failed = [], 0
            for _ in range(n):
                t0 = time.monotonic()
                try:
                    status = procs.http("GET", f"{web.url}/health", timeout=12)[0]
                    failed += status != 200
                except OSError:
                    failed += 1
                times.append(time.monotonic() - t0)
            return statistics.median(times), max(times), failed
        finally:
            for s in socks:
                s.close()
            web.stop()
            runq.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="sync,gthread")
    parser.add_argument("--sockets", default="2,8,64")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--threads", default="")
    args = parser.parse_args(argv)
    extra = {"RUNWEB_THREADS": args.threads} if args.threads else {}
    for wc in args.classes.split(","):
        for k in (int(x) for x in args.sockets.split(",")):
            med, worst, failed = measure(wc, k, args.requests, extra)
            print(f"{wc:10} K={k:<4} median {med * 1000:8.1f} ms  worst {worst * 1000:8.1f} ms  "
                  f"failed {failed}/{args.requests}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
