"""Faults of the database are states, not crashes (real runq and runweb processes): another
process's exclusive lock, an empty or corrupt database file, a full disk."""
import re
import sqlite3
import subprocess
import sys
import threading
import time

import procs
from procs import PYTHON, base_env, client, free_port, start_runq, wait_until
from simx import protocol
from runq.committer import Committer
from runq.store import StoreFault
from runweb.app import ROUTES


def test_another_process_holding_an_exclusive_lock_is_a_state_runq_answers_through(tmp_path):
    runq = start_runq(tmp_path)
    try:
        db = sqlite3.connect(tmp_path / "runq.sqlite", isolation_level=None, timeout=5)
        db.execute("BEGIN EXCLUSIVE")     # as a sqlite3 shell or a backup tool would
        held_at = time.monotonic()
        first = {}

        def submit():   # runq takes it in memory, cannot commit it, so answers it only later
            c = client(runq.port, timeout=30)
            try:
                first["reply"] = c.request("StartBatch", name="during", group="", user="", engine="dummy",
                                           n_runs=2, param={})
                first["at"] = time.monotonic()
            finally:
                c.close()
        t = threading.Thread(target=submit)
        t.start()
        wait_until(lambda: procs.ping(runq.port)["runq"]["store"].startswith("locked"), 10, what="the lock noticed")
        c = client(runq.port, timeout=5)
        try:
            for _ in range(3):                # Ping is answered quickly all along (it needs no commit)
                started = time.monotonic()
                assert c.request("Ping")["status"] == "ok"
                assert time.monotonic() - started < 2.0
                time.sleep(0.3)
            refused = c.request("StartBatch", name="refused", group="", user="", engine="dummy", n_runs=1,
                                param={})
            assert (refused["status"], refused["code"]) == ("error", 503), refused
            assert "another process holds a lock" in refused["message"]
            assert "reply" not in first, "a batch was acknowledged that was not committed"
            time.sleep(max(0.0, 11.0 - (time.monotonic() - held_at)))   # longer than the old 10 s that ended runq
            db.execute("ROLLBACK")
            db.close()
            t.join(15)
            assert first["reply"]["message"] == "batch started", first
            wait_until(lambda: procs.ping(runq.port)["runq"]["store"] == "ok", 10, what="the store ok again")
            after = c.request("StartBatch", name="after", group="", user="", engine="dummy", n_runs=1, param={})
            assert after["message"] == "batch started"
            names = [b["name"] for b in c.request("BatchList")["batches"]]
            assert names == ["during", "after"]
        finally:
            c.close()
        assert runq.alive(), "runq ended"
        log = runq.log()
        assert "cannot commit: another process holds a lock" in log and "takes commits again" in log
    finally:
        runq.stop()


class _LockedStore:
    def __init__(self):
        self.fails = True

    def pending(self):
        return True

    def commit(self):
        if self.fails:
            raise StoreFault("locked", "database is locked")

    def take_purged(self):
        return []


class _Core:
    def __init__(self):
        self.faults = []

    def store_fault(self, fault):
        self.faults.append(fault)

    def committed(self, seconds, purged):
        pass


def test_a_lock_held_past_the_limit_ends_runq_with_the_reason():
    import pytest
    from runq.committer import LockedTooLong
    now = [0.0]
    store, core = _LockedStore(), _Core()
    committer = Committer(store, core, lambda: now[0], lock_limit=5.0, stderr=sys.stderr)
    assert committer.commit() is False and core.faults[-1].kind == "locked"
    now[0] = 0.5
    assert committer.commit() is False           # not retried before RETRY_EVERY
    now[0] = 4.0
    assert committer.commit() is False
    now[0] = 6.0
    with pytest.raises(LockedTooLong, match="locked by another process for 6 s"):
        committer.commit()
    store.fails = False                          # (a lock that went in time: carries on)
    committer2 = Committer(store, core, lambda: now[0], lock_limit=5.0)
    assert committer2.commit() is True


