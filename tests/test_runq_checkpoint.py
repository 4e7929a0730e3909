"""WAL checkpoints off the loop (runq/checkpoint.py): the writer's own automatic checkpoint is
only a backstop, and the thread copies what commits wrote into the database file."""
import sqlite3

from procs import wait_until
from runq.checkpoint import BACKSTOP_PAGES, Checkpointer
from runq.store import SqlStore


def _batch(i):
    return {"id": i, "name": f"b{i}", "group": "", "user": "u", "engine": "dummy", "n_runs": 1, "param": {},
            "state": "active", "next_index": 0, "n_waiting": 1, "n_running": 0, "n_finished": 0,
            "n_failed": 0, "n_cancelled": 0, "start_time": 1.0, "priority": 0, "owner": "u"}


def test_commits_leave_checkpoints_to_the_thread(tmp_path):
    path = tmp_path / "s.sqlite"
    store = SqlStore(f"sqlite:///{path}")
    cp = Checkpointer.start_for(store, every=0.01)
    try:
        with store.engine.connect() as conn:   # the writer's connections checkpoint only past the backstop
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
        for i in range(1, 51):
            store.add_batch(_batch(i))
            store.commit()
        wait_until(lambda: cp.covered == store.commits == 50, 10,
                   what="a complete checkpoint begun after the last commit")
        assert cp.last[1] > 0 and cp.last[1] == cp.last[2]
        cp.close()
        # what the thread copied is in the database file itself, without the WAL
        (tmp_path / "copy.sqlite").write_bytes(path.read_bytes())
        n = sqlite3.connect(tmp_path / "copy.sqlite").execute("SELECT count(*) FROM batches").fetchone()[0]
        assert n == 50
    finally:
        cp.close()
        store.close()


def test_no_thread_for_a_database_that_is_not_an_sqlite_file():
    assert Checkpointer.start_for(SqlStore("sqlite://")) is None


def test_no_checkpoint_while_nothing_is_committed(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    cp = Checkpointer.start_for(store, every=0.005)
    try:
        store.add_batch(_batch(1))
        store.commit()
        wait_until(lambda: cp.covered == store.commits, 10, what="the commit checkpointed")
        idle, wakes = cp.done, cp.wakes
        wait_until(lambda: cp.wakes >= wakes + 20, 10, what="twenty idle periods")
        assert cp.done == idle          # an idle writer: the thread wakes, the database is not touched
        store.add_batch(_batch(2))
        store.commit()
        wait_until(lambda: cp.done > idle and cp.covered == store.commits, 10,
                   what="a checkpoint after the next commit")
    finally:
        cp.close()
        store.close()
