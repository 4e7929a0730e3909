"""A batch's change counter (issue 10): every commit that writes a batch's row or one of its
runs adds 1 to the batch's `version`; reads never commit and never change it; databases from
before the column get 0."""
from simx import protocol
from runq.store import SqlStore
from test_coordinator import MEMORY, Harness

BATCH = {"name": "", "group": "", "user": "", "engine": "dummy", "n_runs": 3, "param": {},
         "max_attempts": 1, "max_requeues": 1, "state": "active", "n_waiting": 3, "start_time": 0.0}
RUN = {"state": "running", "attempt": 1, "failures": 0, "requeues": 0, "worker_id": 1, "host": "h",
       "progress": 0.0, "message": None, "result": None, "error": None, "traceback": None,
       "started": 1.0, "ended": None}


def version(store, batch_id):
    return store.reader().batch_row(batch_id)["version"]


def test_a_commit_that_writes_a_run_bumps_its_batch_only(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'v.sqlite'}")
    store.add_batch({"id": 1, **BATCH})
    store.add_batch({"id": 2, **BATCH})
    store.commit()
    assert (version(store, 1), version(store, 2)) == (1, 1)
    # several runs of batch 1 and its row in one commit: one bump, batch 2 untouched
    for i in range(3):
        store.assign_run({"batch_id": 1, "batch_index": i, **RUN}, True)
    store.update_batch({"id": 1, "n_running": 3, "n_waiting": 0})
    store.commit()
    assert (version(store, 1), version(store, 2)) == (2, 1)
    store.save_run({"batch_id": 1, "batch_index": 0, "state": "finished", "ended": 2.0})   # a run alone
    store.commit()
    assert (version(store, 1), version(store, 2)) == (3, 1)
    store.register_worker({"id": 7, "host": "h", "state": "idle"})   # not a batch's change
    store.commit()
    assert (version(store, 1), version(store, 2)) == (3, 1)


def test_reads_never_commit_nor_bump(tmp_path):
    h = Harness(MEMORY)
    bid = h.request("StartBatch", name="a", engine="dummy", n_runs=5, param={})["batch_id"]
    before, commits = version(h.store, bid), h.store.commits
    for mtype, fields in (("BatchStatus", {"batch_id": bid}), ("BatchList", {}),
                          ("RunStatus", {"batch_id": bid, "batch_index": 0})):
        out = h.coord.handle("client", protocol.message(mtype, **fields), h.now)
        assert not out and len(out.reads) == 1, f"{mtype} is the reader's"
        assert not h.store.pending(), f"{mtype} buffered a write"
        assert h.read(out.reads[0][1])["status"] == "ok"
    h.store.commit()
    assert h.store.commits == commits and version(h.store, bid) == before


def test_an_old_database_without_the_version_column_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    store = SqlStore(url)
    store.add_batch({"id": 1, **BATCH})
    store.commit()
    with store.engine.begin() as conn:    # the table as an older runq left it
        conn.exec_driver_sql("ALTER TABLE batches DROP COLUMN version")
    store.db.close()
    store = SqlStore(url)                    # the column is added, old rows get 0, commits count on
    assert store.reader().batch_row(1)["version"] == 0
    store.update_batch({"id": 1, "n_running": 1})
    store.commit()
    assert store.reader().batch_row(1)["version"] == 1
    store.db.close()
    h = Harness(url)                      # and runq recovers the batch
    assert 1 in h.coord.batches
    h.close()


def test_the_reader_reads_a_batch_row_as_sqlalchemy_does(tmp_path):
    """The read-only store's kept-connection path for one batch row gives the same dict, and sees
    each new commit at once (no transaction held open between reads)."""
    store = SqlStore(f"sqlite:///{tmp_path / 'f.sqlite'}")
    store.add_batch({"id": 1, **BATCH, "param": {"a": [1, "é"]}, "time_limit": 5.0, "sweep": {"sweep": {"x": [1, 2]}}})
    store.commit()
    reader = store.reader()
    fast = reader.batch_row(1)
    assert reader._fast, "the kept-connection path was not taken"
    assert fast == store.reader().batch_row(1) and fast["param"] == {"a": [1, "é"]} and fast["version"] == 1
    store.update_batch({"id": 1, "n_running": 2})
    store.commit()
    assert reader.batch_row(1)["version"] == 2 and reader.batch_row(1)["n_running"] == 2
    assert reader.batch_row(99) is None
    reader.close()


