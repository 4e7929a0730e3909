"""Chaos: kill runq and random workers in a loop while batches run; print a tally.

runq is SIGKILLed and restarted, workers are SIGKILLed (and replaced, as
supervisor would), SIGSTOPped past their lease and continued, or stopped with
TERM, all at random, for a bounded time.  Then the chaos stops, the batches are
allowed to finish, and the database is read directly (not through runq) to
count every run once:

    runs        runs submitted
    finished    runs whose state is finished
    duplicates  runs with more than one finished attempt, plus any gap between the
                batches' finished counters and the finished rows
    lost        runs not finished

    .venv/bin/python bench/chaos.py [--seconds 300] [--workers 8] [--seed N]
Exit status 0 only when duplicates and lost are both 0.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from common import PY, ROOT, free_port, stop_all, runq_client  # noqa: E402  (bench/ is on sys.path when run)
from simx.client import RunqUnavailable  # noqa: E402


class Chaos:
    def __init__(self, tmp: str, workers: int, seed: int, log=print):
        self.tmp, self.n_workers, self.rng, self.log = tmp, workers, random.Random(seed), log
        self.port = free_port()
        self.db = f"{tmp}/runq.sqlite"
        self.env = dict(os.environ, RUNQ_HOST="127.0.0.1", RUNQ_PORT=str(self.port), SIMX_DB_URL=f"sqlite:///{self.db}",
                        SIMX_VAR=f"{tmp}/var", RUNQ_HEARTBEAT="0.5", RUNQ_LEASE="3", RUNQ_GRACE="4",
                        SIMX_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
        self.env.pop("SIMX_WORKER_TOKEN", None)
        self.runq: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.stopped: dict[int, float] = {}   # pid -> when to SIGCONT
        self.client = runq_client(self.port, timeout=10)
        self.events = {"runq_kill": 0, "worker_kill": 0, "worker_stop_cont": 0, "worker_term": 0}
        self.batches: list[int] = []

    def _spawn(self, args, name):
        return subprocess.Popen(args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=open(f"{self.tmp}/{name}.log", "ab"), stderr=subprocess.STDOUT)

    def start_runq(self):
        self.runq = self._spawn([PY, "-m", "runq"], "runq")
        self.wait(lambda: self.client.request("Ping")["status"] == "ok", 30, "runq up")

    def start_worker(self):
        self.workers.append(self._spawn([PY, "-m", "worker", "--engine", "dummy"], "workers"))

    def wait(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return True
            except (RunqUnavailable, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(what)

    def submit(self, n_runs: int):
        key = f"chaos-{len(self.batches)}"
        # idempotent: a submit cut off by a runq kill is retried with the same key
        reply = None
        while reply is None:
            try:
                reply = self.client.request("StartBatch", name=key, engine="dummy", n_runs=n_runs,
                                            param={"step_count": 2, "step_delay": 0.05}, idempotency_key=key)
            except RunqUnavailable:
                time.sleep(0.2)
        self.batches.append(reply["batch_id"])

    def supervise(self):
        """Replace dead workers, continue stopped ones whose time has come (what supervisor does)."""
        now = time.monotonic()
        for pid, when in list(self.stopped.items()):
            if now >= when:
                os.kill(pid, signal.SIGCONT)
                del self.stopped[pid]
        alive = []
        for p in self.workers:
            if p.poll() is None:
                alive.append(p)
        self.workers = alive
        while len(self.workers) < self.n_workers:
            self.start_worker()
        if self.runq.poll() is not None:
            self.start_runq()

    def strike(self):
        action = self.rng.choices(["runq_kill", "worker_kill", "worker_stop_cont", "worker_term"], [2, 4, 1, 2])[0]
        self.events[action] += 1
        if action == "runq_kill":
            self.runq.kill()
            self.runq.wait()
            time.sleep(self.rng.uniform(0.1, 1.5))
            self.start_runq()
            return
        candidates = [p for p in self.workers if p.poll() is None and p.pid not in self.stopped]
        if not candidates:
            return
        victims = self.rng.sample(candidates, k=min(len(candidates), self.rng.randint(1, 3)))
        for p in victims:
            if action == "worker_kill":
                p.kill()
            elif action == "worker_term":
                p.terminate()
            else:
                p.send_signal(signal.SIGSTOP)
                self.stopped[p.pid] = time.monotonic() + self.rng.uniform(3.5, 6)   # past the 3 s lease

    def active(self) -> bool:
        try:
            batches = self.client.request("BatchList")["batches"]
        except RunqUnavailable:
            return True
        return any(b["state"] == "active" for b in batches)

    def run(self, seconds: float, batch_runs: int):
        self.start_runq()
        for _ in range(self.n_workers):
            self.start_worker()
        deadline = time.monotonic() + seconds
        self.submit(batch_runs)
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(0.5, 2.5))
            self.supervise()
            self.strike()
            self.supervise()
            if not self.active():
                self.submit(batch_runs)
        self.log(f"chaos over after {seconds:.0f}s: {self.events}; letting the batches finish")
        for pid in list(self.stopped):
            os.kill(pid, signal.SIGCONT)
        self.stopped.clear()

        def settled():
            self.supervise()
            return not self.active()
        self.wait(settled, 180, "batches to finish after the chaos")

    def tally(self) -> dict:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        ids = ",".join(str(b) for b in self.batches) or "0"
        runs, counted = db.execute(f"SELECT COALESCE(SUM(n_runs),0), COALESCE(SUM(n_finished),0) FROM batches "
                                   f"WHERE id IN ({ids})").fetchone()
        finished = db.execute(f"SELECT COUNT(*) FROM runs WHERE state='finished' AND batch_id IN ({ids})").fetchone()[0]
        twice = db.execute(f"SELECT COUNT(*) FROM (SELECT batch_id, batch_index FROM attempts WHERE outcome='finished' "
                           f"AND batch_id IN ({ids}) GROUP BY batch_id, batch_index HAVING COUNT(*) > 1)").fetchone()[0]
        attempts = db.execute(f"SELECT outcome, COUNT(*) FROM attempts WHERE batch_id IN ({ids}) "
                              f"GROUP BY outcome ORDER BY outcome").fetchall()
        db.close()
        return {"batches": len(self.batches), "runs": runs, "finished": finished,
                "duplicates": twice + abs(counted - finished), "lost": runs - finished,
                "attempts": dict(attempts), "events": self.events}

    def close(self):
        for pid in list(self.stopped):
            os.kill(pid, signal.SIGCONT)
        stop_all(self.workers + [self.runq])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", help="directory for the database and logs (default: a temporary one)")
    args = parser.parse_args(argv)
    tmp = args.keep or tempfile.mkdtemp(prefix="simx-chaos-")
    print(f"chaos: {args.seconds:.0f}s, {args.workers} workers, batches of {args.batch_runs}, seed {args.seed}, "
          f"files in {tmp}", flush=True)
    chaos = Chaos(tmp, args.workers, args.seed, log=lambda s: print(s, flush=True))
    try:
        chaos.run(args.seconds, args.batch_runs)
        t = chaos.tally()
    finally:
        chaos.close()
    print(f"tally: batches {t['batches']}  runs {t['runs']}  finished {t['finished']}  "
          f"duplicates {t['duplicates']}  lost {t['lost']}")
    print(f"attempt outcomes: {t['attempts']}")
    print(f"chaos events: {t['events']}")
    return 0 if t["duplicates"] == 0 and t["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
