"""A minimal protocol-level worker for benchmarks: takes runs and reports them
finished at once (what a zero-step dummy run costs, without the engine thread).

    python bench/driver.py PORT
"""
from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from runq import protocol  # noqa: E402
from runq.client import Link, RunqUnavailable  # noqa: E402


def main(port: int) -> int:
    link = Link.connect("127.0.0.1", port, timeout=None)
    link.send(protocol.message("WorkerReady", host=socket.gethostname(), pid=os.getpid(), group="", user="",
                               engine="dummy", cost=1.0, speed=1.0, priority=0.0))
    wid = None
    try:
        while True:
            for msg in link.read_available():
                if msg["type"] == "RunqAcceptWorker":
                    wid = msg["worker_id"]
                elif msg["type"] == "RunqAssignRun":
                    link.send({"type": "WorkerFinishedRun", "worker_id": wid, "batch_id": msg["batch_id"],
                               "batch_index": msg["batch_index"], "attempt": msg["attempt"], "data": "ok"})
    except RunqUnavailable:
        return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