def test_an_empty_or_corrupt_database_file_is_refused_naming_it(tmp_path):
    port = free_port()
    for content, says in ((b"", "is empty"), (b"this is not a database at all" * 100, "is not a usable database")):
        path = tmp_path / "runq.sqlite"
        path.write_bytes(content)
        done = subprocess.run([PYTHON, "-m", "runq"], env=base_env(tmp_path, port), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and str(path) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert path.read_bytes() == content, "the file was changed"
    protocol.VERSION  # noqa: B018  (the module imports what the suite shares)


def test_a_full_disk_under_the_database_is_a_state_and_nothing_acknowledged_is_lost(tmp_path):
    """The database on a small tmpfs that fills: runq keeps answering Ping and reads, refuses new
    work with 507 naming the disk, acknowledges nothing it could not commit, and carries on by
    itself when space is freed."""
    import os
    with procs.small_disk(tmp_path / "disk") as disk:
        port = free_port()
        env = base_env(tmp_path, port, SIMX_DB_URL=f"sqlite:///{disk / 'runq.sqlite'}")
        runq = start_runq(tmp_path, port=port, env=env)
        try:
            c = client(port, timeout=30)
            assert c.request("StartBatch", name="before", group="", user="", engine="dummy", n_runs=1,
                             param={})["message"] == "batch started"
            filler = procs.fill_disk(disk)
            replies = {}

            def submit():
                other = client(port, timeout=30)
                try:
                    replies["during"] = other.request("StartBatch", name="during", group="", user="", engine="dummy",
                                                      n_runs=1, param={"pad": "x" * 200_000})
                finally:
                    other.close()
            t = threading.Thread(target=submit)
            t.start()
            wait_until(lambda: procs.ping(port, env=env)["runq"]["store"].startswith("full"), 15, what="the full disk")
            started = time.monotonic()
            assert c.request("Ping")["status"] == "ok" and time.monotonic() - started < 2.0
            assert [b["name"] for b in c.request("BatchList")["batches"]] == ["before"]   # reads go on
            refused = c.request("StartBatch", name="refused", group="", user="", engine="dummy", n_runs=1, param={})
            assert (refused["status"], refused["code"]) == ("error", 507) and "disk is full" in refused["message"]
            assert "during" not in replies
            os.unlink(filler)                # space returns: runq carries on by itself
            t.join(20)
            assert replies["during"]["message"] == "batch started"
            wait_until(lambda: procs.ping(port, env=env)["runq"]["store"] == "ok", 10, what="the store ok again")
            assert [b["name"] for b in c.request("BatchList")["batches"]] == ["before", "during"]
            c.close()
            assert runq.alive()
        finally:
            runq.stop()


def _booted(runweb) -> list[str]:
    """The pids gunicorn has started workers with, from its log."""
    return re.findall(r"Booting worker with pid: (\d+)", runweb.log())


def _every_route_and_method():
    """(method, path) of every route with its parameters filled, under every method: a new
    (method, route, status) label set for runweb's request metrics each."""
    for path, _, _, _ in ROUTES:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            yield method, re.sub(r"\{[a-z_]+\}", "1", path)


def _answer(runweb, method: str, path: str, body=None):
    """(status, headers, body) of one request as JSON; no answer at all fails, with runweb's log."""
    try:
        return procs.http(method, runweb.url + path, body, headers={"Accept": "application/json"}, timeout=30)
    except OSError as exc:
        raise AssertionError(f"runweb gave no answer to {method} {path} ({exc}); {runweb.describe()}") from None


def test_a_full_disk_under_runweb_and_runq_is_answered_with_reasons(tmp_path):
    """SIMX_VAR, the database and even runweb's request-metrics files (XDG_RUNTIME_DIR) on one
    small tmpfs that fills: runweb's gunicorn workers stay up (none respawned), writes get 507
    naming the full disk, /health says so, reads answer 200, request metrics turn off with a
    warning; once space is freed, writes work again with nothing restarted.  With runq gone,
    every request gets 503 with the reason."""
    import os
    submit = {"engine": "dummy", "n_runs": 1}
    with procs.small_disk(tmp_path / "disk", "20m") as disk:
        (disk / "run").mkdir()
        port, web_port = free_port(), free_port()
        env = base_env(tmp_path, port, SIMX_DB_URL=f"sqlite:///{disk / 'runq.sqlite'}", SIMX_VAR=disk / "var",
                       XDG_RUNTIME_DIR=disk / "run", RUNWEB_PORT=web_port)
        runq = start_runq(tmp_path, port=port, env=env)
        runweb = None
        try:
            runweb = procs.start_runweb(tmp_path, port, port=web_port, env=env, workers=2)
            url = runweb.url
            assert procs.http("POST", f"{url}/batch/new", {"name": "before", **submit})[0] == 201
            # /health answers once one worker serves; the other may still be booting
            booted = procs.wait_until(lambda: b if len(b := _booted(runweb)) == 2 else None, 20,
                                      what="both gunicorn workers booted")
            filler = procs.fill_disk(disk)
            during = {}

            def held():   # runq holds it until it can commit it
                try:
                    during["reply"] = procs.http("POST", f"{url}/batch/new", {"name": "during", **submit,
                                                 "param": {"pad": "x" * 200_000}}, timeout=60)
                except OSError as exc:
                    during["reply"] = ("no answer", exc)
            t = threading.Thread(target=held)
            t.start()

            def health():
                status, _, body = _answer(runweb, "GET", "/health")
                assert status == 200, body
                return body
            wait_until(lambda: health()["runq"]["store"].startswith("full"), 15, what="/health to show the full disk")
            assert "disk is full" in health()["message"], health()
            status, _, body = _answer(runweb, "POST", "/batch/new", {"name": "refused", **submit})
            assert status == 507 and "disk is full" in body["message"], (status, body)
            status, _, body = _answer(runweb, "GET", "/batch")
            assert status == 200 and [b["name"] for b in body["batches"]] == ["before"], body
            for method, path in _every_route_and_method():   # the metrics files must grow: they cannot
                status, _, body = _answer(runweb, method, path)
                assert 200 <= status < 600, (method, path, status)
                if status >= 400 and method != "OPTIONS":
                    assert body["status"] == "error" and body["message"], (method, path, body)
            warnings = re.findall(r"request latency metrics are off in process (\d+)", runweb.log())
            assert warnings and len(set(warnings)) == len(warnings), runweb.log()[-3000:]   # once a process
            assert _booted(runweb) == booted and "was sent" not in runweb.log(), runweb.log()[-3000:]
            assert "reply" not in during, during          # not acknowledged before it is committed
            os.unlink(filler)                # space returns: runq and runweb carry on by themselves
            t.join(30)
            assert during["reply"][0] == 201, during
            wait_until(lambda: health()["runq"]["store"] == "ok", 10, what="/health to show the store ok again")
            assert health()["message"] == "ok"
            assert _answer(runweb, "POST", "/batch/new", {"name": "after", **submit})[0] == 201
            status, _, body = _answer(runweb, "GET", "/batch")
            assert [b["name"] for b in body["batches"]] == ["before", "during", "after"], body
            assert _booted(runweb) == booted and runq.alive()
            runq.stop()                      # runq unreachable: 503 with the reason, on reads and writes
            for method, path, data in (("GET", "/batch", None), ("POST", "/batch/new", {"name": "gone", **submit}),
                                       ("GET", "/health", None)):
                status, headers, body = _answer(runweb, method, path, data)
                assert status == 503 and body["message"].startswith("runq is unavailable: "), (path, status, body)
                assert headers.get("retry-after") == "5"
            assert _booted(runweb) == booted
        finally:
            if runweb is not None:
                runweb.stop()
            runq.stop()
