"""A minimal protocol-level worker for benchmarks: takes runs and reports them
finished at once (what a zero-step dummy run costs, without the engine thread).

    python bench/driver.py PORT
"""
from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from simx import auth, config, protocol  # noqa: E402
from simx.client import Link, RunqUnavailable, handshake  # noqa: E402


def main(port: int) -> int:
    cfg = config.load()
    path = cfg.runq.worker_secret_file
    secret = auth.load_secret(config.resolve_var_path(path, cfg.root, cfg.var)) if path else None
    link = Link.connect("127.0.0.1", port, timeout=None)
    handshake(link, "worker", secret)
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
