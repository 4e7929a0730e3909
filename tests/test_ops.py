"""Operations as a user runs them: fab tasks driving a real supervisord with the real programs.

Each test gets its own run-time directory (SIMX_VAR, under a short /tmp path
because of the AF_UNIX socket length limit) and free loopback ports, so its
supervisord never meets another one; supervisord is shut down in `finally`.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

import procs
from procs import ROOT, base_env, free_port, http, ping, wait_until, workers_connected, Proc
from simx import config as simx_config
from simx.client import RunqUnavailable
from ops.control import Supervisor, read_pid
from simx.process import alive
from ops.paths import Paths

FAB = [sys.executable, "-m", "fabric"]  # the venv's `fab`
WORKERS = ["worker-dummy:worker-dummy_00", "worker-dummy:worker-dummy_01", "worker-dummy:worker-dummy_02"]


@pytest.fixture
def ops():
    """A private run-time dir and ports; `ops.fab(...)` runs a task; supervisord is shut down after."""
    tmp = Path(tempfile.mkdtemp(prefix="simx-ops-"))
    runq_port, runweb_port = free_port(), free_port()
    env = base_env(tmp, runq_port, RUNWEB_PORT=runweb_port)
    var = Path(env["SIMX_VAR"])
    sup = Supervisor(Paths(var))

    def fab(*args, env_extra=None, timeout=120):
        run_env = dict(env, **(env_extra or {}))
        return subprocess.run(FAB + list(args), cwd=ROOT, env=run_env, capture_output=True, text=True,
                              timeout=timeout)

    def states():
        return {name: info["statename"] for name, info in sup.processes().items()}

    try:
        yield types.SimpleNamespace(tmp=tmp, var=var, env=env, runq_port=runq_port, runweb_port=runweb_port,
                                    url=f"http://127.0.0.1:{runweb_port}", sup=sup, fab=fab, states=states)
    finally:
        _shutdown(sup, tmp / "var" / "demo")
        _shutdown(sup, None)
        shutil.rmtree(tmp, ignore_errors=True)


def _shutdown(sup: Supervisor, demo_var: Path | None) -> None:
    """Stop a supervisord left by a test (normal shutdown, else KILL its process group)."""
    procs.shutdown_supervisord(demo_var or sup.paths.var)


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def failed(result) -> str:
    assert result.returncode != 0, f"expected a failure\n{result.stdout}\n{result.stderr}"
    return result.stdout


# ------------------------------------------------------------------ task list

def test_fab_list_shows_every_task_with_a_description(ops):
    out = ok(ops.fab("--list"))
    tasks = ["demo", "shutdown", "runq.run", "runq.start", "runq.stop", "runq.restart", "runq.status",
             "runweb.run", "runweb.start", "runweb.stop", "runweb.restart", "runweb.status", "runweb.adduser",
             "local.start", "local.stop", "local.restart", "local.status", "local.drain",
             "all.start", "all.stop", "all.status"]
    for name in tasks:
        assert re.search(rf"^  {re.escape(name)}(\s+\(\w+\))?\s+\w", out, re.M), f"{name} not listed:\n{out}"
    assert "local.start (local)" in out and "all.deploy (all)" in out  # `fab local`, `fab all`


# ------------------------------------------------------------------ runq, runweb under supervisord

def test_runq_start_status_stop(ops):
    out = ok(ops.fab("runq.start"))
    assert re.search(r"^runq\s+RUNNING", out, re.M), out
    assert f"runq answers on 127.0.0.1:{ops.runq_port}" in out, out
    assert ping(ops.runq_port, env=ops.env)["status"] == "ok"    # start returned once runq answers, not at RUNNING
    assert re.search(r"^runq\s+RUNNING", ok(ops.fab("runq.status")), re.M)
    # the generated config works with plain supervisorctl too
    ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(ops.sup.paths.conf),
                          "status", "runq"], capture_output=True, text=True, timeout=30)
    assert re.search(r"^runq\s+RUNNING", ctl.stdout, re.M), ctl.stdout + ctl.stderr

    ok(ops.fab("runq.stop"))
    assert re.search(r"^runq\s+STOPPED", failed(ops.fab("runq.status")), re.M)
    assert _refused(ops.runq_port, ops.env)


def test_start_applies_changed_settings_to_a_running_program(ops):
    ok(ops.fab("runq.start"))
    other = free_port()
    out = ok(ops.fab("runq.start", env_extra={"RUNQ_PORT": str(other)}))
    assert "changed" in out, out
    # supervisor calls runq RUNNING after startsecs (1 s); binding its port can take longer on a
    # loaded machine (imports, recovery), so the new port is awaited like the old one's closing
    wait_until(lambda: not _refused(other, ops.env), 10, what="runq to answer on its new port")
    assert ping(other, env=ops.env)["status"] == "ok"
    wait_until(lambda: _refused(ops.runq_port, ops.env), 10, what="the old port to close")


def _refused(port: int, env: dict) -> bool:
    try:
        ping(port, env=env)
    except (RunqUnavailable, OSError):
        return True
    return False


def test_status_without_supervisord_fails_and_names_every_program(ops):
    out = failed(ops.fab("all.status"))
    for name in ["runq", "runweb"] + [w.split(":")[1] for w in WORKERS]:
        assert re.search(rf"^{name}\s+STOPPED", out, re.M), out
    assert not ops.sup.running()  # status never starts supervisord


# ------------------------------------------------------------------ local worker pools

def test_local_starts_three_workers_that_register_with_runq(ops):
    ok(ops.fab("runq.start"))
    out = ok(ops.fab("local"))
    for name in WORKERS:
        assert re.search(rf"^{name.split(':')[1]}\s+RUNNING", out, re.M), out
    assert "up after" in out and "3 worker(s)" in out, out
    assert len(workers_connected(ops.runq_port, ops.env)) == 3   # the start returned once runq lists them
    assert all(ops.states()[w] == "RUNNING" for w in WORKERS)
    out = ok(ops.fab("local.status", "--wait", "30"))   # right after: it waits until they are connected
    assert out.count("connected to runq") == 3 and "NOT connected" not in out, out
    assert len(workers_connected(ops.runq_port, ops.env)) == 3
    failed(ops.fab("all.status"))  # runweb is not running

    ok(ops.fab("local.stop"))
    assert all(ops.states()[w] == "STOPPED" for w in WORKERS)
    failed(ops.fab("local.status"))
    wait_until(lambda: not workers_connected(ops.runq_port, ops.env), 20, what="the stopped workers to disconnect")


def test_killed_worker_is_restarted_by_supervisor(ops):
    ok(ops.fab("runq.start"))
    ok(ops.fab("local"))
    victim = ops.sup.processes()[WORKERS[1]]["pid"]
    os.kill(victim, signal.SIGKILL)

    def back():
        info = ops.sup.processes()[WORKERS[1]]
        return info["statename"] == "RUNNING" and info["pid"] not in (0, victim)
    wait_until(back, 20, what="supervisor to restart the killed worker")
    wait_until(lambda: len(workers_connected(ops.runq_port, ops.env)) == 3, 20, what="3 connected workers again")
    ok(ops.fab("local.status"))


def test_drained_workers_exit_0_and_stay_down(ops):
    ok(ops.fab("runq.start"))
    ok(ops.fab("local"))
    wait_until(lambda: len(workers_connected(ops.runq_port, ops.env)) == 3, 20, what="3 workers in WorkerList")
    out = ok(ops.fab("local.drain"))
    for w in WORKERS:   # told to drain: not shown as RUNNING (idle ones may have exited already)
        assert re.search(rf"^{w.split(':')[1]}\s+(DRAINING .*; exits after its run|EXITED)", out, re.M), out
    assert "RUNNING" not in out, out

    def drained():
        procs = ops.sup.processes()
        return all(procs[w]["statename"] == "EXITED" and procs[w]["exitstatus"] == 0 for w in WORKERS)
    wait_until(drained, 30, what="idle workers to drain and exit 0")
    failed(ops.fab("local.status"))
    ok(ops.fab("local"))  # a drained pool starts again
    assert all(ops.states()[w] == "RUNNING" for w in WORKERS)


def test_changed_pools_are_applied_by_the_next_start(ops):
    hosts_file = ops.tmp / "hosts.yaml"
    hosts_file.write_text("instances:\n  local:\n    pools:\n      - {name: small, engine: dummy, count: 2}\n")
    use = {"SIMX_HOSTS": str(hosts_file)}
    ok(ops.fab("runq.start", env_extra=use))
    ok(ops.fab("local", env_extra=use))
    assert sorted(n for n in ops.states() if n.startswith("worker-")) == ["worker-small:worker-small_00",
                                                                          "worker-small:worker-small_01"]
    hosts_file.write_text("instances:\n  local:\n    pools:\n      - {name: small, engine: dummy, count: 3}\n")
    out = ok(ops.fab("local", env_extra=use))
    # a changed pool is replaced gracefully: each worker drains (these are idle), then the new pool starts;
    # the start waits for it, since no old worker holds a run
    assert "changed, replaced as each worker finishes its run: worker-small" in out, out
    assert "ABSENT" not in out and re.search(r"^worker-small_02\s+(ADDING|STARTING|RUNNING)", out, re.M), out
    assert ops.states().get("worker-small:worker-small_02") == "RUNNING"
    assert len(workers_connected(ops.runq_port, ops.env)) == 3
    ok(ops.fab("local.status"))

    hosts_file.write_text("instances:\n  local:\n    pools: []\n")
    out = ok(ops.fab("local", env_extra=use))
    assert "removed: worker-small" in out, out
    assert not [n for n in ops.states() if n.startswith("worker-")]


def test_a_worker_that_cannot_start_is_reported_with_its_log(ops):
    hosts_file = ops.tmp / "hosts.yaml"
    hosts_file.write_text("instances:\n  local:\n    pools:\n      - {name: bad, engine: no-such-engine, count: 1}\n")
    result = ops.fab("local", env_extra={"SIMX_HOSTS": str(hosts_file)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker-bad:worker-bad_00 did not start" in result.stderr
    assert "no-such-engine" in result.stderr  # the end of the worker's own log says why


# ------------------------------------------------------------------ everything

def test_all_returns_once_everything_is_up_and_connected(ops):
    hosts_file = ops.tmp / "hosts.yaml"   # ten workers starting at once on a small machine: some connect late
    hosts_file.write_text("instances:\n  local:\n    pools:\n      - {name: many, engine: dummy, count: 10}\n")
    use = {"SIMX_HOSTS": str(hosts_file)}
    out = ok(ops.fab("all", env_extra=use))
    assert len(workers_connected(ops.runq_port, ops.env)) == 10, out      # right after, without waiting
    assert http("GET", f"{ops.url}/health")[0] == 200
    out = ok(ops.fab("all.status", env_extra=use))
    assert out.count("connected to runq") == 10 and "NOT" not in out, out


def test_a_start_says_which_worker_is_not_connected_after_its_wait(ops):
    ok(ops.fab("runq.start"))
    hosts_file = ops.tmp / "hosts.yaml"   # this pool's workers look for runq on a port nobody listens on
    hosts_file.write_text(f"instances:\n  local:\n    runq_port: {free_port()}\n"
                          f"    pools:\n      - {{name: lost, engine: dummy, count: 1}}\n")
    result = ops.fab("local", "--wait", "3", env_extra={"SIMX_HOSTS": str(hosts_file)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^worker-lost_00\s+RUNNING .*  NOT connected to runq$", result.stdout, re.M), result.stdout
    assert "local: FAILED: not up: worker-lost_00 (3 s after the start)" in result.stderr, result.stderr


def test_all_starts_the_stack_and_shutdown_stops_supervisord(ops):
    out = ok(ops.fab("all"))
    assert re.search(r"^up after [\d.]+ s: runq, runweb, 3 worker\(s\)$", out, re.M), out
    assert len(workers_connected(ops.runq_port, ops.env)) == 3
    assert set(ops.states()) == {"runq:runq", "runweb:runweb", *WORKERS}
    assert set(ops.states().values()) == {"RUNNING"}
    assert http("GET", f"{ops.url}/health")[0] == 200   # `fab all` returned once runweb answers
    out = ok(ops.fab("all.status"))                      # right after: everything is up and connected
    assert re.search(r"^runq\s+RUNNING .*  answers$", out, re.M), out
    assert re.search(rf"^runweb\s+RUNNING .*  answers on http://127.0.0.1:{ops.runweb_port}$", out, re.M), out
    assert out.count("connected to runq") == 3, out
    pid = read_pid(ops.sup.paths.pid)

    ok(ops.fab("shutdown"))
    assert not ops.sup.running()
    assert pid and not alive(pid)
    assert _refused(ops.runq_port, ops.env)
    with pytest.raises(OSError):
        http("GET", f"{ops.url}/health", timeout=2)
    failed(ops.fab("all.status"))


def test_run_tasks_serve_in_the_foreground(ops):
    runq = Proc("fab-runq-run", FAB + ["runq.run"], ops.env, ops.tmp / "fab-runq-run.log")
    runweb = None
    try:
        # runq.run makes the secrets first (none configured); runweb.run and this ping find them in var/secrets
        wait_until(lambda: ping(ops.runq_port, env=ops.env)["status"] == "ok", 20,
                   what=f"fab runq.run to serve\n{runq.log()}")
        assert "secrets: none configured, so fab made" in runq.log()
        port = free_port()
        runweb = Proc("fab-runweb-run", FAB + ["runweb.run", "--port", str(port)], ops.env,
                      ops.tmp / "fab-runweb-run.log")
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/health")[0] == 200, 30,
                   what=f"fab runweb.run to serve /health\n{runweb.log()}")
    finally:
        if runweb:
            runweb.stop()
        assert runq.stop() == 0, runq.log()  # runq exits cleanly on TERM


def test_adduser_adds_a_hashed_user_to_the_users_file(ops):
    users = ops.tmp / "users.yaml"
    result = subprocess.run(FAB + ["runweb.adduser", "--name", "ann"], cwd=ROOT, input="pa55-word\n", text=True,
                            capture_output=True, timeout=60, env=dict(ops.env, RUNWEB_USERS=str(users)))
    assert result.returncode == 0, result.stdout + result.stderr
    text = users.read_text()
    assert text.startswith("ann:") and "pa55-word" not in text
    assert users.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------ the demo

def test_demo_runs_the_example_batch_and_stops_its_stack(ops):
    result = ops.fab("demo", timeout=240)
    out = ok(result)
    assert re.search(r"3 runs: 3 finished, 0 failed", out), out
    assert "curl 127.0.0.1:" in out
    demo = Supervisor(Paths(ops.var / "demo"))
    assert not demo.running()
    pid = read_pid(demo.paths.pid)
    assert pid is None or not alive(pid)


# ------------------------------------------------------------------ a task touches only what it names

def test_local_notes_and_ignores_a_runweb_setting_that_runweb_restart_applies(ops):
    ok(ops.fab("all"))
    before = {name: info["pid"] for name, info in ops.sup.processes().items()}
    other = free_port()
    out = ok(ops.fab("local", env_extra={"RUNWEB_PORT": str(other)}))
    assert re.search(rf"^setting RUNWEB_PORT='{other}' ignored: only runweb uses it and this task does not "
                     r"start runweb \(`fab runweb.restart` applies it\)$", out, re.M), out
    assert out.count("RUNWEB_PORT") == 1, out
    info = ops.sup.processes()["runweb:runweb"]
    assert (info["statename"], info["pid"]) == ("RUNNING", before["runweb:runweb"])   # not restarted
    assert http("GET", f"{ops.url}/health")[0] == 200
    assert ok(ops.fab("local")).count("RUNWEB_PORT") == 0   # the record still says what runs

    out = ok(ops.fab("runweb.restart", env_extra={"RUNWEB_PORT": str(other)}))
    assert f"setting RUNWEB_PORT changed from '{ops.runweb_port}' to '{other}'" in out, out
    wait_until(lambda: http("GET", f"http://127.0.0.1:{other}/health")[0] == 200, 30, what="runweb on its new port")
    after = {name: info["pid"] for name, info in ops.sup.processes().items()}
    assert after["runweb:runweb"] != before["runweb:runweb"]
    assert {n: p for n, p in after.items() if n != "runweb:runweb"} == \
        {n: p for n, p in before.items() if n != "runweb:runweb"}   # runq and the workers ran on


# ------------------------------------------------------------------ secrets

@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_runq_secrets_prints_absolute_paths_of_the_files_it_wrote(tmp_path, where):
    var = "run-var" if where == "relative" else str(tmp_path / "run-var")
    env = base_env(tmp_path, free_port(), SIMX_VAR=var)
    out = ok(subprocess.run(FAB + ["-r", str(ROOT), "runq.secrets"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60))   # run from tmp_path: a relative SIMX_VAR is under it
    printed = dict(re.findall(r"^(worker|client) secret: (\S+) \(written, mode 0600\)$", out, re.M))
    assert sorted(printed) == ["client", "worker"], out
    for role, path in printed.items():
        assert Path(path).is_absolute(), out
        assert Path(path).samefile(tmp_path / "run-var" / "secrets" / f"{role}.secret")
        assert re.fullmatch(r"[0-9a-f]{64}\n", Path(path).read_text())
        assert f"runq.{role}_secret_file: {path}" in out, out   # the conf line names that same file
        found = simx_config.load(env=dict(env, SIMX_VAR=str(tmp_path / "run-var")), root=ROOT).runq
        assert simx_config.resolve_var_path(getattr(found, f"{role}_secret_file"), ROOT,
                                            tmp_path / "run-var") == Path(path)   # found there, nothing to set
    assert "`fab NAME.update` and `fab all` copy the worker secret to each remote instance" in out, out
    assert "copy the worker secret to worker hosts" not in out
    before = {role: Path(path).read_text() for role, path in printed.items()}
    again = ok(subprocess.run(FAB + ["-r", str(ROOT), "runq.secrets"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60))   # as after `fab all` made them: kept, and said where
    kept = dict(re.findall(r"^(worker|client) secret: (\S+) \(already there, kept;", again, re.M))
    assert kept == printed and {r: Path(p).read_text() for r, p in kept.items()} == before, again
    assert "take new secrets" not in again, again


# ------------------------------------------------------------------ the default deployment is private

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
CLIENT = """
from simx import config
from simx.client import RunqClient
try:
    print("answered", RunqClient.from_config(config.load(), timeout=5).request("Ping"))
