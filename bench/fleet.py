"""A load generator of protocol-level workers: many sockets in one process, each a worker that
does the v2 handshake, registers, heartbeats, and answers or holds its assignments.

    python bench/fleet.py PORT N [--mode finish|hold] [--inflight 12] [--secret-file F] [--ca F]

It prints one line per event on stdout, for the parent (class `Fleet`) to read:
    up N               N workers registered (every 500, and when all are)
    A T BATCH INDEX    an assignment received at time.monotonic_ns() T (one clock for all
                       processes on Linux, so the parent compares it with its own send time)
    R N                N workers re-registered after a reconnect
`--mode finish` reports each run finished at once (a zero-step run); `hold` keeps it, and a
worker that reconnects after runq restarted proves its identity (WorkerReconnect with its
run), then reports the held run finished and holds the next one.
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import resource
import selectors
import socket
import ssl
import sys
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from simx import auth, protocol  # noqa: E402


class Fake:
    __slots__ = ("sock", "reader", "nonce", "runq_nonce", "worker_id", "key", "seq", "held", "online",
                 "reconnecting", "out")

    def __init__(self):
        self.sock = None
        self.reader = protocol.FrameReader()
        self.nonce = self.runq_nonce = None
        self.worker_id = self.key = None
        self.seq = 0
        self.held = None      # (batch_id, batch_index, attempt)
        self.online = False
        self.reconnecting = False
        self.out = bytearray()


class FleetLoop:
    def __init__(self, port: int, n: int, mode: str, inflight: int, secret: bytes | None, ca: str | None):
        self.port, self.n, self.mode, self.inflight, self.secret = port, n, mode, inflight, secret
        self.tls = None
        if ca:
            self.tls = ssl.create_default_context(cafile=ca)
        self.sel = selectors.DefaultSelector()
        self.fakes = [Fake() for _ in range(n)]
        self.to_connect = list(self.fakes)
        self.connecting = 0
        self.registered = 0
        self.reregistered = 0
        self.timers: list = []   # (due, id(fake), fake): heartbeats
        self.host = socket.gethostname()

    def emit(self, line: str):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    # ---- connections
    def connect(self, f: Fake):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            self.to_connect.append(f)
            return False
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            s = self.tls.wrap_socket(s, server_hostname="127.0.0.1")
        s.setblocking(False)
        f.sock, f.reader, f.out, f.online = s, protocol.FrameReader(), bytearray(), False
        f.nonce = auth.new_nonce()
        key_id = auth.key_id(self.secret) if self.secret else None
        self.send(f, protocol.message("Hello", version=protocol.VERSION, role="worker", nonce=f.nonce,
                                      key_id=key_id))
        self.sel.register(s, selectors.EVENT_READ, f)
        self.connecting += 1
        return True

    def send(self, f: Fake, msg: dict):
        f.out += protocol.encode(msg)
        try:
            n = f.sock.send(f.out)
            del f.out[:n]
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except OSError:
            return
        if f.out:
            self.sel.modify(f.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, f)

    def lost(self, f: Fake):
        try:
            self.sel.unregister(f.sock)
        except (KeyError, ValueError):
            pass
        f.sock.close()
        if not f.online:
            self.connecting -= 1
        f.online = False
        f.reconnecting = f.worker_id is not None
        self.to_connect.append(f)

    # ---- messages
    def traits(self) -> dict:
        return dict(host=self.host, pid=os.getpid(), group="", user="", engine="dummy", cost=1.0, speed=1.0,
                    priority=0.0)

    def on_message(self, f: Fake, msg: dict, now: float):
        t = msg["type"]
        if t == "RunqChallenge":
            f.runq_nonce = msg["nonce"]
            proof = auth.peer_proof(self.secret, "worker", f.runq_nonce, f.nonce) if self.secret else None
            self.send(f, protocol.message("Auth", proof=proof))
            if f.reconnecting and f.key:
                run = dict(zip(("batch_id", "batch_index", "attempt"), f.held or (None, None, None)))
                self.send(f, protocol.message("WorkerReconnect", worker_id=f.worker_id,
                                              proof=auth.reconnect_proof(f.key, f.worker_id, f.runq_nonce),
                                              **self.traits(), **run))
            else:
                f.held = None
                self.send(f, protocol.message("WorkerReady", **self.traits()))
        elif t == "RunqAcceptWorker":
            again = f.reconnecting and msg["worker_id"] == f.worker_id
            if f.worker_id != msg["worker_id"]:
                f.seq = 0
            f.worker_id = msg["worker_id"]
            if self.secret:
                f.key = auth.worker_key(self.secret, f.runq_nonce, f.nonce)
            elif msg.get("key"):
                f.key = msg["key"]
            f.online = True
            self.connecting -= 1
            interval = float(msg["heartbeat_interval"])
            heapq.heappush(self.timers, (now + interval * random.uniform(0.3, 1.0), id(f), f, interval))
            if again:
                self.reregistered += 1
                if self.reregistered % 100 == 0 or self.reregistered == self.n:
                    self.emit(f"R {self.reregistered}")
                if f.held is not None and msg["keep_run"]:
                    self.finish(f)   # what the held run would have done: finish, then take the next
                elif not msg["keep_run"]:
                    f.held = None
            else:
                self.registered += 1
                if self.registered % 500 == 0 or self.registered == self.n:
                    self.emit(f"up {self.registered}")
            f.reconnecting = False
        elif t == "RunqAssignRun":
            self.emit(f"A {time.monotonic_ns()} {msg['batch_id']} {msg['batch_index']}")
            f.seq = max(f.seq, msg["seq"])
            f.held = (msg["batch_id"], msg["batch_index"], msg["attempt"])
            if self.mode == "finish":
                self.finish(f)
        elif t == "RunqAbortRun":
            if f.held == (msg["batch_id"], msg["batch_index"], msg["attempt"]):
                f.held = None
        elif t == "RunqError":
            self.emit(f"E {msg.get('code')} {msg['message']}")

    def finish(self, f: Fake):
        b, i, a = f.held
        f.held = None
        self.send(f, protocol.message("WorkerFinishedRun", worker_id=f.worker_id, batch_id=b, batch_index=i,
                                      attempt=a, data=None))

    def heartbeats(self, now: float):
        while self.timers and self.timers[0][0] <= now:
            _, _, f, interval = heapq.heappop(self.timers)
            if not f.online:
                continue
            self.send(f, protocol.message("WorkerHeartbeat", worker_id=f.worker_id, seq=f.seq,
                                          runs=[list(f.held)] if f.held else []))
            heapq.heappush(self.timers, (now + interval, id(f), f, interval))

    # ---- loop
    def serve(self):
        while True:
            while self.to_connect and self.connecting < self.inflight:
                if not self.connect(self.to_connect.pop()):
                    time.sleep(0.05)
                    break
            timeout = 0.05 if self.to_connect else 1.0
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
            for key, events in self.sel.select(timeout):
                f = key.data
                if events & selectors.EVENT_WRITE and f.out:
                    try:
                        n = f.sock.send(f.out)
                        del f.out[:n]
                    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                    except OSError:
                        self.lost(f)
                        continue
                    if not f.out:
                        self.sel.modify(f.sock, selectors.EVENT_READ, f)
                if events & selectors.EVENT_READ:
                    self.read(f)
            self.heartbeats(time.monotonic())

    def read(self, f: Fake):
        while True:
            try:
                data = f.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:
                self.lost(f)
                return
            if not data:
                self.lost(f)
                return
            now = time.monotonic()
            for body in f.reader.feed(data):
                self.on_message(f, protocol.decode_message(body), now)
            if not (self.tls and f.sock.pending()):
                return


class Fleet:
    """The parent's side: `procs` fleet processes holding `n` workers in all; events read by threads."""

    def __init__(self, stack, n: int, procs: int = 4, mode: str = "finish", inflight: int = 12):
        import subprocess
        import threading
        self.up = [0] * procs
        self.re = [0] * procs
        self.assigned: list[tuple[int, int, int]] = []   # (monotonic_ns, batch_id, batch_index)
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.procs = []
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for i, k in enumerate(per):
            proc = subprocess.Popen([sys.executable, __file__, str(stack.port), str(k), "--mode", mode,
                                     "--inflight", str(inflight)], env=stack.env, stdout=subprocess.PIPE,
                                    stderr=stack.log("fleet"), text=True, bufsize=1)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc):
        for line in proc.stdout:
            kind, _, rest = line.partition(" ")
            if kind == "A":
                t, b, idx = rest.split()
                with self.lock:
                    self.assigned.append((int(t), int(b), int(idx)))
            elif kind == "up":
                self.up[i] = int(rest)
            elif kind == "R":
                self.re[i] = int(rest)
            elif kind == "E":
                self.errors.append(rest.strip())

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def registered(self) -> int:
        return sum(self.up)

    def reregistered(self) -> int:
        return sum(self.re)

    def assignments_since(self, t_ns: int) -> list[tuple[int, int, int]]:
        with self.lock:
            return [a for a in self.assigned if a[0] >= t_ns]

    def close(self):
        from common import stop_all
        stop_all(self.procs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("--mode", choices=("finish", "hold"), default="finish")
    p.add_argument("--inflight", type=int, default=12, help="handshakes in flight at once (runq caps them per address)")
    p.add_argument("--secret-file", default=os.environ.get("SIMX_WORKER_SECRET_FILE") or None)
    p.add_argument("--ca", default=os.environ.get("SIMX_TLS_CA") or None)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    secret = auth.load_secret(args.secret_file) if args.secret_file else None
    try:
        FleetLoop(args.port, args.n, args.mode, args.inflight, secret, args.ca).serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
