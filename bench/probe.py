"""A bare dispatcher of the same shape as runq, for comparison: same framing and
messages, one selectors loop, no database, no matching, no bookkeeping.
What runq reaches relative to this is the cost of durability and matching.

    python bench/probe.py PORT
"""
from __future__ import annotations

import selectors
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from simx import auth, config, protocol  # noqa: E402


def main(port: int) -> None:
    sel = selectors.DefaultSelector()
    lsock = socket.create_server(("127.0.0.1", port), backlog=1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    state = {"next": 0, "n": 0, "done": 0, "idle": [], "start": 0.0, "end": None}
    readers = {}
    cfg = config.load()   # the same secrets as runq, so the same clients and drivers talk to it
    gate = auth.Gate(auth.load_secrets(cfg.runq, lambda p: config.resolve_var_path(p, cfg.root, cfg.var)), "probe")
    handshakes = {}

    def assign(sock):
        if state["next"] < state["n"]:
            i = state["next"]
            state["next"] += 1
            sock.sendall(protocol.encode({"type": "RunqAssignRun", "batch_id": 1, "batch_index": i, "attempt": 1,
                                          "seq": i + 1, "engine": "dummy", "param": {"step_count": 0}, "time_limit": None}))
        else:
            state["idle"].append(sock)

    while True:
        for key, _ in sel.select(1.0):
            if key.data is None:
                s, _ = lsock.accept()
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                readers[s] = protocol.FrameReader()
                sel.register(s, selectors.EVENT_READ, 1)
                continue
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                sel.unregister(s)
                s.close()
                continue
            for body in readers[s].feed(data):
                msg = protocol.decode_message(body)
                t = msg["type"]
                if t == "Hello":
                    handshakes[s], fields = gate.challenge(msg)
                    s.sendall(protocol.encode(protocol.message("RunqChallenge", **fields)))
                elif t == "Auth":
                    gate.authenticate(handshakes.pop(s), msg)
                elif t == "WorkerReady":
                    s.sendall(protocol.encode({"type": "RunqAcceptWorker", "worker_id": 1,
                                               "heartbeat_interval": 10, "keep_run": False}))
                    assign(s)
                elif t == "WorkerFinishedRun":
                    state["done"] += 1
                    if state["done"] == state["n"]:
                        state["end"] = time.time()
                    s.sendall(protocol.encode({"type": "RunqAck", "batch_id": 1, "batch_index": msg["batch_index"],
                                               "attempt": 1, "accepted": True}))
                    assign(s)
                elif t == "StartBatch":
                    state.update(next=0, n=msg["n_runs"], done=0, start=time.time(), end=None)
                    idle, state["idle"] = state["idle"], []
                    for w in idle:
                        assign(w)
                    s.sendall(protocol.encode(protocol.reply(batch_id=1)))
                elif t == "BatchStatus":
                    end = state["end"]
                    s.sendall(protocol.encode(protocol.reply(batch={
                        "state": "done" if end else "active", "n_finished": state["done"],
                        "execution_time": None if end is None else end - state["start"]})))
                elif t == "Ping":
                    s.sendall(protocol.encode(protocol.reply()))


if __name__ == "__main__":
    main(int(sys.argv[1]))
