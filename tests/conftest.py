"""pytest fixtures shared by the suite, built on tests/procs.py (real processes on loopback)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for path in (str(ROOT), str(ROOT / "tests")):  # runq/runweb/worker and procs, installed or not
    if path not in sys.path:
        sys.path.insert(0, path)

import procs  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session; `postgres.new_database()` gives a URL."""
    import pg
    cluster = pg.Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def stack(tmp_path):
    """runq + runweb on free loopback ports in tmp_path; `stack.worker(**traits)` adds workers.

    Attributes: tmp, runq (Proc), runweb (Proc), runq_port, url (runweb base URL),
    client (RunqClient), env (the processes' environment), workers (list of Proc).
    Everything started here is stopped when the test ends, pass or fail.
    """
    from simx.client import RunqClient

    started: list[procs.Proc] = []
    try:
        runq = procs.start_runq(tmp_path)
        started.append(runq)
        runweb = procs.start_runweb(tmp_path, runq.port)
        started.append(runweb)
        s = types.SimpleNamespace(
            tmp=tmp_path, runq=runq, runweb=runweb, runq_port=runq.port, url=runweb.url,
            client=RunqClient("127.0.0.1", runq.port), env=procs.base_env(tmp_path, runq.port), workers=[],
        )

        def worker(engine="dummy", **traits):
            proc = procs.start_worker(tmp_path, runq.port, engine=engine, **traits)
            started.append(proc)
            s.workers.append(proc)
            return proc

        s.worker = worker
        yield s
    finally:
        for proc in reversed(started):  # workers first, then runweb, then runq
            proc.stop()
