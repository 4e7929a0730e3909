"""Submit cost against batch size: StartBatch round trips for 1 to 1,000,000 runs.

Run rows are created on first dispatch, so accepting a batch writes one row
whatever n_runs is; the times should not grow with it.

    .venv/bin/python bench/submit.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import PY, ROOT, free_port, wait_until, runq_client  # noqa: E402  (bench/ is on sys.path when run)

SIZES = (1, 1_000, 100_000, 1_000_000)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, RUNQ_PORT=str(port), SIMX_DB_URL=f"sqlite:///{tmp}/runq.sqlite",
                   SIMX_LOG_LEVEL="WARNING", SIMX_VAR=tmp)
        srv = subprocess.Popen([PY, "-m", "runq"], cwd=ROOT, env=env)
        try:
            client = runq_client(port)
            wait_until(lambda: client.request("Ping")["status"] == "ok", 20, "runq up")
            print(f"submit: StartBatch round trip by n_runs, median of {args.repeat} (no workers connected)")
            for n in SIZES:
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    client.request("StartBatch", name="b", engine="dummy", n_runs=n, param={})
                    times.append((time.perf_counter() - t0) * 1000)
                print(f"  n_runs {n:>9,}: median {statistics.median(times):6.2f} ms   "
                      f"min {min(times):6.2f}  max {max(times):6.2f}", flush=True)
            t0 = time.perf_counter()
            last = client.request("BatchList", limit=1, offset=len(SIZES) * args.repeat - 1)["batches"][0]
            page = client.request("BatchStatus", batch_id=last["id"], offset=999_000, limit=1000)
            print(f"  a page of 1,000 runs at offset 999,000 of the last batch: "
                  f"{(time.perf_counter() - t0) * 1000:.2f} ms ({len(page['runs'])} runs)")
        finally:
            srv.terminate()
            srv.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
