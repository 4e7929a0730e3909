"""The store contract: the same writes by intent and the same reads on MemoryStore, SQLite and
PostgreSQL give the same rows, so the in-memory twin the core tests use cannot drift from SQL."""
import pytest

from runq.store import MemoryStore, SqlStore


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqlStore(f"sqlite:///{tmp_path / 'contract.sqlite'}")
    else:
        s = SqlStore(request.getfixturevalue("postgres").new_database())
    yield s
    if isinstance(s, SqlStore):
        s.db.close()


def batch(id, **fields):
    row = dict(id=id, name=f"b{id}", description="", group="", user="ann", owner="ann", engine="dummy", n_runs=5,
               param={"x": [1, 2.5, "é"], "nested": {"a": None}}, max_attempts=3, max_requeues=2, time_limit=None,
               idempotency_key=None, start_time=100.0, priority=0, sweep=None, state="active", next_index=0,
               n_waiting=5, n_running=0, n_finished=0, n_failed=0, n_cancelled=0, end_time=None)
    row.update(fields)
    return row


def run(b, i, **fields):
    row = dict(batch_id=b, batch_index=i, state="running", attempt=1, failures=0, requeues=0, worker_id=7,
               host="h", progress=0.0, message=None, result=None, error=None, traceback=None, started=110.0,
               ended=None, retry_at=None)
    row.update(fields)
    return row


def worker(id, **fields):
    row = dict(id=id, host="h", ipaddr="10.0.0.7", pid=42, group="", user="", engine="dummy", cost=1.0,
               speed=1.0, priority=0.0, state="idle", batch_id=None, batch_index=None, started=90.0,
               last_contact=95.0, draining=0, key="k" * 64, assign_seq=0, broken=None)
    row.update(fields)
    return row


def reads(store):
    return store.reader()


def test_nothing_is_read_before_commit_and_all_of_it_after(store):
    store.add_batch(batch(1, idempotency_key="key-1"))
    store.register_worker(worker(7))
    assert store.pending()
    assert reads(store).batch_row(1) is None and reads(store).worker_rows() == []
    store.commit()
    assert not store.pending()
    row = reads(store).batch_row(1)
    assert row == {**batch(1, idempotency_key="key-1"), "version": 1}
    assert reads(store).batch_by_key("key-1")["id"] == 1 and reads(store).batch_by_key("nope") is None
    assert reads(store).worker_rows() == [worker(7)]


def test_run_writes_by_intent_write_what_changed(store):
    store.add_batch(batch(1))
    store.register_worker(worker(7))
    store.assign_run(run(1, 0, state="assigned", started=None), True)
    store.commit()
    store.start_run(1, 0, 120.0)
    store.save_progress(1, 0, 0.25, "a quarter")
    store.update_worker({"id": 7, "state": "busy", "batch_id": 1, "batch_index": 0, "assign_seq": 1})
    store.update_batch({"id": 1, "n_waiting": 4, "n_running": 1, "next_index": 1})
    store.commit()
    r = reads(store)
    assert r.run_row(1, 0) == run(1, 0, started=120.0, progress=0.25, message="a quarter")
    assert r.worker_rows(worker_id=7) == [worker(7, state="busy", batch_id=1, batch_index=0, assign_seq=1)]
    b = r.batch_row(1)
    assert (b["n_waiting"], b["n_running"], b["next_index"], b["version"]) == (4, 1, 1, 2)
    # the attempt ends: its row, then the run's move; the run's whole row
    store.end_attempt(dict(batch_id=1, batch_index=0, attempt=1, worker_id=7, host="h", started=120.0,
                           ended=130.0, outcome="finished", message=None))
    store.save_run(run(1, 0, state="finished", started=120.0, ended=130.0, progress=1.0, result={"y": [1, 2]}))
    store.save_contact(7, 131.0)
    store.commit()
    assert r.run_row(1, 0)["result"] == {"y": [1, 2]}
    assert r.attempt_rows(1, 0) == [dict(batch_id=1, batch_index=0, attempt=1, worker_id=7, host="h",
                                         started=120.0, ended=130.0, outcome="finished", message=None)]
    assert r.worker_rows(worker_id=7)[0]["last_contact"] == 131.0
    assert r.recent_attempts(10) == [dict(batch_id=1, batch_index=0, attempt=1, worker_id=7, outcome="finished")]


def test_listings_filters_and_pages_agree(store):
    for i in range(1, 6):
        store.add_batch(batch(i, user="ann" if i % 2 else "bob", owner="ann" if i < 4 else "cy",
                              state="active" if i < 3 else "done", idempotency_key=f"k{i}" if i != 2 else None))
    for i in range(1, 4):
        store.register_worker(worker(i))
    store.commit()
    r = reads(store)
    ids = lambda rows: [row["id"] for row in rows]   # noqa: E731
    assert ids(r.batch_rows()) == [1, 2, 3, 4, 5]
    assert ids(r.batch_rows(user="ann")) == [1, 3, 5]
    assert ids(r.batch_rows(owner="cy")) == [4, 5]
    assert ids(r.batch_rows(states=("active",))) == [1, 2]
    assert ids(r.batch_rows(offset=1, limit=2)) == [2, 3]
    assert ids(r.worker_rows(offset=1, limit=5)) == [2, 3]
    assert r.max_ids() == (5, 3)
    assert r.batch_keys() == {"k1": (1, "ann"), "k3": (3, "ann"), "k4": (4, "cy"), "k5": (5, "cy")}


