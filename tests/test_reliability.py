"""No run lost, none counted twice: real runq, workers and runweb on loopback,
killed, stopped and restarted the way production goes wrong."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

import procs
from procs import http, wait_until
from simx.client import RunqClient, RunqUnavailable

FAST = dict(RUNQ_HEARTBEAT="0.5", RUNQ_LEASE="3", RUNQ_GRACE="10")


class Cluster:
    """runq (restartable on the same port and file), runweb and workers in one tmp dir."""

    def __init__(self, tmp, **env):
        self.tmp = tmp
        self.port = procs.free_port()
        self.env = procs.base_env(tmp, self.port, **{**FAST, **env})
        self.procs: list[procs.Proc] = []
        self.runq = None
        self.client = RunqClient("127.0.0.1", self.port)
        self.restarts = 0
        self.start_runq()

    def start_runq(self):
        self.runq = procs.start_runq(self.tmp, self.port, env=self.env, name=f"runq-{self.restarts}")
        self.procs.append(self.runq)

    def kill_runq(self):
        self.runq.signal(signal.SIGKILL)
        self.runq.wait()
        self.restarts += 1

    def runweb(self):
        proc = procs.start_runweb(self.tmp, self.port, env=dict(self.env, RUNWEB_PORT=str(procs.free_port())))
        self.procs.append(proc)
        return proc

    def worker(self, **traits):
        proc = procs.start_worker(self.tmp, self.port, env=self.env, **traits)
        self.procs.append(proc)
        return proc

    def ask(self, mtype, **fields):
        try:
            return self.client.request(mtype, **fields)
        except RunqUnavailable:
            return None

    def batch(self, batch_id=1):
        reply = self.ask("BatchStatus", batch_id=batch_id, limit=1)
        return reply["batch"] if reply else {}

    def connected(self):
        reply = self.ask("WorkerList")
        return [w for w in reply["workers"] if w["connected"]] if reply else []

    def with_workers(self, n, **traits):
        """Start n workers and wait until runq lists them connected; the last one's Proc."""
        procs_ = [self.worker(**traits) for _ in range(n)]
        self.wait_workers(n)
        return procs_[-1]

    def wait_running(self, n, timeout=10):
        wait_until(lambda: self.batch().get("n_running") == n, timeout, what=f"{n} runs running")

    def wait_workers(self, n, timeout=20):
        wait_until(lambda: len(self.connected()) >= n, timeout, what=f"{n} workers connected")

    def wait_done(self, batch_id=1, timeout=60):
        wait_until(lambda: self.batch(batch_id).get("end_time"), timeout, what=f"batch {batch_id} to end")
        return self.batch(batch_id)

    def db(self):
        return sqlite3.connect(f"file:{self.tmp / 'runq.sqlite'}?mode=ro", uri=True)

    def finished_attempts(self, batch_id=1):
        """batch_index -> number of attempts recorded as finished."""
        with self.db() as db:
            return dict(db.execute("SELECT batch_index, COUNT(*) FROM attempts WHERE outcome='finished' "
                                   "AND batch_id=? GROUP BY batch_index", (batch_id,)).fetchall())

    def attempts(self, batch_id, index):
        return self.ask("RunStatus", batch_id=batch_id, batch_index=index)["run"]["attempts"]

    def stop(self):
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                try:
                    proc.signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
            proc.stop()


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def make(**env):
        clusters.append(Cluster(tmp_path, **env))
        return clusters[-1]
    yield make
    for c in clusters:
        c.stop()


def start(c, n_runs, **fields):
    fields.setdefault("param", {"step_count": 1, "step_delay": 0.05})
    reply = c.client.request("StartBatch", name="t", engine="dummy", n_runs=n_runs, **fields)
    return reply["batch_id"]


def assert_consistent(c, batch_id, n_runs):
    batch = c.batch(batch_id)
    assert batch["n_waiting"] + batch["n_running"] + batch["n_finished"] + batch["n_failed"] \
        + batch["n_cancelled"] == n_runs
    with c.db() as db:
        rows = dict(db.execute("SELECT state, COUNT(*) FROM runs WHERE batch_id=? GROUP BY state",
                               (batch_id,)).fetchall())
    assert rows.get("finished", 0) == batch["n_finished"]


def test_runq_sigkilled_three_times_mid_batch_every_run_finishes_once(cluster):
    c = cluster()
    c.with_workers(8)
    start(c, 500)
    for mark in (100, 200, 300):
        wait_until(lambda: c.batch().get("n_finished", 0) >= mark, 60, what=f"{mark} runs finished")
        c.kill_runq()
        c.start_runq()
    batch = c.wait_done(timeout=120)
    assert (batch["state"], batch["n_finished"], batch["n_complete"]) == ("done", 500, 500)
    finished = c.finished_attempts()
    assert sorted(finished) == list(range(500)) and set(finished.values()) == {1}
    assert_consistent(c, 1, 500)
    runs = c.ask("BatchStatus", batch_id=1, limit=500)["runs"]
    assert {r["state"] for r in runs} == {"finished"}


