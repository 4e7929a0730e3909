"""Password guessing cannot lock a user out, through real runq and runweb processes: clients on
many loopback addresses (127.0.0.0/8 is all this machine's), the limits of runq.logins
(the ceiling shortened for the test), and the counts across a runq restart."""
from __future__ import annotations

import base64
import http.client
import sqlite3

import procs
from runweb import auth, users

LOGINS = {"pair": 10, "address": 30, "user": 40, "window": 600}


def _basic(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def status_from(address: str, port: int, name: str, password: str) -> int:
    """GET /batch as `name` from the loopback `address`: the HTTP status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    try:
        conn.request("GET", "/batch", headers={"Accept": "application/json", **_basic(name, password)})
        return conn.getresponse().status
    finally:
        conn.close()


def _counts_written(db) -> bool:
    with sqlite3.connect(db) as c:
        return any("ann" in str(row) for row in c.execute("SELECT * FROM logins"))


def test_guessing_from_many_addresses_locks_nobody_out_below_the_ceiling_and_a_restart_keeps_the_counts(tmp_path):
    cheap = {"n": 16, "r": 1, "p": 1}   # the hash's own cost: many checks in a test
    users_file = tmp_path / "users.yaml"
    users.write_users(users_file, {"ann": {"password": auth.hash_password("ann-pw", **cheap), "admin": False},
                                   "bob": {"password": auth.hash_password("bob-pw", **cheap), "admin": False}})
    conf = {"runq": {"logins": LOGINS}}
    runq = procs.start_runq(tmp_path, conf=conf)
    web = None
    try:
        port = procs.free_port()
        env = procs.base_env(tmp_path, runq.port, RUNWEB_PORT=port, RUNWEB_USERS=users_file)
        web = procs.start_runweb(tmp_path, runq.port, port=port, env=env, workers=1)
        # 11 wrong passwords from 11 addresses (more than one address's limit for a name)
        assert [status_from(f"127.0.0.{i}", port, "ann", "guess") for i in range(2, 13)] == [401] * 11
        assert status_from("127.0.0.13", port, "ann", "ann-pw") == 200   # a twelfth address gets in
        # far more than the ceiling, from many addresses: then even a fresh address waits
        answers = [status_from(f"127.0.1.{i}", port, "ann", "guess") for i in range(1, 2 * LOGINS["user"])]
        assert answers[0] == 401 and answers[-1] == 429, answers
        assert status_from("127.0.2.1", port, "ann", "ann-pw") == 429
        assert status_from("127.0.2.1", port, "bob", "bob-pw") == 200    # another name is untouched
        # the counts are written (in batches, at most about once a second), then runq restarts
        procs.wait_until(lambda: _counts_written(tmp_path / "runq.sqlite"), 10, what="login counts stored")
        runq.stop()
        runq = procs.start_runq(tmp_path, port=runq.port, conf=conf)
        procs.wait_until(lambda: status_from("127.0.2.2", port, "bob", "bob-pw") == 200, 20,
                         what="runweb through the restarted runq")
        assert status_from("127.0.2.2", port, "ann", "ann-pw") == 429    # the same count after the restart
    finally:
        if web is not None:
            web.stop()
        runq.stop()
