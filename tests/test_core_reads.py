"""A P1-sized run (10,000 zero-step runs through 16 workers) makes no store read on runq's loop:
every SELECT the writer's database connections execute is counted, from the first message on."""
import sqlalchemy as sa

from simx import auth, protocol
from simx.config import RunqConfig
from runq import startup
from runq.store import SqlStore

RUNS, WORKERS = 10_000, 16


def test_a_p1_sized_run_makes_zero_store_reads_on_the_loop(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'p1.sqlite'}")
    coord = startup.coordinator(store, RunqConfig(), now=100.0)   # start-up reads happen here, before the loop
    statements = []

    @sa.event.listens_for(store.engine, "connect")
    def _trace(dbapi_conn, _record):
        dbapi_conn.set_trace_callback(statements.append)
    store.engine.dispose()   # every connection from now on is traced
    now = 100.0

    def turn(conn, mtype, **fields):
        out = coord.handle(conn, protocol.message(mtype, **fields), now)
        store.commit()
        return out

    def opened(conn, role):
        coord.connected(conn, "127.0.0.1", now)
        turn(conn, "Hello", version=protocol.VERSION, role=role, nonce=auth.new_nonce())
        turn(conn, "Auth", proof=None)

    opened("client", "client")
    held = {}
    for i in range(WORKERS):
        conn = f"w{i}"
        opened(conn, "worker")
        out = turn(conn, "WorkerReady", host="h", pid=i, group="", user="", engine="dummy", cost=1.0, speed=1.0,
                   priority=0.0)
        held[conn] = [out[0][1]["worker_id"], None]
    out = turn("client", "StartBatch", name="p1", group="", user="", engine="dummy", n_runs=RUNS, param={})
    assert out[-1][1]["message"] == "batch started"
    pending = list(out)
    finished = 0
    while pending:
        assignments = [(c, m) for c, m in pending if m is not None and m["type"] == "RunqAssignRun"]
        pending = []
        for conn, a in assignments:
            wid = held[conn][0]
            now += 0.0001
            pending += coord.handle(conn, protocol.message(
                "WorkerFinishedRun", worker_id=wid, batch_id=a["batch_id"], batch_index=a["batch_index"],
                attempt=a["attempt"], data=None), now)
            finished += 1
        store.commit()
    assert finished == RUNS
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    assert writes, "the trace sees the loop's statements"
    assert selects == [], selects[:5]
    assert store.reader().batch_row(1)["n_finished"] == RUNS
