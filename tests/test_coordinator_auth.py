"""Who is talking, in the coordinator without sockets: roles, proofs of identity, fresh ids,
instance identity, assignment sequence numbers.  Real SQLite store, as in production."""
from __future__ import annotations

import pytest

from simx import auth, protocol
from simx.config import BatchDefaults
from runq import startup
from runq.store import SqlStore
from test_coordinator import MEMORY, CFG, Harness, start

WSECRET, CSECRET = b"1f" * 32, b"2e" * 32


@pytest.fixture
def h(tmp_path):
    harness = Harness(MEMORY)
    yield harness
    harness.close()


def traits(**over):
    return {"host": "h", "pid": 1, "group": "", "user": "", "engine": "dummy", "cost": 1.0, "speed": 1.0,
            "priority": 0.0, **over}


def test_nothing_is_served_before_authentication(h):
    h.coord.connected("c", "127.0.0.1", h.now)
    out = h.send("c", "Ping")
    assert out[0][1]["code"] == 426 and "Hello" in out[0][1]["message"] and out[1] == ("c", None)
    h.coord.connected("w", "127.0.0.1", h.now)
    out = h.send("w", "WorkerReady", **traits())
    assert out[0][1]["type"] == "RunqError" and out[0][1]["code"] == 426 and out[1] == ("w", None)
    assert h.coord.role_of("c") is None and h.coord.role_of("w") is None


def test_each_role_sends_only_its_own_messages(h):
    h.open("c", "client")
    assert h.coord.role_of("c") == "client"
    out = h.send("c", "WorkerReady", **traits())
    assert out[0][1]["code"] == 403 and "not allowed on a client connection" in out[0][1]["message"]
    wid = h.worker("w")
    assert h.coord.role_of("w") == "worker"
    out = h.send("w", "DrainWorker", worker_id=wid)
    assert out[0][1]["type"] == "RunqError" and out[0][1]["code"] == 403 and out[1] == ("w", None)