def test_a_page_whose_runs_did_not_change_is_not_modified_though_its_batch_changed(tmp_path):
    """BatchStatus if_page: the page's tag covers its runs and their workers' addresses, so a
    dashboard's first page of a running batch is not sent again every turn, and a worker that
    reconnects from elsewhere shows at once."""
    from runq.queries import Facts, Queries
    store = SqlStore(f"sqlite:///{tmp_path / 'p.sqlite'}")
    store.add_batch({"id": 1, **BATCH, "next_index": 3})
    for i in range(3):
        store.assign_run({"batch_id": 1, "batch_index": i, **RUN}, True)
    store.register_worker({"id": 1, "host": "h", "ipaddr": "10.0.0.1", "state": "busy"})
    store.commit()
    q = Queries(store.reader(), Facts())

    def ask(**fields):
        return q.handle(protocol.message("BatchStatus", batch_id=1, offset=0, limit=1, **fields), 5.0)
    first = ask(if_page="")
    assert first["runs"][0]["address"] == "10.0.0.1" and first["page"] and first["version"] == 1
    same = ask(if_page=first["page"])                                     # nothing changed
    assert same["not_modified"] and "runs" not in same and same["batch"]["state"] == "active"
    store.save_run({"batch_id": 1, "batch_index": 2, "progress": 0.5})   # another page's run
    store.commit()
    same = ask(if_page=first["page"])
    assert same["not_modified"] and same["version"] == 2 and same["page"] == first["page"]
    store.save_run({"batch_id": 1, "batch_index": 0, "progress": 0.5})   # this page's run
    store.commit()
    changed = ask(if_page=first["page"])
    assert "not_modified" not in changed and changed["runs"][0]["progress"] == 0.5
    assert changed["page"] != first["page"] and changed["version"] == 3
    assert ask(if_page=changed["page"])["not_modified"]
    store.update_worker({"id": 1, "ipaddr": "10.0.0.2"})                  # its worker's address: no batch change
    store.commit()
    moved = ask(if_page=changed["page"])
    assert "not_modified" not in moved and moved["runs"][0]["address"] == "10.0.0.2"
    plain = q.handle(protocol.message("BatchStatus", batch_id=1, offset=0, limit=1), 5.0)
    assert "version" not in plain and "page" not in plain   # only for askers that know about them
    state = q.handle(protocol.message("BatchStatus", batch_id=1, state="running", if_page=moved["page"]), 5.0)
    assert "not_modified" not in state and "page" not in state   # ?state= pages: always in full


def test_dispatch_past_a_page_does_not_change_it_but_reaching_into_it_does(tmp_path):
    from runq.queries import Facts, Queries
    store = SqlStore(f"sqlite:///{tmp_path / 'd.sqlite'}")
    store.add_batch({"id": 1, **BATCH, "n_runs": 10, "next_index": 2})
    for i in range(2):
        store.assign_run({"batch_id": 1, "batch_index": i, **RUN}, True)
    store.commit()
    q = Queries(store.reader(), Facts())

    def ask(limit, tag):
        return q.handle(protocol.message("BatchStatus", batch_id=1, offset=0, limit=limit, if_page=tag), 5.0)
    two, three = ask(2, ""), ask(3, "")
    assert [r["state"] for r in three["runs"]] == ["running", "running", "waiting"]
    store.assign_run({"batch_id": 1, "batch_index": 2, **RUN}, True)   # run 2 dispatched
    store.update_batch({"id": 1, "next_index": 3})
    store.commit()
    assert ask(2, two["page"])["not_modified"]                 # runs 0-1: as they were
    again = ask(3, three["page"])                               # run 2 was implicit, now stored
    assert "not_modified" not in again and again["runs"][2]["state"] == "running"
    store.update_batch({"id": 1, "state": "cancelled"})           # the implicit runs of a cancelled batch
    store.commit()
    four = ask(4, "")
    store.update_batch({"id": 1, "state": "active"})
    store.commit()
    assert "not_modified" not in ask(4, four["page"])
