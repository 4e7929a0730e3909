"""Who is talking, tried as an attacker would, against real runq and worker processes on loopback:
hijack by reconnect, forged reports, wrong-role secrets, overflow ids, runaway traits, dropped
assignments, a database reset while workers run, protected mode."""
from __future__ import annotations

import signal
import subprocess

import pytest

import procs
from procs import PYTHON, base_env, free_port, make_secrets, secret_of, start_runq, start_worker, wait_until
from simx import protocol
from simx.client import Link, RunqClient, RunqRefused, handshake

TRAITS = dict(host="attacker", pid=1, group="", user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0)
FAST = ("--retry-delay-max", "0.3")


def connect(port, role="worker", secret=None) -> tuple[Link, dict]:
    link = Link.connect("127.0.0.1", port, timeout=10)
    return link, handshake(link, role, secret)


def register(port, secret=None, **traits) -> tuple[Link, dict]:
    link, _ = connect(port, "worker", secret)
    link.send(protocol.message("WorkerReady", **{**TRAITS, **traits}))
    accept = link.recv()
    assert accept["type"] == "RunqAcceptWorker", accept
    return link, accept


def closed(link: Link) -> bool:
    try:
        while True:
            link.recv()
    except Exception:
        return True


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One runq with a worker and a client secret, shared by the tests that only talk to it."""
    tmp = tmp_path_factory.mktemp("secured")
    port = free_port()
    env = base_env(tmp, port, RUNQ_HEARTBEAT="0.5", **make_secrets(tmp))
    runq = start_runq(tmp, port=port, env=env)
    runq.env, runq.tmp = env, tmp
    runq.client = RunqClient(port=port, timeout=10, secret=secret_of(env))
    try:
        yield runq
    finally:
        runq.client.close()
        runq.stop()


def test_hijack_by_reconnect_and_forged_report_are_refused(secured):
    port, env, client = secured.port, secured.env, secured.client
    real = start_worker(secured.tmp, port, env=env, name="real")
    try:
        batch = client.request("StartBatch", name="victim", engine="dummy", n_runs=1,
                               param={"step_count": 30, "step_delay": 0.05})["batch_id"]
        run = wait_until(lambda: (r := client.request("RunStatus", batch_id=batch, batch_index=0)["run"])
                         ["state"] == "running" and r, 20, what="the run to start")
        wid, attempt = run["worker_id"], run["attempt"]          # public, through the API
        # The attacker even holds the worker secret: it still cannot prove worker wid's key.
        thief, _ = connect(port, "worker", secret_of(env, "worker"))
        thief.send(protocol.message("WorkerReconnect", worker_id=wid, proof="0" * 64, batch_id=batch,
                                    batch_index=0, attempt=attempt, **TRAITS))
        accept = thief.recv()
        assert accept["worker_id"] != wid and accept["keep_run"] is False
        assert thief.recv()["type"] == "RunqAbortRun"
        thief.send(protocol.message("WorkerFinishedRun", worker_id=wid, batch_id=batch, batch_index=0,
                                    attempt=attempt, data="forged"))
        error = thief.recv()
        assert error["type"] == "RunqError" and error["code"] == 403 and closed(thief)
        done = wait_until(lambda: (r := client.request("RunStatus", batch_id=batch, batch_index=0)["run"])
                          ["state"] == "finished" and r, 20, what="the real worker to finish")
        assert done["result"] == f"dummy run 0 of batch {batch}: 30 steps"
        assert [(a["worker_id"], a["outcome"]) for a in done["attempts"]] == [(wid, "finished")]
        assert "abort" not in real.log().lower()
        assert "not recognized: wrong proof of identity" in secured.log()
    finally:
        real.stop()


def test_requests_need_the_client_secret_and_worker_messages_the_worker_secret(secured):
    port, env = secured.port, secured.env
    worker_secret, client_secret = secret_of(env, "worker"), secret_of(env, "client")
    for secret in (None, b"9" * 64, worker_secret):
        with pytest.raises(RunqRefused):
            RunqClient(port=port, timeout=5, secret=secret).request("StartBatch", engine="dummy", n_runs=1)
    good = RunqClient(port=port, timeout=5, secret=client_secret)
    assert good.request("Ping")["status"] == "ok" and good.request("Ping")["status"] == "ok"  # kept connection
    good.close()
    link, _ = connect(port, "client", client_secret)                  # the client secret, a worker message
    link.send(protocol.message("WorkerReady", **TRAITS))
    assert link.recv()["code"] == 403
    link.close()
    with pytest.raises(RunqRefused, match="no worker secret with key id"):
        connect(port, "worker", client_secret)                        # the client secret as a worker
    link, _ = connect(port, "worker", worker_secret)                  # a worker asking for client things
    link.send(protocol.message("DrainWorker", worker_id=1))
    assert link.recv()["code"] == 403 and closed(link)
    old = Link.connect("127.0.0.1", port)                             # another protocol version
    old.send({"type": "Hello", "version": 1, "role": "client", "nonce": "00" * 32, "compression": "none"})
    error = old.recv()
    assert error["code"] == 426 and "version 1" in error["message"] and "version 2" in error["message"]
    assert closed(old)
    for path in (env["SIMX_WORKER_SECRET_FILE"], env["SIMX_CLIENT_SECRET_FILE"]):
        assert open(path).read().strip() not in secured.log()         # secrets are never logged


def test_runweb_reaches_a_secured_runq_with_the_client_secret(secured):
    runweb = procs.start_runweb(secured.tmp, secured.port, env={**secured.env, "RUNWEB_PORT": str(free_port())})
    try:
        status, _, body = procs.http("GET", f"{runweb.url}/health")
        assert status == 200, body
    finally:
        runweb.stop()


def test_runaway_traits_are_refused_and_bounds_are_pinned_per_secret(tmp_path, secured):
    runaway = start_worker(secured.tmp, secured.port, env=secured.env, name="runaway", cost=-1e308)
    lab_secret = tmp_path / "lab.secret"
    from simx import auth
    auth.write_secret(lab_secret)
    port = free_port()
    conf = tmp_path / "simx.yaml"
    conf.write_text(f"runq:\n  worker_secrets:\n    - {{name: lab, file: {lab_secret}, engines: [dummy], "
                    f"group: lab, cost: [0, 10]}}\n")
    env = base_env(tmp_path, port)
    runq = procs.Proc("runq-lab", [PYTHON, "-m", "runq", "--conf", str(conf)], env, tmp_path / "runq-lab.log")
    lab = ("--secret-file", str(lab_secret))
    workers = []
    try:
        wait_until(lambda: procs.ping(port)["status"] == "ok", 15, what="runq with per-secret bounds")
        workers = [start_worker(tmp_path, port, env=env, name=name, args=lab, group=group, cost=cost)
                   for name, group, cost in (("dear", "lab", 50), ("elsewhere", "ops", 5), ("fine", "lab", 5))]
        # refused by the worker's own message check (protocol bounds) before it reaches runq
        assert runaway.wait(20) == 2 and "'cost' must be from -1e+06 to 1e+06" in runaway.log()
        assert workers[0].wait(20) == 2 and "cost 50 is outside [0, 10]" in workers[0].log()
        assert workers[1].wait(20) == 2 and "group 'ops' is not allowed" in workers[1].log()
        wait_until(lambda: [w["group"] for w in procs.workers_connected(port)] == ["lab"], 20,
                   what="the worker within its bounds")
    finally:
        for proc in (runaway, *workers, runq):
            proc.stop()


def test_reconnect_with_the_largest_id_gets_a_fresh_one_that_survives_a_restart(tmp_path):
    port = free_port()
    env = base_env(tmp_path, port)
    runq = start_runq(tmp_path, port=port, env=env)
    client = RunqClient(port=port)      # its kept connection outlives runq: replaced, not reused
    try:
        link, _ = connect(port)
        link.send(protocol.message("WorkerReconnect", worker_id=2 ** 63 - 1, proof=None, **TRAITS))
        assert link.recv()["worker_id"] == 1
        link.close()
        assert client.request("Ping")["status"] == "ok"
    finally:
        assert runq.stop() == 0
    runq = start_runq(tmp_path, port=port, env=env, name="runq-again")
    try:
        link, accept = register(port)
        assert accept["worker_id"] == 2
        assert sorted(w["id"] for w in client.request("WorkerList")["workers"]) == [1, 2]
        link.close()
    finally:
        client.close()
        assert runq.stop() == 0


def test_a_dropped_assignment_is_taken_back_and_finished_elsewhere(tmp_path):
    port = free_port()
    env = base_env(tmp_path, port, RUNQ_HEARTBEAT="0.5", RUNQ_LEASE="600")   # not the lease
    runq = start_runq(tmp_path, port=port, env=env)
    client = RunqClient(port=port)
    fake, accept = register(port, cost=5.0)                  # costs more: the real worker is preferred
    real = None
    try:
        client.request("StartBatch", name="drop", engine="dummy", n_runs=1, param={"step_count": 1})
        assignment = fake.recv()
        assert assignment["type"] == "RunqAssignRun"          # ...and dropped on the floor
        real = start_worker(tmp_path, port, env=env, name="real")
        wait_until(lambda: len(procs.workers_connected(port)) == 2, 20, what="the real worker")
        fake.send(protocol.message("WorkerHeartbeat", worker_id=accept["worker_id"], seq=assignment["seq"], runs=[]))
        run = wait_until(lambda: (r := client.request("RunStatus", batch_id=1, batch_index=0)["run"])
                         ["state"] == "finished" and r, 20, what="the run to finish elsewhere")
        outcomes = [(a["worker_id"], a["outcome"]) for a in run["attempts"]]
        assert outcomes[0] == (accept["worker_id"], "lost") and outcomes[-1][1] == "finished"
        assert outcomes[-1][0] != accept["worker_id"]
        assert "does not hold run" in runq.log()
    finally:
        fake.close()
        client.close()
        for proc in (real, runq):
            if proc is not None:
                proc.stop()


def test_database_reset_while_workers_run(tmp_path):
    """Both workers finish a run of the old database while runq is down: their reports name runs
    (1/0#1, 1/1#1) that the new database gives out again, to the very workers that hold them."""
    port = free_port()
    env = base_env(tmp_path, port, **make_secrets(tmp_path))
    runq = start_runq(tmp_path, port=port, env=env)
    summary = ("--summary-interval", "0.2")   # the INFO line counting the runs ended, soon after they end
    workers = [start_worker(tmp_path, port, env=env, name=f"w{i}", args=FAST + summary) for i in range(2)]
    client = RunqClient(port=port, secret=secret_of(env))
    try:
        client.request("StartBatch", name="old", engine="dummy", n_runs=2, param={"step_count": 10,
                                                                                    "step_delay": 0.1})
        running = wait_until(lambda: (s := client.request("BatchStatus", batch_id=1))["batch"]["n_running"] == 2
                             and s, 20, what="both workers running a run of the old database")
        pids = {w["id"]: w["pid"] for w in procs.workers_connected(port, env)}
        holder = pids[next(r["worker_id"] for r in running["runs"] if r["batch_index"] == 0)]
        client.close()
        assert runq.stop() == 0
        wait_until(lambda: all("engine dummy: 1 finished" in w.log() for w in workers), 20,
                   what="the old runs to end")
        workers.sort(key=lambda w: w.pid != holder)   # the holder of 1/0#1 first
        for w in workers:
            w.signal(signal.SIGSTOP)
        for path in tmp_path.glob("runq.sqlite*"):
            path.unlink()                                     # the documented reset
        runq = start_runq(tmp_path, port=port, env=env, name="runq-reset")
        batch = client.request("StartBatch", name="new", engine="dummy", n_runs=2, param={"step_count": 2})
        assert batch["batch_id"] == 1                          # the same ids as the old batch's
        for n, w in enumerate(workers, 1):
            w.signal(signal.SIGCONT)
            wait_until(lambda: len(procs.workers_connected(port, env)) == n, 20, what=f"worker {n} back")
        wait_until(lambda: sorted(w["id"] for w in procs.workers_connected(port, env)) == [1, 2], 20,
                   what="both workers registered afresh as 1 and 2")
        status = wait_until(lambda: (s := client.request("BatchStatus", batch_id=1))["batch"]["state"] == "done"
                            and s, 30, what="the new batch to complete")
        # nothing of the old database leaks in: no old result, no old report counted against a new run
        assert [(r["attempt"], r["result"][-7:]) for r in status["runs"]] == [(1, "2 steps")] * 2
        more = client.request("StartBatch", name="more", engine="dummy", n_runs=4, param={"step_count": 1})
        wait_until(lambda: client.request("BatchStatus", batch_id=more["batch_id"])["batch"]["state"] == "done",
                   30, what="another batch to complete")
        for w in workers:
            assert "new instance" in w.log() and w.alive()
    finally:
        client.close()
        for w in workers:
            w.signal(signal.SIGCONT)
        for proc in (*workers, runq):
            proc.stop()


def test_protected_mode_and_the_old_token_are_clear_errors(tmp_path):
    port = free_port()
    for extra, says in (({"RUNQ_LISTEN": "0.0.0.0"}, "fab runq.secrets"),
                        ({"SIMX_WORKER_TOKEN": "s3cret"}, "SIMX_WORKER_SECRET_FILE")):
        done = subprocess.run([PYTHON, "-m", "runq"], env=base_env(tmp_path, port, **extra), capture_output=True,
                              text=True, timeout=30, cwd=procs.ROOT)
        assert done.returncode == 2 and says in done.stderr, done.stderr


def test_another_local_account_is_not_trusted_by_runweb_on_loopback(stack):
    """Loopback trust is for runweb's own Unix user: `nobody` on the same host (setpriv) gets 401
    without a password where the operator's own curl is admin (the README's flow)."""
    url = f"{stack.url}/worker"
    as_nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s",
                                "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True,
                               timeout=30)
    assert as_nobody.stdout == "401", (as_nobody.stdout, as_nobody.stderr)
    drain = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s",
                            "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"{stack.url}/worker/1/drain"],
                           capture_output=True, text=True, timeout=30)
    assert drain.stdout == "401"
    own = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True,
                         text=True, timeout=30)
    assert own.stdout == "200"


def test_runq_warns_at_start_when_other_local_accounts_could_use_it(tmp_path):
    runq = procs.start_runq(tmp_path)
    try:
        procs.wait_until(lambda: "any account on this host can connect as a client or worker" in runq.log(), 10,
                         what="the warning")
    finally:
        runq.stop()
    port = procs.free_port()
    env = procs.base_env(tmp_path, port, **procs.make_secrets(tmp_path))
    runq = procs.start_runq(tmp_path, port=port, env=env, name="runq-secret")   # both secrets: no warning
    try:
        procs.wait_until(lambda: "listening on" in runq.log(), 10, what="runq up")
        assert "any account on this host" not in runq.log()
    finally:
        runq.stop()
