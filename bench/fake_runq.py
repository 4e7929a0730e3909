"""A minimal stand-in for runq that keeps every worker topped up to its prefetch: the worker's side
of prefetch measured before runq implements it (bench/worker_cpu.py --fake-runq).

No database, no matching: it answers the v2 opening without secrets, registers each worker, and
keeps ``prefetch`` (from WorkerReady, default 1) zero-step assignments outstanding per worker,
acking each report and assigning the next in the same write.  Prints the count every 1,000
reports; stops after TOTAL reports.

    python bench/fake_runq.py PORT TOTAL
"""
from __future__ import annotations

import selectors
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from simx import auth, protocol  # noqa: E402

REPORTS = ("WorkerFinishedRun", "WorkerFailedRun", "WorkerAbortedRun", "WorkerStoppedRun")


def main(port: int, total: int) -> int:
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    conns: dict = {}   # socket -> state
    next_index, reports, first, wid = 0, 0, None, 0
    while reports < total:
        for key, _ in sel.select(1.0):
            if key.fileobj is listener:
                sock, _ = listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(sock, selectors.EVENT_READ)
                conns[sock] = {"reader": protocol.FrameReader(), "seq": 0, "id": None}
                continue
            sock, state = key.fileobj, conns[key.fileobj]
            data = sock.recv(65536)
            if not data:
                sel.unregister(sock)
                sock.close()
                del conns[sock]
                continue
            out = []

            def assign():
                nonlocal next_index
                state["seq"] += 1
                next_index += 1
                out.append({"type": "RunqAssignRun", "batch_id": 1, "batch_index": next_index, "attempt": 1,
                            "seq": state["seq"], "engine": "dummy", "param": {"step_count": 0}, "time_limit": None})

            for body in state["reader"].feed(data):
                msg = protocol.decode_message(body)
                mtype = msg["type"]
                if mtype == "Hello":
                    out.append({"type": "RunqChallenge", "version": protocol.VERSION, "instance": "fake",
                                "nonce": auth.new_nonce(), "proof": None})
                elif mtype == "WorkerReady":
                    wid += 1
                    state["id"] = wid
                    out.append({"type": "RunqAcceptWorker", "worker_id": wid, "heartbeat_interval": 30.0,
                                "keep_run": False, "key": "00" * 32})
                    for _ in range(msg.get("prefetch", 1)):
                        assign()
                elif mtype in REPORTS:
                    out.append({"type": "RunqAck", "batch_id": 1, "batch_index": msg["batch_index"], "attempt": 1,
                                "accepted": True})
                    reports += 1
                    if first is None:
                        first = time.monotonic()
                    if reports % 1000 == 0:
                        print(reports, flush=True)   # progress, for the bench reading it
                    assign()
            if out:
                sock.sendall(b"".join(protocol.encode(m) for m in out))
    print(f"{total} reports in {time.monotonic() - first:.3f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