def test_runs_by_state_results_and_pages_agree(store):
    store.add_batch(batch(1, n_runs=10))
    store.register_worker(worker(7))
    states = ["finished", "failed", "waiting", "running", "finished", "cancelled", "assigned"]
    for i, state in enumerate(states):
        store.assign_run(run(1, i, state=state, result={"i": i} if state == "finished" else None,
                             error="boom" if state == "failed" else None), True)
    store.commit()
    r = reads(store)
    assert [x["batch_index"] for x in r.run_rows(1, 2, 5)] == [2, 3, 4]
    rows, _digest, workers = r.run_page(1, 0, 3)
    assert [x["batch_index"] for x in rows()] == [0, 1, 2] and workers == {7}
    assert [x["batch_index"] for x in r.runs_in_state(1, "finished")] == [0, 4]
    assert [x["batch_index"] for x in r.runs_in_state(1, "finished", lo=1, offset=0, limit=5)] == [4]
    assert r.count_runs_in_state(1, "finished") == 2 and r.count_runs_in_state(1, "finished", hi=3) == 1
    assert r.run_indexes_not_in(1, "finished", 3) == [3, 5, 6]
    results = r.result_rows(1, ("finished", "failed"), -1, 10)
    assert [(x["batch_index"], x["state"], x["result"], x["error"]) for x in results] == [
        (0, "finished", {"i": 0}, None), (1, "failed", None, "boom"), (4, "finished", {"i": 4}, None)]
    assert all(x["size"] > 0 for x in results)
    assert [x["batch_index"] for x in r.active_run_rows([1])] == [2, 3, 5, 6]
    assert r.worker_addresses([7, 8]) == {7: "10.0.0.7", 8: None}


def test_a_never_dispatched_run_cancelled_alone_and_ended_totals(store):
    store.add_batch(batch(1, n_runs=3))
    store.add_batch(batch(2, state="done", n_finished=3, n_waiting=0, end_time=150.0))
    store.add_batch(batch(3, state="failed", n_finished=1, n_failed=2, n_waiting=0, end_time=160.0))
    store.cancel_unstarted(run(1, 2, state="cancelled", attempt=0, worker_id=None, host="", started=None,
                               ended=140.0))
    store.commit()
    r = reads(store)
    assert r.run_row(1, 2)["state"] == "cancelled"
    assert r.ended_batch_totals() == {"done": {"batches": 1, "finished": 3, "failed": 0, "cancelled": 0},
                                      "failed": {"batches": 1, "finished": 1, "failed": 2, "cancelled": 0}}


def test_purge_with_the_commit_removes_ended_batches_and_gone_workers(store):
    store.add_batch(batch(1, state="done", n_waiting=0, n_finished=5, end_time=100.0))
    store.add_batch(batch(2, state="done", n_waiting=0, n_finished=5, end_time=300.0))
    store.add_batch(batch(3))
    store.assign_run(run(1, 0, state="finished"), True)
    store.end_attempt(dict(batch_id=1, batch_index=0, attempt=1, worker_id=7, host="h", started=1.0, ended=2.0,
                           outcome="finished", message=None))
    store.register_worker(worker(7, state="gone", last_contact=50.0))
    store.register_worker(worker(8, state="gone", last_contact=500.0))
    store.register_worker(worker(9, state="disconnected", last_contact=50.0, batch_id=3, batch_index=0))
    store.commit()
    store.purge(200.0)
    assert store.pending()
    store.commit()
    assert store.take_purged() == [1] and store.take_purged() == []
    r = reads(store)
    assert [b["id"] for b in r.batch_rows()] == [2, 3]
    assert r.run_row(1, 0) is None and r.attempt_rows(1, 0) == []
    assert [w["id"] for w in r.worker_rows()] == [8, 9]


def test_the_instance_is_made_once_and_kept(store):
    first = store.instance()
    assert first and store.instance() == first


def test_usage_history_sums_worker_seconds_per_owner_and_slot(store):
    store.add_batch(batch(1, owner="ann"))
    store.add_batch(batch(2, owner="", user="bob"))   # rows from before owners: their user
    for i, (b, started, ended) in enumerate([(1, 0.0, 100.0), (1, 50.0, 130.0), (2, 10.0, 40.0), (1, 300.0, 410.0),
                                             (2, 5.0, 6.0)]):
        store.end_attempt(dict(batch_id=b, batch_index=i, attempt=1, worker_id=7, host="h", started=started,
                               ended=ended, outcome="finished", message=None))
    store.end_attempt(dict(batch_id=1, batch_index=9, attempt=1, worker_id=7, host="h", started=None,
                           ended=120.0, outcome="revoked", message=None))   # never started: no usage
    store.commit()
    got = sorted(reads(store).usage_history(since=20.0, width=100.0))
    assert got == [("ann", 100.0, 180.0, 2), ("ann", 400.0, 110.0, 1), ("bob", 0.0, 30.0, 1)]
