"""Sweeps in batches: stored once on the batch, each run's param computed at dispatch from its index
(runq/sweep.py), shown in the run views; databases from before the `sweep` column keep working."""
import sqlite3

import pytest

from simx import protocol
from runq.store import SqlStore
from test_coordinator import MEMORY, Harness, start

SPEC = {"sweep": {"mode": ["a", "b"], "deep.gain": [1, 2, 3]}, "zip": {"seed": [7, 8], "tag": ["x", "y"]}}
BASE = {"step_count": 0, "deep": {"keep": True}, "seed": 0}


def expected(i):
    """Run i of SPEC: mode slowest, then deep.gain, then the zip fastest (2 x 3 x 2 = 12 runs)."""
    mode, rest = divmod(i, 6)
    gain, pair = divmod(rest, 2)
    return {"step_count": 0, "deep": {"keep": True, "gain": [1, 2, 3][gain]}, "seed": [7, 8][pair],
            "mode": ["a", "b"][mode], "tag": ["x", "y"][pair]}


@pytest.fixture
def h(tmp_path):
    harness = Harness(MEMORY)
    yield harness
    harness.close()


def test_a_sweep_makes_its_runs_and_each_run_gets_its_values_at_dispatch(h):
    reply = h.request("StartBatch", engine="dummy", param=BASE, **SPEC)
    assert reply["status"] == "ok", reply
    batch = reply["batch"]
    assert batch["n_runs"] == 12 and batch["param"] == BASE and batch["sweep"] == SPEC
    # O(1) submit: one batch row, no run rows
    assert h.store.reader().run_rows(batch["id"], 0, 12) == []
    h.worker("w")
    params = []
    for _ in range(12):
        assign = h.assigned("w")[-1]
        params.append(assign["param"])
        h.report("w", 1, assign)
    assert params == [expected(i) for i in range(12)]
    view = h.batch(batch["id"])
    assert [r["param"] for r in view["runs"]] == params
    assert h.request("RunStatus", batch_id=batch["id"], batch_index=5)["run"]["param"] == expected(5)
    page = h.request("BatchStatus", batch_id=batch["id"], state="finished", offset=10, limit=5)
    assert [r["param"] for r in page["runs"]] == [expected(10), expected(11)]


def test_waiting_runs_of_a_sweep_show_their_param_and_n_runs_given_must_match(h):
    bid = h.request("StartBatch", engine="dummy", param=BASE, n_runs=12, **SPEC)["batch_id"]
    runs = h.request("BatchStatus", batch_id=bid, state="waiting", offset=3, limit=2)["runs"]
    assert [(r["batch_index"], r["param"]) for r in runs] == [(3, expected(3)), (4, expected(4))]
    reply = h.request("StartBatch", engine="dummy", param=BASE, n_runs=11, **SPEC)
    assert reply["code"] == 400 and "n_runs: 11 given, but the sweep makes 12 runs" in reply["message"]


def test_a_batch_without_a_sweep_gives_every_run_the_batch_param(h):
    bid = start(h, n_runs=2, param={"step_count": 1})
    assert h.batch(bid)["batch"]["sweep"] is None
    assert [r["param"] for r in h.batch(bid)["runs"]] == [{"step_count": 1}] * 2


def test_the_sweep_survives_a_restart_and_requeued_runs_get_the_same_values(h):
    bid = h.request("StartBatch", engine="dummy", param=BASE, **SPEC)["batch_id"]
    h.worker("w")
    first = h.assigned("w")[-1]
    h.report("w", 1, first, "WorkerFailedRun")   # retried: the same index, the same param
    h.tick(2)                                    # after the backoff, to the next idle worker
    h.worker("wb")
    again = h.assigned("wb")[-1]
    assert (again["batch_index"], again["param"]) == (0, expected(0))
    h.restart()
    h.worker("w2")
    assert h.assigned("w2")[-1]["param"] == expected(h.assigned("w2")[-1]["batch_index"])
    assert h.batch(bid)["batch"]["sweep"] == SPEC


def test_a_database_from_before_sweeps_keeps_working(tmp_path):
    """Old rows have no `sweep` column: it is added, NULL, and means no sweep."""
    path = tmp_path / "old.sqlite"
    SqlStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:    # the batches table as older versions made it
        db.execute("ALTER TABLE batches DROP COLUMN sweep")
        db.execute("INSERT INTO batches (id, name, \"group\", user, engine, n_runs, param, max_attempts, "
                   "max_requeues, state, next_index, n_waiting, n_running, n_finished, n_failed, n_cancelled, "
                   "start_time) VALUES (1, 'old', '', 'u', 'dummy', 2, '{\"step_count\": 0}', 3, 10, 'active', "
                   "0, 2, 0, 0, 0, 0, 1000.0)")
        assert "sweep" not in [c[1] for c in db.execute("PRAGMA table_info(batches)")]
    h = Harness(f"sqlite:///{path}")
    try:
        view = h.batch(1)
        assert view["batch"]["sweep"] is None
        assert [r["param"] for r in view["runs"]] == [{"step_count": 0}] * 2
        h.worker("w")
        assert h.assigned("w")[-1]["param"] == {"step_count": 0}
        assert protocol.check(h.assigned("w")[-1])
    finally:
        h.close()
