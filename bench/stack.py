"""A simx stack for one measurement: runq, runweb, workers, drivers, in a temporary directory.

    with BenchStack(options) as s:
        s.start_runq(); s.start_runweb(); s.start_workers(16)
        bid = s.post_batch(10_000)          # POST /batch/new through runweb
        s.wait_batch_http(bid)              # polls GET /batch/N?runs=none

Options: `sync` ("NORMAL" or "FULL": runq.synchronous, SQLite's synchronous level), `secrets` (worker and
client secret files, as `fab runq.secrets` makes them), `tls` (a self-signed certificate for
runq.tls.*, when this runq knows those keys).  Every process is stopped in `close()`.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time

from common import PY, ROOT, free_port, stop_all, wait_until  # noqa: E402  (bench/ is on sys.path)
import report  # noqa: E402

from simx import localstack  # noqa: E402  (the processes start as the test suite starts them)


@dataclasses.dataclass
class Options:
    sync: str = "NORMAL"
    secrets: bool = False
    tls: bool = False
    prefetch: int = 1     # workers' --prefetch (1: the default, one run at a time)

    def label(self) -> str:
        extra = [x for x, on in (("secrets", self.secrets), ("TLS", self.tls)) if on]
        extra += [f"prefetch {self.prefetch}"] if self.prefetch > 1 else []
        return f"synchronous={self.sync}" + (", " + "+".join(extra) if extra else "")


def tls_available() -> bool:
    """Whether this runq has the runq.tls.* keys (another stream adds them)."""
    from simx import config
    try:
        return hasattr(config.load().runq, "tls")
    except Exception:  # noqa: BLE001  a conf this bench cannot read says no
        return False


class HTTP:
    """A keep-alive HTTP/1.1 connection to runweb, JSON replies."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/yaml"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, (json.loads(data) if data else {})
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()   # runweb closed a kept connection (keepalive): open another, once
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt == 2:
                    raise
        raise AssertionError("not reached")

    def close(self):
        self.conn.close()