except Exception as exc:
    print("refused:", type(exc).__name__, exc)
"""


def _as_nobody(args, env: dict) -> subprocess.CompletedProcess:
    """`args` run by another local account (nobody), from the simx directory."""
    return subprocess.run(NOBODY + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_the_default_deployment_is_private_to_its_operator(ops):
    """`fab all` with no secret configured: fab makes them and every program it starts uses them;
    another local account (`nobody`, by setpriv) is not admin on runweb, and runq refuses it as a
    client and as a worker.  The operator's own curl and `simx` need no password."""
    ops.tmp.chmod(0o755)   # as a simx directory is: only var/ (0700) and the files keep others out
    out = ok(ops.fab("all"))
    secrets = ops.var / "secrets"
    files = {role: secrets / f"{role}.secret" for role in ("worker", "client")}
    assert f"fab made {files['worker']} and {files['client']}" in out, out
    assert stat.S_IMODE(ops.var.stat().st_mode) == 0o700 and stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files.values())
    conf = ops.sup.paths.conf.read_text()
    assert conf.count(f'SIMX_WORKER_SECRET_FILE="{files["worker"]}"') == 2, conf   # runq, the pool
    assert conf.count(f'SIMX_CLIENT_SECRET_FILE="{files["client"]}"') == 2, conf   # runq, runweb
    out = ok(ops.fab("all.status", "--wait", "30"))   # fab asks runq with them; the workers hold them
    assert out.count("connected to runq") == 3 and "NOT connected" not in out, out
    wait_until(lambda: http("GET", f"{ops.url}/health")[0] == 200, 20, what="runweb reaching runq with them")

    # the operator: curl on loopback is admin without a password, and so is the simx command line
    assert http("GET", f"{ops.url}/worker")[0] == 200
    cli = subprocess.run([sys.executable, "-m", "simx", "workers"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(ops.env, SIMX_URL=ops.url, HOME=str(ops.tmp)))
    assert cli.returncode == 0 and "dummy" in cli.stdout, cli.stdout + cli.stderr

    # another account: 401 on runweb, no secret to read, refused by runq as a client and as a worker
    for method, path in (("GET", "/worker"), ("POST", "/worker/1/drain"), ("GET", "/batch")):
        done = _as_nobody(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, ops.url + path],
                          ops.env)
        assert done.stdout == "401", (method, path, done.stdout, done.stderr)
    for f in files.values():
        assert _as_nobody(["cat", str(f)], ops.env).returncode != 0
    for extra in ({}, {"SIMX_CLIENT_SECRET_FILE": str(files["client"])}):
        done = _as_nobody([sys.executable, "-c", CLIENT], dict(ops.env, **extra))
        assert done.stdout.startswith("refused:"), (extra, done.stdout, done.stderr)
        assert ("wrong proof" if not extra else "Permission denied") in done.stdout, done.stdout
    home = ops.tmp / "nobody"
    home.mkdir()
    os.chown(home, 65534, 65534)
    for args in ((), ("--secret-file", str(files["worker"]))):
        done = _as_nobody([sys.executable, "-m", "worker", "--engine", "dummy", "--retry-delay-max", "1", *args],
                          dict(ops.env, SIMX_VAR=str(home)))
        assert done.returncode == 2, (args, done.returncode, done.stderr[-2000:])
        assert ("wrong proof" if not args else "Permission denied") in done.stderr, done.stderr[-2000:]
    assert len(workers_connected(ops.runq_port, ops.env)) == 3   # the operator's workers only