def test_silent_worker_loses_its_run_and_its_late_result_is_rejected(cluster):
    c = cluster()
    stale = c.with_workers(1)
    start(c, 1, param={"step_count": 20, "step_delay": 0.1})
    c.wait_running(1)
    stale.signal(signal.SIGSTOP)
    c.worker()
    wait_until(lambda: len(c.attempts(1, 0)) >= 1, 15, what="the lease to expire")
    assert c.attempts(1, 0)[0]["outcome"] == "lost"
    batch = c.wait_done(timeout=30)
    stale.signal(signal.SIGCONT)
    wait_until(lambda: "rejected" in c.runq.log(), 15, what="the stale worker's late report")
    assert batch["n_finished"] == 1
    assert [a["outcome"] for a in c.attempts(1, 0)] == ["lost", "finished"]
    assert c.finished_attempts() == {0: 1}


def test_cancel_mid_batch_aborts_running_and_holds_across_restart(cluster):
    c = cluster()
    c.with_workers(3)
    web = c.runweb()
    start(c, 30, param={"step_count": 50, "step_delay": 0.1})
    c.wait_running(3)
    status, _, body = http("POST", f"{web.url}/batch/1/cancel")
    assert status == 200 and body["batch"]["state"] == "cancelled" and body["batch"]["n_cancelled"] == 30
    wait_until(lambda: all(w["state"] == "idle" for w in c.connected()), 10, what="workers to let go")
    c.kill_runq()
    c.start_runq()
    c.wait_workers(3)
    wait_until(lambda: all(w["state"] == "idle" for w in c.connected()), 10, what="workers idle after restart")
    batch = c.batch()
    assert (batch["state"], batch["n_cancelled"], batch["n_running"]) == ("cancelled", 30, 0)
    with c.db() as db:
        outcomes = [r[0] for r in db.execute("SELECT outcome FROM attempts WHERE batch_id=1")]
    assert outcomes == ["cancelled"] * 3      # only the three that were running ever started
    status, _, body = http("POST", f"{web.url}/batch/1/cancel")  # idempotent
    assert status == 200 and body["batch"]["n_cancelled"] == 30


def test_failing_engine_retried_then_failed_and_time_limit_aborts(cluster):
    c = cluster()
    c.with_workers(1)
    web = c.runweb()
    status, _, body = http("POST", f"{web.url}/batch/new", "engine: dummy\nn_runs: 1\nmax_attempts: 3\n"
                                                            "param: {step_count: 0, fail: 'calibration diverged'}\n")
    assert status in (200, 201), body
    c.wait_done(body["batch_id"])
    _, _, run = http("GET", f"{web.url}/batch/{body['batch_id']}/run/0")
    assert run["run"]["state"] == "failed" and "calibration diverged" in run["run"]["error"]
    assert "RuntimeError: calibration diverged" in run["run"]["traceback"]
    assert [a["outcome"] for a in run["run"]["attempts"]] == ["failed"] * 3
    _, _, body = http("POST", f"{web.url}/batch/new", "engine: dummy\nn_runs: 1\nmax_attempts: 2\ntime_limit: 0.5\n"
                                                      "param: {step_count: 100, step_delay: 0.1}\n")
    batch = c.wait_done(body["batch_id"], timeout=30)
    assert (batch["n_failed"], batch["n_finished"]) == (1, 0)
    _, _, run = http("GET", f"{web.url}/batch/{body['batch_id']}/run/0")
    assert [a["outcome"] for a in run["run"]["attempts"]] == ["timeout", "timeout"]
    assert "time limit" in run["run"]["error"]


def test_draining_worker_finishes_its_run_takes_no_other_and_exits_0(cluster):
    c = cluster()
    w = c.with_workers(1)
    start(c, 3, param={"step_count": 10, "step_delay": 0.1})
    c.wait_running(1)
    w.signal(signal.SIGUSR1)
    assert w.wait(20) == 0
    batch = c.batch()
    assert (batch["n_finished"], batch["n_waiting"]) == (1, 2)
    assert c.finished_attempts() == {0: 1}
    other = c.worker()
    c.wait_done(timeout=30)
    assert other.alive()


