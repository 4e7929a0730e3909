"""Owners and roles: who sees, controls and submits which batch; failed logins throttled in runq.

runq's side is driven without sockets (tests/test_coordinator.py's Harness); runweb's
through a real gunicorn runweb and runq on loopback, acting as two users with basic auth.
"""
import base64
import sqlite3

import pytest

import procs
from runq.store import SqlStore
from runq.core.throttle import Throttle
from runweb import auth, users
from test_coordinator import MEMORY, Harness

REQUEST = {"name": "t", "engine": "dummy", "n_runs": 2, "param": {"step_count": 0}}

IN_PROCESS = lambda address, port, server=None: True   # noqa: E731  (no sockets here: every client is "ours")


# --- runq ---------------------------------------------------------------------------------

@pytest.fixture
def h(tmp_path):
    return Harness(MEMORY)


def test_a_batch_is_owned_by_its_submitter_and_hidden_from_other_users(h):
    ann = h.request("StartBatch", engine="dummy", n_runs=1, actor="ann", admin=False)
    assert ann["batch"]["owner"] == "ann" and ann["batch"]["user"] == "ann"  # user defaults to the owner
    bid = ann["batch_id"]
    for mtype, extra in [("BatchStatus", {}), ("RunStatus", {"batch_index": 0}), ("CancelBatch", {}),
                         ("CancelRun", {"batch_index": 0})]:
        refused = h.request(mtype, batch_id=bid, actor="bob", admin=False, **extra)
        assert (refused["code"], refused["message"]) == (404, f"no batch {bid}"), mtype
    assert h.request("BatchStatus", batch_id=bid, actor="ann", admin=False)["status"] == "ok"
    assert h.request("BatchStatus", batch_id=bid, actor="root", admin=True)["status"] == "ok"
    assert h.request("BatchStatus", batch_id=bid)["status"] == "ok"  # the client secret's holder: admin
    assert [b["id"] for b in h.request("BatchList", actor="bob", admin=False)["batches"]] == []
    assert [b["id"] for b in h.request("BatchList", actor="ann", admin=False)["batches"]] == [bid]
    assert h.request("UserStatus", user="ann", actor="bob", admin=False)["code"] == 403
    assert [b["id"] for b in h.request("UserStatus", user="ann", actor="root", admin=True)["batches"]] == [bid]


def test_only_admins_submit_as_another_user_or_drain(h):
    refused = h.request("StartBatch", engine="dummy", n_runs=1, user="ann", actor="bob", admin=False)
    assert refused["code"] == 403 and "field 'user'" in refused["message"]
    ok = h.request("StartBatch", engine="dummy", n_runs=1, user="ann", actor="root", admin=True)
    assert (ok["batch"]["owner"], ok["batch"]["user"]) == ("root", "ann")
    trusted = h.request("StartBatch", engine="dummy", n_runs=1, user="topl", actor=None, admin=True)
    assert (trusted["batch"]["owner"], trusted["batch"]["user"]) == ("topl", "topl")
    wid = h.worker("w1")
    assert h.request("DrainWorker", worker_id=wid, actor="bob", admin=False)["code"] == 403
    assert h.request("DrainWorker", worker_id=wid, actor="root", admin=True)["status"] == "ok"


def test_another_users_idempotency_key_is_a_conflict_not_their_batch(h):
    h.request("StartBatch", engine="dummy", n_runs=1, idempotency_key="k", actor="ann", admin=False)
    again = h.request("StartBatch", engine="dummy", n_runs=1, idempotency_key="k", actor="ann", admin=False)
    assert again["created"] is False
    bob = h.request("StartBatch", engine="dummy", n_runs=1, idempotency_key="k", actor="bob", admin=False)
    assert bob["code"] == 409 and "batch" not in bob


def test_cancelling_what_already_ended_changes_nothing_and_says_so(h):
    bid = h.request("StartBatch", engine="dummy", n_runs=2)["batch_id"]
    wid = h.worker("w1")
    h.report("w1", wid, h.assigned("w1")[0])
    run = h.request("CancelRun", batch_id=bid, batch_index=0)
    assert run["status"] == "ok" and run["run"]["state"] == "finished"
    assert run["message"] == f"run 0 of batch {bid} had already ended (finished); nothing was cancelled"
    first = h.request("CancelBatch", batch_id=bid)
    assert first["message"] == "batch cancelled" and first["batch"]["state"] == "cancelled"
    second = h.request("CancelBatch", batch_id=bid)
    assert second["status"] == "ok" and second["batch"]["state"] == "cancelled"
    assert second["message"] == f"batch {bid} had already ended (cancelled); nothing was cancelled"
    assert second["batch"]["n_finished"] == 1 and second["batch"]["n_cancelled"] == 1