class BenchStack:
    def __init__(self, options: Options | None = None, keep: str | None = None):
        self.options = options or Options()
        self.tmp = keep or tempfile.mkdtemp(prefix="simx-bench-")
        self._keep = keep is not None
        self.port = free_port()
        self.web_port = None
        self.runq: subprocess.Popen | None = None
        self.runweb: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.env = localstack.stack_env(self.tmp, self.port, SIMX_LOG_LEVEL="WARNING")
        if self.options.secrets:
            self.env.update(localstack.write_secrets(self.tmp))
        if self.options.tls:
            self._tls()
        self._client = None
        self._http = None

    # ---- set-up
    def _tls(self):
        cert, key = f"{self.tmp}/runq.crt", f"{self.tmp}/runq.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        os.chmod(key, 0o600)
        self.env.update(SIMX_TLS_CERT=cert, SIMX_TLS_KEY=key, SIMX_TLS_CA=cert)

    def log(self, name: str):
        return open(f"{self.tmp}/{name}.log", "ab")

    def spawn(self, args, name: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdin=subprocess.DEVNULL,
                                stdout=self.log(name), stderr=subprocess.STDOUT)

    # ---- runq
    def client(self):
        """A RunqClient as the benches use it (client secret and CA from the environment, as conf says)."""
        if self._client is None:
            from simx import config
            from simx.client import RunqClient
            saved = {k: os.environ.get(k) for k in {*os.environ, *self.env} if k.startswith(localstack.PREFIXES)}
            os.environ.update({k: v for k, v in self.env.items() if k.startswith(localstack.PREFIXES)})
            try:
                self._client = RunqClient.from_config(config.load(), timeout=60, port=self.port)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        return self._client

    def request(self, mtype: str, **fields) -> dict:
        reply = self.client().request(mtype, **fields)
        if reply.get("status") != "ok":
            raise RuntimeError(f"runq refused {mtype}: {reply.get('message')}")
        return reply

    def start_runq(self, env_extra: dict | None = None, timeout: float = 60) -> subprocess.Popen:
        env = dict(self.env, SIMX_DB_SYNCHRONOUS=self.options.sync.upper(), **(env_extra or {}))
        self._client = None
        self.runq = localstack.start_runq(self.tmp, lambda port: self.request("Ping")["status"] == "ok", self.port,
                                          env, timeout).popen
        return self.runq

    def stop_runq(self, kill: bool = False):
        if self._client is not None:
            self._client.close()
        if self.runq is not None and self.runq.poll() is None:
            self.runq.kill() if kill else self.runq.terminate()
            self.runq.wait(30)

    # ---- runweb
    def start_runweb(self, workers: int | None = None, env_extra: dict | None = None) -> subprocess.Popen:
        self.web_port = free_port()
        env = dict(self.env, RUNWEB_PORT=str(self.web_port), **(env_extra or {}))
        self.runweb = localstack.start_runweb(self.tmp, self.port, lambda url: self.http().request("GET", "/health")[0]
                                              == 200, self.web_port, env, workers, timeout=60, access_log=False).popen
        return self.runweb

    def http(self) -> HTTP:
        if self._http is None:
            self._http = HTTP(self.web_port)
        return self._http

    def runweb_pids(self) -> list[int]:
        return [self.runweb.pid, *report.children_of(self.runweb.pid)] if self.runweb else []

    def post_batch(self, n_runs: int, name: str = "bench", param: dict | None = None) -> int:
        import yaml
        body = yaml.safe_dump({"name": name, "engine": "dummy", "n_runs": n_runs,
                               "param": param if param is not None else {"step_count": 0}}).encode()
        status, data = self.http().request("POST", "/batch/new", body)
        if status != 201:
            raise RuntimeError(f"POST /batch/new: {status} {data}")
        return data["batch_id"]

    def batch_http(self, bid: int) -> dict:
        status, data = self.http().request("GET", f"/batch/{bid}?runs=none")
        if status != 200:
            raise RuntimeError(f"GET /batch/{bid}: {status} {data}")
        return data["batch"]

    def wait_batch_http(self, bid: int, timeout: float = 1200, interval: float = 0.01) -> tuple[float, dict]:
        """Poll GET /batch/N?runs=none until the batch is no longer active: (when seen, batch)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            batch = self.batch_http(bid)
            if batch["state"] != "active":
                return time.perf_counter(), batch
            time.sleep(interval)
        raise TimeoutError(f"batch {bid} still active after {timeout} s")

    # ---- workers
    def start_workers(self, n: int, kind: str = "worker", extra: tuple = ()) -> list[subprocess.Popen]:
        """n real `python -m worker --engine dummy` processes (kind "worker") or bench/driver.py."""
        if kind == "driver":
            cmd = [PY, str(ROOT / "bench" / "driver.py"), str(self.port)]
        else:
            cmd = [PY, "-m", "worker", "--engine", "dummy", "--port", str(self.port), *extra]
            if self.options.prefetch > 1:
                cmd += ["--prefetch", str(self.options.prefetch)]
        procs = [self.spawn(cmd, "workers") for _ in range(n)]
        self.workers += procs
        return procs

    def ended_batch(self, n_runs: int, drivers: int = 4) -> int:
        """A batch of n_runs run to its end by `drivers` minimal workers (stopped after): its id."""
        self.start_workers(drivers, kind="driver")
        self.wait_connected(drivers)
        bid = self.request("StartBatch", name="ended", engine="dummy", n_runs=n_runs, param={})["batch_id"]
        wait_until(lambda: self.request("BatchStatus", batch_id=bid, offset=0, limit=0)["batch"]["state"]
                   != "active", 120, f"the {n_runs:,}-run batch done")
        self.stop_workers()
        return bid

    def wait_connected(self, n: int, timeout: float = 120):
        def enough():
            workers = self.request("WorkerList", offset=0, limit=10_000)["workers"]
            return sum(1 for w in workers if w["connected"]) >= n
        wait_until(enough, timeout, f"{n} workers connected", interval=0.1)

    def stop_workers(self):
        stop_all(self.workers)
        self.workers = []

    # ---- end
    def close(self):
        for c in (self._client, self._http):
            if c is not None:
                c.close()
        stop_all(self.workers)
        if self.runweb is not None and self.runweb.poll() is None:
            try:
                os.killpg(self.runweb.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.runweb.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.runweb.pid, 9)
                self.runweb.wait()
        stop_all([self.runq])
        if not self._keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