def test_drain_through_the_api_and_retried_post_creates_one_batch(cluster):
    c = cluster()
    w = c.with_workers(1)
    web = c.runweb()
    body = "engine: dummy\nn_runs: 2\nparam: {step_count: 5, step_delay: 0.1}\n"
    first = http("POST", f"{web.url}/batch/new", body, headers={"Idempotency-Key": "nightly-42"})
    again = http("POST", f"{web.url}/batch/new", body, headers={"Idempotency-Key": "nightly-42"})
    assert first[2]["batch_id"] == again[2]["batch_id"] and again[0] == 200
    assert len(http("GET", f"{web.url}/batches")[2]["batches"]) == 1
    c.wait_running(1)
    wid = c.connected()[0]["id"]
    status, _, reply = http("POST", f"{web.url}/worker/{wid}/drain")
    assert status == 200 and reply["worker"]["state"] == "draining"
    assert w.wait(20) == 0
    assert c.batch()["n_finished"] == 1 and c.batch()["n_waiting"] == 1


def test_term_returns_the_run_to_the_queue_at_once(cluster):
    c = cluster(RUNQ_GRACE="600")   # no help from the grace period: the worker says it stopped
    w = c.with_workers(1)
    start(c, 1, param={"step_count": 100, "step_delay": 0.1})
    c.wait_running(1)
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    wait_until(lambda: c.batch().get("n_waiting") == 1, 5, what="the run back in the queue")
    assert [a["outcome"] for a in c.attempts(1, 0)] == ["stopped"]


def test_chaos_loop_loses_nothing_and_counts_nothing_twice(tmp_path):
    """bench/chaos.py, short: runq and workers killed at random while batches run."""
    out = subprocess.run([sys.executable, str(procs.ROOT / "bench" / "chaos.py"), "--seconds", "20",
                          "--workers", "6", "--batch-runs", "300", "--seed", "7", "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    tally = [line for line in out.stdout.splitlines() if line.startswith("tally:")][0]
    assert "duplicates 0" in tally and "lost 0" in tally


def test_quarter_of_supervised_workers_sigkilled_all_runs_finish(tmp_path):
    """8 workers under supervisord (`fab all`); 2 are SIGKILLed mid-run and supervisor restarts them."""
    import shutil
    import tempfile
    from pathlib import Path

    from ops.control import Supervisor
    from ops.paths import Paths

    tmp = Path(tempfile.mkdtemp(prefix="simx-rel-"))   # short: AF_UNIX socket path limit
    hosts = tmp / "hosts.yaml"
    hosts.write_text("instances:\n  local:\n    pools:\n      - {name: dummy, engine: dummy, count: 8}\n")
    port = procs.free_port()
    env = procs.base_env(tmp, port, RUNWEB_PORT=procs.free_port(), SIMX_HOSTS=hosts, **dict(FAST, RUNQ_GRACE="2"))
    sup = Supervisor(Paths(Path(env["SIMX_VAR"])))
    try:
        out = subprocess.run([sys.executable, "-m", "fabric", "all"], cwd=procs.ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        client = procs.client(port, env)   # with the client secret `fab all` made in var/secrets
        wait_until(lambda: len(procs.workers_connected(port, env)) == 8, 30, what="8 supervised workers")
        client.request("StartBatch", name="k", engine="dummy", n_runs=200,
                       param={"step_count": 4, "step_delay": 0.05})
        wait_until(lambda: client.request("BatchStatus", batch_id=1, limit=1)["batch"]["n_finished"] >= 40, 30,
                   what="the batch under way")
        busy = [w for w in procs.workers_connected(port, env) if w["state"] == "busy"][:2]
        assert len(busy) == 2
        before = {name: info["pid"] for name, info in sup.processes().items()}
        for w in busy:
            os.kill(w["pid"], signal.SIGKILL)
        wait_until(lambda: sum(1 for name, info in sup.processes().items()
                               if info["statename"] == "RUNNING" and info["pid"] != before[name]) == 2,
                   30, what="supervisor to restart the two killed workers")

        def done():
            batch = client.request("BatchStatus", batch_id=1, limit=1)["batch"]
            return batch if batch["end_time"] else None
        batch = wait_until(done, 60, what="the batch to finish")
        assert (batch["n_finished"], batch["n_failed"]) == (200, 0)
        with sqlite3.connect(f"file:{tmp / 'runq.sqlite'}?mode=ro", uri=True) as db:
            per_run = db.execute("SELECT batch_index, SUM(outcome='finished') FROM attempts "
                                 "WHERE batch_id=1 GROUP BY batch_index").fetchall()
            lost_by = [r[0] for r in db.execute("SELECT worker_id FROM attempts WHERE outcome='lost'")]
        assert len(per_run) == 200 and all(f == 1 for _, f in per_run)          # nothing counted twice
        assert sorted(lost_by) == sorted(w["id"] for w in busy)                 # the killed attempts, recorded
    finally:
        subprocess.run([sys.executable, "-m", "fabric", "shutdown"], cwd=procs.ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