def test_login_failures_are_counted_per_address_and_user_and_per_address(h):
    for i in range(30):
        reply = h.request("LoginThrottle", address="10.1.1.1", user=f"u{i}", failed=True)
    assert 0 < reply["retry_after"] <= 60  # the address, after 30 failures for any users
    assert h.request("LoginThrottle", address="10.1.1.2", user="u1", failed=False)["retry_after"] is None
    for _ in range(10):
        reply = h.request("LoginThrottle", address="10.1.1.3", user="ann", failed=True)
    assert reply["retry_after"] > 0         # that address for that user, after 10
    assert h.request("LoginThrottle", address="10.1.1.3", user="bob", failed=False)["retry_after"] is None
    h.now += 61
    assert h.request("LoginThrottle", address="10.1.1.1", user="u1", failed=False)["retry_after"] is None


def test_guessing_from_many_addresses_cannot_lock_a_user_out_below_the_ceiling(h):
    """11 wrong passwords from 11 addresses: the right one from a twelfth still gets in; far more
    than the per-user ceiling from many addresses: refused everywhere, until the window passes."""
    for i in range(11):
        h.request("LoginThrottle", address=f"10.2.0.{i}", user="ann", failed=True)
    assert h.request("LoginThrottle", address="10.2.0.200", user="ann", failed=False)["retry_after"] is None
    for i in range(300):
        h.request("LoginThrottle", address=f"10.3.{i // 250}.{i % 250}", user="ann", failed=True)
    assert h.request("LoginThrottle", address="10.9.9.9", user="ann", failed=False)["retry_after"] > 0
    assert h.request("LoginThrottle", address="10.9.9.9", user="bob", failed=False)["retry_after"] is None


def test_login_counts_survive_a_restart_written_in_batches(h):
    for i in range(10):
        h.request("LoginThrottle", address="10.4.0.1", user="ann", failed=True)
    before = h.request("LoginThrottle", address="10.4.0.1", user="ann", failed=False)["retry_after"]
    assert before > 0
    writes = h.store.commits
    h.tick(1.0)                          # the changed counts are written once, at most each second
    assert h.store.commits == writes + 1
    h.restart()
    after = h.request("LoginThrottle", address="10.4.0.1", user="ann", failed=False)["retry_after"]
    assert after == pytest.approx(before - 1.0, abs=0.01)


def test_throttle_forgets_old_failures_and_bounds_its_memory():
    t = Throttle(pair_limit=3, address_limit=100, user_ceiling=100, window=60, max_keys=6)
    for now in (0, 1, 2):
        t.fail("a", "u", now)
    assert t.retry_after("a", "u", 3) == pytest.approx(57)
    assert t.retry_after("a", "u", 60.5) is None  # the first failure is older than the window
    t.fail("b", "v", 70)
    t.fail("c", "w", 71)
    assert not any(" a" in k for k in t._failures) and len(t._failures) == 6


def test_batches_stored_before_owners_are_owned_by_their_user(tmp_path):
    path = tmp_path / "old.sqlite"
    SqlStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:  # a database of the previous release: no owner column
        db.execute("DROP INDEX batches_owner")
        db.execute("ALTER TABLE batches DROP COLUMN owner")
        db.execute("INSERT INTO batches (id, name, \"group\", user, engine, n_runs, param, state) "
                   "VALUES (1, 'b', '', 'topl', 'dummy', 1, '{}', 'done')")
    store = SqlStore(f"sqlite:///{path}")
    assert store.reader().batch_row(1)["owner"] == "topl"
    store.close()


def test_an_oversized_result_is_refused_with_a_clear_error_on_the_run(h):
    bid = h.request("StartBatch", engine="dummy", n_runs=1, max_attempts=3)["batch_id"]
    wid = h.worker("w1")
    h.report("w1", wid, h.assigned("w1")[0], data={"x": "y" * (1024 * 1024)})
    run = h.request("RunStatus", batch_id=bid, batch_index=0)["run"]
    assert run["state"] == "failed" and run["result"] is None
    assert "over the 1048576-byte limit for a stored result" in run["error"]


# --- runweb, live --------------------------------------------------------------------------