def test_an_installation_without_secrets_gets_them_at_the_next_fab_all(ops):
    """A stack fab started before it made secrets: the next `fab all` makes them and restarts runq and
    runweb with them; the pool is replaced at once (drained, its workers could not reconnect)."""
    from ops import hosts
    from ops.stack import Stack
    old = Stack(simx_config.load(env=ops.env, root=ROOT), hosts.load(root=ROOT)["local"], ops.env,
                out=lambda line: None)
    old.start(["runq", "runweb"] + old.pools)   # what fab did before: no secret anywhere
    wait_until(lambda: len(workers_connected(ops.runq_port, ops.env)) == 3, 30, what="3 workers without secrets")
    assert not (ops.var / "secrets").exists()
    out = ok(ops.fab("all"))
    assert "fab made" in out and "config changed (restarted if running): runq, runweb, worker-dummy" in out, out
    out = ok(ops.fab("all.status", "--wait", "30"))
    assert out.count("connected to runq") == 3 and "NOT connected" not in out, out
    assert procs.secret_of(ops.env) is not None and len(workers_connected(ops.runq_port, ops.env)) == 3


def test_fab_all_leaves_an_open_installation_as_it_is_while_its_workers_compute(ops):
    """Making secrets would cut the running workers off runq (their runs lost): while any computes,
    `fab all` says so and what to do, makes none, and the run goes on to finish where it runs."""
    from ops import hosts
    from ops.stack import Stack
    old = Stack(simx_config.load(env=ops.env, root=ROOT), hosts.load(root=ROOT)["local"], ops.env,
                out=lambda line: None)
    old.start(["runq", "runweb"] + old.pools)   # what fab did before: no secret anywhere
    wait_until(lambda: len(workers_connected(ops.runq_port, ops.env)) == 3, 30, what="3 workers without secrets")
    client = procs.client(ops.runq_port, ops.env)
    try:
        bid = client.request("StartBatch", name="long", group="", user="", engine="dummy", n_runs=1,
                             param={"step_count": 40, "step_delay": 0.1})["batch_id"]

        def computing():
            busy = [w for w in client.request("WorkerList")["workers"] if w.get("state") == "busy"]
            return busy[0]["pid"] if busy else None
        pid = wait_until(computing, 20, what="a worker computing the run")
        out = ok(ops.fab("all"))
        assert "worker(s) are computing runs" in out and "`fab all.drain`, then `fab all`" in out, out
        assert not (ops.var / "secrets").exists() and procs.secret_of(ops.env) is None
        assert alive(pid) and computing() == pid
        wait_until(lambda: client.request("BatchStatus", batch_id=bid, offset=0, limit=10)["batch"]["state"]
                   == "done", 30, what="the run finished where it ran")
        assert client.request("BatchStatus", batch_id=bid, offset=0, limit=10)["runs"][0]["attempt"] == 1
    finally:
        client.close()