def test_with_secrets_the_wrong_role_secret_is_refused(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    secrets = auth.Secrets(workers=(auth.WorkerSecret("default", WSECRET),), client=CSECRET)
    coord = startup.coordinator(store, CFG, BatchDefaults(), now=1000.0, secrets=secrets)
    for role, secret, ok in [("client", WSECRET, False), ("client", None, False), ("worker", CSECRET, False),
                             ("client", CSECRET, True), ("worker", WSECRET, True)]:
        conn = f"{role}-{secret}"
        coord.connected(conn, "127.0.0.1", 1000.0)
        nonce = auth.new_nonce()
        kid = auth.key_id(secret) if role == "worker" and secret == WSECRET else None
        (_, challenge), = coord.handle(conn, protocol.message("Hello", version=2, role=role, nonce=nonce,
                                                              key_id=kid), 1000.0)
        proof = auth.peer_proof(secret, role, challenge["nonce"], nonce) if secret else None
        out = coord.handle(conn, protocol.message("Auth", proof=proof), 1000.0)
        if ok:
            assert out == [] and coord.role_of(conn) == role
        else:
            assert out[0][1]["code"] == 401 and out[1] == (conn, None) and coord.role_of(conn) is None
            assert coord.handle(conn, protocol.message("Ping"), 1000.0) == []   # refused: ignored until closed
    store.db.close()


def test_reconnect_without_the_key_is_a_new_worker_and_the_run_stays_with_its_owner(h):
    wid = h.worker("real")
    start(h, 1)
    run = h.assigned("real")[-1]
    accept = h.reconnect("thief", wid, run, proof="0" * 64)   # worker_id and attempt are public
    assert accept["worker_id"] != wid and accept["keep_run"] is False
    assert [m["type"] for m in h.to("thief")][-1] == "RunqAbortRun"
    out = h.report("thief", wid, run, data="forged")           # a report for the real worker: refused
    assert out[0][1]["code"] == 403 and out[1] == ("thief", None)
    assert h.batch()["batch"]["n_finished"] == 0
    h.report("real", wid, run, data="genuine")
    assert h.request("RunStatus", batch_id=1, batch_index=0)["run"]["result"] == "genuine"


def test_client_chosen_worker_ids_are_never_used(h):
    h.worker("w")
    accept = h.reconnect("x", 2 ** 63 - 1, proof="0" * 64)
    assert accept["worker_id"] == 2
    h.restart()
    assert h.worker("y") == 3


def test_a_worker_proves_itself_across_a_runq_restart(h):
    wid = h.worker("w")
    start(h, 1)
    run = h.assigned("w")[-1]
    h._run(h.coord.disconnected("w", h.now))
    h.restart()
    assert h.reconnect("w2", wid, run)["keep_run"] is True
    h.report("w2", wid, run)
    assert h.batch()["batch"]["n_finished"] == 1


def test_a_row_without_a_key_registers_as_new(h):
    wid = h.worker("w")
    h._run(h.coord.disconnected("w", h.now))
    h.coord.workers[wid].key = None       # as a row written before protocol v2 is loaded
    assert h.reconnect("w2", wid)["worker_id"] == wid + 1


def test_a_new_database_is_a_new_instance(tmp_path):
    first = Harness(MEMORY)
    instance = first.open("c", "client")["instance"]
    first.restart()
    assert first.open("c", "client")["instance"] == instance
    second = Harness(MEMORY)
    assert second.open("c", "client")["instance"] != instance
    first.close()
    second.close()


def test_runaway_traits_are_refused(h):
    h.open("w")
    with pytest.raises(protocol.ProtocolError, match="'cost' must be from -1e\\+06 to 1e\\+06"):
        h.send("w", "WorkerReady", **traits(cost=-1e308))   # the frame check refuses it before the core


def test_a_dropped_assignment_is_taken_back_but_one_in_flight_is_not(h):
    wid = h.worker("w")
    start(h, 1)
    run = h.assigned("w")[-1]
    assert run["seq"] == 1
    h.send("w", "WorkerHeartbeat", worker_id=wid, seq=0, runs=[])     # sent before the assignment arrived
    assert h.batch()["batch"]["n_running"] == 1
    h.send("w", "WorkerHeartbeat", worker_id=wid, seq=1, runs=[])     # saw it, does not hold it: lost
    attempts = h.request("RunStatus", batch_id=1, batch_index=0)["run"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["lost"]
    again = h.assigned("w")[-1]                                        # it is idle, so it gets the run again
    assert (again["attempt"], again["seq"]) == (2, 2)
    h.heartbeat("w", wid, again)
    h.report("w", wid, again)
    assert h.batch()["batch"]["n_finished"] == 1


def test_heartbeat_runs_are_validated(h):
    wid = h.worker("w")
    out = h.send("w", "WorkerHeartbeat", worker_id=wid, seq=0, runs=[[1, 2]])
    assert out[0][1]["code"] == 400 and out[1] == ("w", None)


def test_a_database_from_before_protocol_v2_is_migrated(tmp_path):
    """Old workers rows gain `key` (NULL: such workers re-register) and `assign_seq`; a meta table
    with the instance appears."""
    import sqlite3
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute('CREATE TABLE workers (id BIGINT PRIMARY KEY, host TEXT, ipaddr TEXT, pid BIGINT, "group" TEXT, '
                   '"user" TEXT, engine TEXT, cost FLOAT, speed FLOAT, priority FLOAT, state TEXT, batch_id BIGINT, '
                   'batch_index BIGINT, started FLOAT, last_contact FLOAT, draining BIGINT)')
        db.execute("INSERT INTO workers VALUES (4, 'h', '127.0.0.1', 1, '', '', 'dummy', 1, 1, 0, 'idle', NULL, NULL, "
                   "1.0, 1.0, 0)")
    h = Harness(f"sqlite:///{path}")
    try:
        worker = h.coord.workers[4]
        assert (worker.key, worker.assign_seq) == (None, 0)
        assert h.reconnect("w", 4, proof="0" * 64)["worker_id"] == 5
        assert h.store.instance() == h.coord.instance
    finally:
        h.close()


def test_a_plain_user_sees_other_users_work_on_workers_as_busy_without_ids():
    h = Harness(MEMORY)
    w1, w2 = h.worker("w1"), h.worker("w2")
    h.request("StartBatch", name="a", group="", user="", engine="dummy", n_runs=1, param={}, actor="ann")
    h.request("StartBatch", name="b", group="", user="", engine="dummy", n_runs=1, param={}, actor="bob")
    seen = {w["id"]: w for w in h.request("WorkerList", actor="ann", admin=False)["workers"]}
    assert (seen[w1]["state"], seen[w1]["batch_id"], seen[w1]["batch_index"]) == ("busy", 1, 0)   # ann's own
    assert (seen[w2]["state"], seen[w2]["batch_id"], seen[w2]["batch_index"]) == ("busy", None, None)
    assert h.request("WorkerStatus", worker_id=w2, actor="ann", admin=False)["worker"]["batch_id"] is None
    admin = {w["id"]: w for w in h.request("WorkerList")["workers"]}
    assert admin[w2]["batch_id"] == 2