def basic(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


ANN, BOB, BOSS = basic("ann", "ann-pw"), basic("bob", "bob-pw"), basic("boss", "boss-pw")


@pytest.fixture
def web(tmp_path):
    users_file = tmp_path / "users.yaml"
    users.write_users(users_file, {
        "ann": {"password": auth.hash_password("ann-pw"), "admin": False},
        "bob": {"password": auth.hash_password("bob-pw"), "admin": False},
        "boss": {"password": auth.hash_password("boss-pw"), "admin": True},
    })
    runq = procs.start_runq(tmp_path)
    try:
        port = procs.free_port()
        env = procs.base_env(tmp_path, runq.port, RUNWEB_PORT=port, RUNWEB_USERS=users_file)
        web = procs.start_runweb(tmp_path, runq.port, port=port, env=env, workers=1)
        try:
            yield web.url
        finally:
            web.stop()
    finally:
        runq.stop()


def test_two_users_over_http_see_and_control_only_their_own(web):
    status, _, ann = procs.http("POST", f"{web}/batch/new", REQUEST, headers=ANN)
    assert status == 201 and ann["batch"]["owner"] == "ann"
    bid = ann["batch_id"]
    assert procs.http("GET", f"{web}/batch/{bid}", headers=BOB)[0] == 404
    status, _, body = procs.http("POST", f"{web}/batch/{bid}/cancel", headers=BOB)
    assert (status, body["status"], body["message"]) == (404, "error", f"no batch {bid}")
    assert procs.http("POST", f"{web}/batch/{bid}/run/0/cancel", headers=BOB)[0] == 404
    assert procs.http("GET", f"{web}/batch", headers=BOB)[2]["batches"] == []
    assert procs.http("GET", f"{web}/user/ann", headers=BOB)[0] == 403
    status, _, body = procs.http("POST", f"{web}/batch/new", {**REQUEST, "user": "ann"}, headers=BOB)
    assert status == 403 and "only an admin may submit as another user" in body["message"]
    assert procs.http("POST", f"{web}/worker/1/drain", headers=BOB)[0] == 403
    assert procs.http("GET", f"{web}/batch/{bid}", headers=ANN)[0] == 200
    assert [b["id"] for b in procs.http("GET", f"{web}/user/ann", headers=BOSS)[2]["batches"]] == [bid]
    assert procs.http("POST", f"{web}/worker/1/drain", headers=BOSS)[0] == 404  # allowed; no such worker
    # loopback without credentials: admin, and the README example is owned by its user field
    example = (procs.ROOT / "runweb" / "example" / "batch-req.yaml").read_bytes()
    status, _, topl = procs.http("POST", f"{web}/batch/new", example)
    assert status == 201 and topl["batch"]["owner"] == "topl"
    assert {b["id"] for b in procs.http("GET", f"{web}/batch")[2]["batches"]} == {bid, topl["batch_id"]}


def test_password_guessing_gets_429_even_for_the_right_password(web):
    wrong = basic("ann", "guess")
    statuses = [procs.http("GET", f"{web}/batch", headers=wrong)[0] for _ in range(10)]
    assert statuses == [401] * 10
    status, headers, body = procs.http("GET", f"{web}/batch", headers=wrong)
    assert status == 429 and 0 < int(headers["retry-after"]) <= 60
    assert body["status"] == "error" and "too many failed logins" in body["message"]
    assert procs.http("GET", f"{web}/batch", headers=ANN)[0] == 429  # ann from this address is throttled
    assert procs.http("GET", f"{web}/batch", headers=BOB)[0] == 200  # bob is not: the address is under its limit
    assert procs.http("GET", f"{web}/batch")[0] == 200  # loopback without credentials is not a login


# --- runweb, in process (stub runq) ---------------------------------------------------------

def test_behind_a_proxy_loopback_is_not_trusted(tmp_path):
    import falcon.testing
    from simx import config
    from runweb.app import create_app
    from test_runweb_app import StubRunq
    users_file = tmp_path / "users.yaml"
    users.write_users(users_file, {"ann": {"password": auth.hash_password("ann-pw"), "admin": False}})
    for behind_proxy, status in [(False, 200), (True, 401)]:
        cfg = config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path, runweb_behind_proxy=behind_proxy,
                          runweb_users_file=str(users_file))
        runq = StubRunq()
        client = falcon.testing.TestClient(create_app(runq, cfg, own_user=IN_PROCESS), headers={"Host": "localhost"})
        assert client.simulate_get("/batch", remote_addr="127.0.0.1").status_code == status
        assert client.simulate_get("/batch", remote_addr="127.0.0.1", headers=ANN).status_code == 200
        assert runq.who[-1] == ("ann", False)


def test_users_file_keeps_old_lines_and_gains_admins(tmp_path, capsys):
    path = tmp_path / "users.yaml"
    path.write_text(f"ann: {auth.hash_password('pw')}\n")  # the file as the previous release wrote it
    assert auth.read_users(path)["ann"]["admin"] is False
    assert users.main(["--file", str(path), "add", "--admin", "boss"], stdin=__import__("io").StringIO("pw2\n")) == 0
    assert users.main(["--file", str(path), "role", "ann", "admin"]) == 0
    assert users.main(["--file", str(path), "role", "boss", "user"]) == 0
    found = auth.Users(path)
    assert found.is_admin("ann") and not found.is_admin("boss") and found.check("boss", "pw2")
    capsys.readouterr()
    assert users.main(["--file", str(path), "list"]) == 0
    assert capsys.readouterr().out == "ann (admin)\nboss\n"
    assert "boss: scrypt$" in path.read_text()  # a plain user is still written the old way


def test_a_page_of_runs_ends_early_when_results_are_large(h):
    bid = h.request("StartBatch", engine="dummy", n_runs=3)["batch_id"]
    wid = h.worker("w1")
    for i in range(3):  # each report frees the worker for the next run
        h.report("w1", wid, h.assigned("w1")[i], data={"blob": "z" * 600_000})
    first = h.request("BatchStatus", batch_id=bid)
    assert [r["state"] for r in first["runs"]] == ["finished"] and first["next_offset"] == 1
    seen, offset = [], 0
    while offset is not None:
        page = h.request("BatchStatus", batch_id=bid, offset=offset, limit=1000)
        seen += [r["batch_index"] for r in page["runs"]]
        offset = page["next_offset"]
    assert seen == [0, 1, 2]
