"""Remote instances over real SSH: a private OpenSSH server on loopback plays host `lab`.

The sshd has its own host key, authorized key and config (tests/sshhosts.py);
`lab` has its own directory, where `fab` puts code, a virtualenv built offline
from the wheelhouse, config and the worker secret, and runs a supervisord.
runq and runweb run under this machine's supervisord (the `local` server),
started by `fab all` with worker and client secrets set.  The tests share one
deployment (module fixture) and run in order; each deploys first if needed.
They exercise only this machine's Python: the host's Python is found over SSH,
which here is the same interpreter version.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from ops.control import Supervisor
from ops.paths import Paths
from ops.secrets import runq_client
from procs import ROOT, base_env, free_port, http, wait_until
from simx import config as simx_config
from sshhosts import SshHost, keygen

FAB = [sys.executable, "-m", "fabric"]
WORKERS = ["worker-dummy:worker-dummy_00", "worker-dummy:worker-dummy_01"]


def write_secret(path: Path) -> str:
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(value + "\n")
    return value


@pytest.fixture(scope="module")
def site():
    tmp = Path(tempfile.mkdtemp(prefix="sxr-", dir="/tmp"))
    lab = None
    try:
        key = keygen(tmp / "client_ed25519")
        lab = SshHost(tmp, "lab", key).start()
        runq_port, runweb_port = free_port(), free_port()
        sec = tmp / "secrets"
        sec.mkdir(mode=0o700)
        worker_secret, client_secret = write_secret(sec / "worker.secret"), write_secret(sec / "client.secret")
        hosts = tmp / "hosts.yaml"
        hosts.write_text("server: local\nssh: {connect_timeout: 3}\ninstances:\n  local: {pools: []}\n"
                         + lab.instance_yaml("127.0.0.1", "[{name: dummy, engine: dummy, count: 2}]"))
        env = base_env(tmp, runq_port, RUNWEB_PORT=runweb_port, SIMX_HOSTS=hosts,
                       SIMX_KNOWN_HOSTS=tmp / "known_hosts", SIMX_WORKER_SECRET_FILE=sec / "worker.secret",
                       SIMX_CLIENT_SECRET_FILE=sec / "client.secret")
        s = types.SimpleNamespace(tmp=tmp, lab=lab, env=env, runq_port=runq_port, runweb_port=runweb_port,
                                  url=f"http://127.0.0.1:{runweb_port}", hosts=hosts, deployed=False,
                                  worker_secret=worker_secret, client_secret=client_secret,
                                  local=Supervisor(Paths(Path(env["SIMX_VAR"]))),
                                  remote=Supervisor(Paths(lab.dir / "var")))

        def fab(*args, env_extra=None, drop=(), input=None, timeout=300):
            run_env = {k: v for k, v in dict(env, **(env_extra or {})).items() if k not in drop}
            return subprocess.run(FAB + list(args), cwd=ROOT, env=run_env, capture_output=True, text=True,
                                  timeout=timeout, input=input)
        s.fab = fab
        yield s
    finally:
        subprocess.run(FAB + ["shutdown"], cwd=ROOT, env=env, capture_output=True, timeout=60) \
            if "env" in locals() else None
        if lab:
            lab.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def failed(result) -> str:
    assert result.returncode != 0, f"expected a failure\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def deployed(site) -> None:
    """`fab all` once (trusting lab's key first): runq, runweb here, two workers on lab."""
    if site.deployed:
        return
    ok(site.fab("lab.trust", "--fingerprint", site.lab.fingerprint()))
    all_up(site)
    site.deployed = True


def all_up(site) -> str:
    """`fab all`, and right after it (no waiting): runq lists lab's 2 workers and `fab all.status` exits 0."""
    out = ok(site.fab("all", timeout=600))
    assert re.search(r"^== local\nup after [\d.]+ s: runq, runweb$", out, re.M), out
    assert re.search(r"^== lab\nup after [\d.]+ s: 2 worker\(s\)$", out, re.M), out
    assert len(connected(site)) == 2
    ok(site.fab("all.status"))
    return out


def connected(site) -> list[dict]:
    """runq's connected workers, asked as fab asks: with the client secret (ops.secrets.runq_client)."""
    reply = runq_client(simx_config.load(env=site.env, root=ROOT), site.env).request("WorkerList")
    assert reply["status"] == "ok", reply
    return [w for w in reply["workers"] if w["connected"]]


def states(sup: Supervisor) -> dict:
    return {n: (i["statename"], i["pid"]) for n, i in sup.processes().items()}


def batch(site, n_runs: int, steps: int = 6, delay: float = 0.5) -> int:
    body = {"name": "remote", "engine": "dummy", "n_runs": n_runs, "param": {"step_count": steps, "step_delay": delay}}
    status, _, reply = http("POST", f"{site.url}/batch/new", body)
    assert status == 201, reply
    return reply["batch_id"]


def batch_view(site, batch_id: int) -> dict:
    status, _, reply = http("GET", f"{site.url}/batch/{batch_id}", headers={"Accept": "application/json"})
    assert status == 200, reply
    return reply


def finished_once(site, batch_id: int, timeout: float = 60) -> dict:
    """Wait for the batch to end; assert every run finished at its first attempt (none lost or re-run)."""
    final = wait_until(lambda: (v := batch_view(site, batch_id))["batch"]["state"] == "done" and v, timeout,
                       interval=0.2, what=f"batch {batch_id} to finish")
    assert [(r["state"], r["attempt"]) for r in final["runs"]] == [("finished", 1)] * len(final["runs"]), final
    return final


def all_running(site, batch_id: int) -> bool:
    return all(r["state"] == "running" for r in batch_view(site, batch_id)["runs"])


# ------------------------------------------------------------------ host keys

def test_unknown_host_key_is_refused_until_trusted(site):
    out = failed(site.fab("lab.status"))
    assert "not in" in out and "known_hosts" in out and "fab lab.trust" in out, out
    assert not site.lab.dir.exists()  # nothing was done on a host that is not trusted

    out = failed(site.fab("lab.trust", "--fingerprint", "SHA256:" + "A" * 43))
    assert site.lab.fingerprint() in out and "not trusted" in out, out
    out = failed(site.fab("lab.trust", input=""))  # no terminal (stdin closed): told how, no traceback
    assert f"--fingerprint {site.lab.fingerprint()}" in out and "EOFError" not in out and "Traceback" not in out, out
    out = failed(site.fab("lab.trust", input="no\n"))  # asked, and not confirmed
    assert site.lab.fingerprint() in out
    assert not (site.tmp / "known_hosts").exists() or "127.0.0.1" not in (site.tmp / "known_hosts").read_text()

    out = ok(site.fab("lab.trust", input="yes\n"))  # shown, and confirmed
    assert site.lab.fingerprint() in out and "trusted, added to" in out, out
    assert f"[127.0.0.1]:{site.lab.port} ssh-ed25519 " in (site.tmp / "known_hosts").read_text()
    assert (site.tmp / "known_hosts").stat().st_mode & 0o077 == 0
    out = ok(site.fab("lab.trust", "--fingerprint", site.lab.fingerprint()))
    assert "already trusted" in out, out
    out = failed(site.fab("lab.status"))  # now reachable: nothing deployed yet
    assert "update" in out, out


# ------------------------------------------------------------------ deploy, secrets, a batch

def test_fab_all_deploys_workers_from_the_hosts_own_venv_and_they_complete_a_batch(site):
    deployed(site)
    procs = site.remote.processes()
    venv_python = str(site.lab.dir / "venv" / "bin" / "python")
    for name in WORKERS:
        pid = procs[name]["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode() == venv_python, cmdline
        assert os.readlink(f"/proc/{pid}/cwd") == str(site.lab.dir)
    assert (site.lab.dir / "venv" / "pyvenv.cfg").exists() and (site.lab.dir / "wheels" / "requirements.txt").exists()
    out = ok(site.fab("lab.status"))
    assert len(re.findall(r"^worker-dummy_0[01]\s+RUNNING .* connected to runq$", out, re.M)) == 2, out

    final = finished_once(site, batch(site, 4, steps=2, delay=0.1))
    assert {r["address"] for r in final["runs"]} == {"127.0.0.1"}


def test_logs_are_read_through_the_hosts_supervisord(site):
    deployed(site)
    out = ok(site.fab("lab.logs"))
    assert "---- worker-dummy:worker-dummy_00" in out and "---- worker-dummy:worker-dummy_01" in out, out
    assert out.count("accepted by runq") >= 2, out
    out = ok(site.fab("lab.logs", "--process", "worker-dummy:worker-dummy_01", "--size", "300"))
    assert "----" not in out and 0 < len(out) <= 301, out


def test_the_worker_secret_is_private_on_the_host_and_the_client_secret_is_not_there(site):
    deployed(site)
    copy = site.lab.dir / "var" / "secrets" / "worker.secret"
    assert copy.stat().st_mode & 0o777 == 0o600
    assert copy.read_text().strip() == site.worker_secret
    for d in (site.lab.dir / "var", site.lab.dir / "var" / "secrets", site.lab.dir / "var" / "log"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    for log in (site.lab.dir / "var" / "log").iterdir():
        assert log.stat().st_mode & 0o077 == 0, log
    conf = site.lab.dir / "var" / "supervisor" / "supervisord.conf"
    assert conf.stat().st_mode & 0o077 == 0
    assert f"SIMX_WORKER_SECRET_FILE=\"{copy}\"" in conf.read_text()
    found = subprocess.run(["grep", "-rlF", site.client_secret, str(site.lab.dir)], capture_output=True, text=True)
    assert found.stdout == "", f"the client secret is on the host: {found.stdout}"
    assert not (site.lab.dir / "var" / "secrets" / "client.secret").exists()
    assert not (site.lab.dir / "conf" / "hosts.yaml").exists()


def test_update_rebuilds_a_stale_venv_beside_the_running_workers(site):
    deployed(site)
    stamp = site.lab.dir / "venv" / ".simx-wheelhouse"
    key = stamp.read_text().strip()
    stamp.write_text("from-an-older-pyproject\n")
    before = states(site.remote)
    out = ok(site.fab("lab.update"))
    assert "building" in out and stamp.read_text().strip() == key, out
    assert states(site.remote) == before  # running workers were left alone
    assert not (site.lab.dir / "venv.old").exists() and not (site.lab.dir / "venv.new").exists()
    out = ok(site.fab("lab.update"))
    assert "up to date" in out, out
    ok(site.fab("lab.status"))


# ------------------------------------------------------------------ stop, start, drain, restart

def test_stop_disconnects_the_workers_and_start_brings_them_back(site):
    deployed(site)
    ok(site.fab("lab.stop"))
    assert {s for s, _ in states(site.remote).values()} == {"STOPPED"}
    wait_until(lambda: not connected(site), 20, what="runq to list lab's workers disconnected")
    out = failed(site.fab("lab.status"))
    assert "not up: worker-dummy_00, worker-dummy_01" in out, out

    ok(site.fab("lab.start"))
    wait_until(lambda: len(connected(site)) == 2, 20, what="2 connected workers again")
    ok(site.fab("lab.status"))


def test_drain_during_a_run_lets_it_finish_then_the_workers_stay_down(site):
    deployed(site)
    batch_id = batch(site, 2)
    wait_until(lambda: all_running(site, batch_id), 20, what="both runs to start")
    out = ok(site.fab("all.drain"))
    assert len(re.findall(r"^worker-dummy_0[01]\s+DRAINING .*; exits after its run$", out, re.M)) == 2, out
    assert "RUNNING" not in out, out
    finished_once(site, batch_id)
    wait_until(lambda: {s for s, _ in states(site.remote).values()} == {"EXITED"}, 20,
               what="drained workers to exit")
    failed(site.fab("lab.status"))
    ok(site.fab("lab.start"))
    wait_until(lambda: len(connected(site)) == 2, 20, what="2 connected workers again")


def test_restart_during_a_run_returns_at_once_and_loses_nothing(site):
    deployed(site)
    before = {n: pid for n, (_, pid) in states(site.remote).items()}
    batch_id = batch(site, 2, steps=8, delay=0.5)
    wait_until(lambda: all_running(site, batch_id), 20, what="both runs to start")
    out = ok(site.fab("lab.restart"))
    assert "draining 2 worker(s)" in out, out
    assert batch_view(site, batch_id)["batch"]["state"] == "active"  # returned while the runs go on
    finished_once(site, batch_id)

    def back():
        now = states(site.remote)
        return all(now[n][0] == "RUNNING" and now[n][1] != before[n] for n in WORKERS)
    wait_until(back, 30, what="each worker to be started again after its run")
    wait_until(lambda: len(connected(site)) == 2, 20, what="2 connected workers")
    ok(site.fab("lab.status"))


def test_restart_wait_and_now(site):
    deployed(site)
    before = {n: pid for n, (_, pid) in states(site.remote).items()}
    ok(site.fab("lab.restart", "--wait"))  # idle workers: back before the task returns
    now = states(site.remote)
    assert all(now[n][0] == "RUNNING" and now[n][1] != before[n] for n in WORKERS), now
    ok(site.fab("lab.restart", "--now"))
    assert all(s == "RUNNING" for s, _ in states(site.remote).values())


def processes_under(directory: Path) -> list[str]:
    """Command lines of the processes running a program from `directory` (the host's venv python)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if cmdline and cmdline[0].decode(errors="replace").startswith(str(directory) + "/"):
            found.append(" ".join(c.decode(errors="replace") for c in cmdline))
    return found


def test_shutdown_stops_the_hosts_supervisord_and_its_programs_and_all_brings_them_back(site):
    from ops.control import read_pid
    from simx.process import alive
    deployed(site)
    assert len(connected(site)) == 2
    sup_pid, workers = read_pid(site.remote.paths.pid), [pid for _, pid in states(site.remote).values()]
    assert sup_pid and alive(sup_pid) and processes_under(site.lab.dir)
    out = ok(site.fab("lab.shutdown"))
    assert "supervisord: shut down" in out, out
    assert not site.remote.running() and not alive(sup_pid) and not any(alive(p) for p in workers)
    assert processes_under(site.lab.dir) == []          # nothing of lab's is left running
    assert not site.remote.paths.sock.exists()
    wait_until(lambda: not connected(site), 20, what="runq to see lab's workers leave")
    assert site.local.running()                        # the server's supervisord was left alone
    out = failed(site.fab("lab.status"))
    assert "supervisord not running" in out, out
    all_up(site)                                       # `fab all` brings lab back

    server = read_pid(site.local.paths.pid)
    out = ok(site.fab("all.shutdown"))                 # every host's, the server's last
    assert out.index("== lab") < out.index("== local"), out
    assert not site.remote.running() and not site.local.running() and not alive(server)
    assert processes_under(site.lab.dir) == []
    with pytest.raises(OSError):
        http("GET", f"{site.url}/health", timeout=2)
    all_up(site)


# ------------------------------------------------------------------ settings reach only their programs

def test_a_second_deploy_restarts_nothing(site):
    deployed(site)
    before = states(site.remote)
    out = ok(site.fab("lab"))
    assert "up to date" in out and "changed" not in out, out
    assert states(site.remote) == before


def test_a_changed_pool_is_replaced_only_after_its_workers_finish_their_runs(site):
    deployed(site)
    hosts = site.tmp / "hosts-cost.yaml"
    hosts.write_text(site.hosts.read_text().replace("count: 2}", "count: 3, cost: 5}"))
    before = {n: pid for n, (_, pid) in states(site.remote).items()}
    batch_id = batch(site, 2, steps=20, delay=0.5)  # longer than an update takes
    wait_until(lambda: all_running(site, batch_id), 20, what="both runs to start")
    try:
        out = ok(site.fab("all", env_extra={"SIMX_HOSTS": str(hosts)}))
        assert "replaced as each worker finishes its run: worker-dummy" in out, out
        # what happens, said as it is: the busy old workers drain, the third one comes after them
        assert len(re.findall(r"^worker-dummy_0[01]\s+DRAINING .*; replaced by its changed pool after its run$",
                              out, re.M)) == 2, out
        assert re.search(r"^worker-dummy_02\s+ADDING\s+adding worker-dummy_02: ", out, re.M), out
        assert "ABSENT" not in out and "start it to apply" not in out, out
        assert re.search(r"^up after .*; replaced after their workers' runs: worker-dummy$", out, re.M), out
        assert batch_view(site, batch_id)["batch"]["state"] == "active"   # fab returned while they run
        finished_once(site, batch_id)
        wait_until(lambda: sorted(w["cost"] for w in connected(site)) == [5, 5, 5], 30,
                   what="the replaced pool's workers (cost 5) to connect")
        assert all(pid != before.get(n) for n, (_, pid) in states(site.remote).items())
    finally:  # back to the module's pool: idle workers, so `fab lab` waits until the new ones are connected
        out = ok(site.fab("lab", env_extra={"SIMX_HOSTS": str(site.hosts)}))
    assert sorted(w["cost"] for w in connected(site)) == [1, 1], out
    ok(site.fab("lab.status"))


def test_runweb_bind_change_restarts_runweb_alone_and_a_plain_start_agrees(site):
    deployed(site)
    runq_pid = site.local.processes()["runq:runq"]["pid"]
    workers = {n: pid for n, (_, pid) in states(site.remote).items()}
    runweb_pid = site.local.processes()["runweb:runweb"]["pid"]

    out = ok(site.fab("runweb.restart", env_extra={"RUNWEB_BIND": "127.0.0.2"}))
    assert "RUNWEB_BIND" in out, out  # the task says it applies a different value
    other = f"http://127.0.0.2:{site.runweb_port}"
    wait_until(lambda: http("GET", f"{other}/health")[0] == 200, 20, what="runweb on its new address")
    new_runweb = site.local.processes()["runweb:runweb"]["pid"]
    assert new_runweb != runweb_pid
    assert site.local.processes()["runq:runq"]["pid"] == runq_pid
    assert {n: pid for n, (_, pid) in states(site.remote).items()} == workers

    for _ in range(2):  # without RUNWEB_BIND: the recorded value holds; nothing restarts
        out = ok(site.fab("local", drop=("RUNWEB_BIND",)))
        assert "changed" not in out and "added" not in out and "removed" not in out, out
        assert site.local.processes()["runweb:runweb"]["pid"] == new_runweb
        assert site.local.processes()["runq:runq"]["pid"] == runq_pid
    assert http("GET", f"{other}/health")[0] == 200
    ok(site.fab("all.status", drop=("RUNWEB_BIND",)))
    assert {n: pid for n, (_, pid) in states(site.remote).items()} == workers

    ok(site.fab("runweb.restart"))  # back to 127.0.0.1 (the environment says so)
    wait_until(lambda: http("GET", f"{site.url}/health")[0] == 200, 20, what="runweb on 127.0.0.1 again")


# ------------------------------------------------------------------ a host that cannot be reached

def test_all_with_an_unreachable_instance_reports_it_and_deploys_the_other(site):
    deployed(site)
    hosts = site.tmp / "hosts-gone.yaml"
    gone_port = free_port()
    hosts.write_text(site.hosts.read_text() + f"  gone:\n    host: 127.0.0.1\n    port: {gone_port}\n"
                     f"    user: root\n    key: {site.lab.client_key}\n    dir: {site.tmp / 'gone'}\n"
                     f"    pools: [{{name: dummy, engine: dummy, count: 1}}]\n")
    started = time.monotonic()
    result = site.fab("all", env_extra={"SIMX_HOSTS": str(hosts)})
    out = failed(result)
    assert re.search(rf"gone: FAILED: cannot reach \[127.0.0.1\]:{gone_port}", out), out
    assert re.search(r"^failed: gone \(", out, re.M), out
    assert "== lab" in out and "virtualenv" in out and "up to date" in out, out
    assert time.monotonic() - started < 120
    assert all(s == "RUNNING" for s, _ in states(site.remote).values())
    out = failed(site.fab("all.status", env_extra={"SIMX_HOSTS": str(hosts)}))
    assert re.search(r"^worker-dummy_00\s+RUNNING .*connected to runq$", out, re.M), out


# ------------------------------------------------------------------ the server on a remote instance

def test_fab_server_puts_runq_and_runweb_on_the_instance_conf_names(site):
    deployed(site)
    hosts = site.tmp / "hosts-server.yaml"
    hosts.write_text(site.hosts.read_text().replace("server: local", "server: lab"))
    port, web = free_port(), free_port()
    extra = {"SIMX_HOSTS": str(hosts), "RUNQ_PORT": str(port), "RUNWEB_PORT": str(web),
             "SIMX_VAR": str(site.tmp / "var-server"), "SIMX_DB_URL": "sqlite:///var/data/runq.sqlite"}
    try:
        ok(site.fab("server", env_extra=extra))
        procs = site.remote.processes()
        for name in ("runq:runq", "runweb:runweb"):
            assert procs[name]["statename"] == "RUNNING", procs
            cmdline = Path(f"/proc/{procs[name]['pid']}/cmdline").read_bytes().split(b"\0")
            assert cmdline[0].decode() == str(site.lab.dir / "venv" / "bin" / "python")
        wait_until(lambda: http("GET", f"http://127.0.0.1:{web}/health")[0] == 200, 30, what="lab's runweb")
        assert (site.lab.dir / "var" / "data" / "runq.sqlite").exists()  # runq's database is on its host
        client = site.lab.dir / "var" / "secrets" / "client.secret"  # runq checks client proofs there
        assert client.stat().st_mode & 0o777 == 0o600
        out = ok(site.fab("server.status", env_extra=extra))
        assert re.search(r"^runq\s+RUNNING", out, re.M) and re.search(r"^runweb\s+RUNNING", out, re.M), out
        ok(site.fab("server.stop", env_extra=extra))
        assert site.remote.processes()["runq:runq"]["statename"] == "STOPPED"
    finally:
        site.fab("server.stop", env_extra=extra)


def test_a_host_that_never_answers_is_reported_after_the_connect_timeout(site):
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts the connection; no SSH banner ever comes
    hosts = site.tmp / "hosts-silent.yaml"
    hosts.write_text(f"instances:\n  mute:\n    host: 127.0.0.1\n    port: {silent.getsockname()[1]}\n"
                     f"    user: root\n    key: {site.lab.client_key}\n    dir: {site.tmp / 'mute'}\n"
                     f"    pools: [{{name: d, engine: dummy, count: 1}}]\n")
    try:
        started = time.monotonic()
        out = failed(site.fab("mute.status", env_extra={"SIMX_HOSTS": str(hosts), "SIMX_SSH_TIMEOUT": "1.5",
                                                        "SIMX_VAR": str(site.tmp / "var-mute")}))
        assert time.monotonic() - started < 15, out
        assert "mute: FAILED:" in out and str(silent.getsockname()[1]) in out, out
    finally:
        silent.close()
