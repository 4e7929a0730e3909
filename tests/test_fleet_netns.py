"""A fleet of hosts with their own addresses: network namespaces joined by veth pairs to one bridge.

Each namespace runs its own sshd (tests/sshhosts.py) and has its own directory;
runq (under this machine's supervisord, the `local` server) listens on loopback
and on the bridge's address, which the hosts' workers connect to.  Private
addresses used only on this machine; no forwarding, no default route.  The
namespaces and the bridge are removed, and whatever still runs in them killed,
also when a test fails.  Exercises only this machine's Python.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ops.control import Supervisor
from ops.paths import Paths
from procs import ROOT, base_env, free_port, http, make_secrets, wait_until, workers_connected
from sshhosts import NetnsLab, SshHost, keygen

FAB = [sys.executable, "-m", "fabric"]


@pytest.fixture
def fleet(request):
    """Three hosts of two dummy workers each; a test may ask for other numbers and runq settings
    with indirect parametrization: dict(hosts=2, count=1, settings=dict(RUNQ_LEASE=6))."""
    shape = {"hosts": 3, "count": 2, "settings": {}, **getattr(request, "param", {})}
    tmp = Path(tempfile.mkdtemp(prefix="sxf-", dir="/tmp"))
    lab = NetnsLab(shape["hosts"])
    hosts: list[SshHost] = []
    env = None
    try:
        lab.open()
        key = keygen(tmp / "client_ed25519")
        for i, (ns, addr) in enumerate(zip(lab.namespaces, lab.addresses), 1):
            hosts.append(SshHost(tmp, f"h{i}", key, address=addr, port=22, netns=ns).start())
        runq_port, runweb_port = free_port(), free_port()
        pools = f"[{{name: dummy, engine: dummy, count: {shape['count']}}}]"
        hosts_file = tmp / "hosts.yaml"
        hosts_file.write_text("server: local\nssh: {connect_timeout: 5}\ninstances:\n  local: {pools: []}\n"
                              + "".join(h.instance_yaml(lab.gateway, pools) for h in hosts))
        # runq listens beyond loopback, so it needs both secrets (protected mode); fab copies the
        # worker secret to each host, and the hosts' workers authenticate with it
        env = base_env(tmp, runq_port, RUNWEB_PORT=runweb_port, RUNQ_LISTEN=f"127.0.0.1,{lab.gateway}",
                       SIMX_HOSTS=hosts_file, SIMX_KNOWN_HOSTS=tmp / "known_hosts", **make_secrets(tmp),
                       **shape["settings"])

        def fab(*args, timeout=600):
            return subprocess.run(FAB + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        yield type("Fleet", (), dict(tmp=tmp, lab=lab, hosts=hosts, env=env, fab=staticmethod(fab),
                                     runq_port=runq_port, url=f"http://127.0.0.1:{runweb_port}"))
    finally:
        if env:
            subprocess.run(FAB + ["shutdown"], cwd=ROOT, env=env, capture_output=True, timeout=60)
        for h in hosts:
            h.stop()
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_fab_all_deploys_three_hosts_a_batch_spreads_over_them_and_all_stop_stops_them(fleet):
    for h in fleet.hosts:
        ok(fleet.fab(f"{h.name}.trust", "--fingerprint", h.fingerprint()))
    out = ok(fleet.fab("all"))
    for h in fleet.hosts:
        assert f"== {h.name}" in out, out
    wait_until(lambda: len(workers_connected(fleet.runq_port, fleet.env)) == 6, 60, what="6 workers from 3 hosts")
    assert {w["ipaddr"] for w in workers_connected(fleet.runq_port, fleet.env)} == set(fleet.lab.addresses)
    for h in fleet.hosts:  # each host's supervisord and workers run inside its own namespace
        pid = Supervisor(Paths(h.dir / "var")).processes()["worker-dummy:worker-dummy_00"]["pid"]
        ns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.strip()
        assert ns == h.netns

    body = {"name": "fleet", "engine": "dummy", "n_runs": 30, "param": {"step_count": 2, "step_delay": 0.2}}
    status, _, reply = http("POST", f"{fleet.url}/batch/new", body)
    assert status == 201, reply

    def done():
        _, _, view = http("GET", f"{fleet.url}/batch/{reply['batch_id']}", headers={"Accept": "application/json"})
        return view if view["batch"]["state"] == "done" else None
    final = wait_until(done, 90, interval=0.3, what="the 30-run batch")
    assert [r["state"] for r in final["runs"]] == ["finished"] * 30
    assert {r["address"] for r in final["runs"]} == set(fleet.lab.addresses)  # every host took runs
    ok(fleet.fab("all.status"))

    out = ok(fleet.fab("all.stop"))  # the workers first, then runweb and runq
    assert max(out.index(f"== {h.name}") for h in fleet.hosts) < out.rindex("== local"), out
    for h in fleet.hosts:
        assert {i["statename"] for i in Supervisor(Paths(h.dir / "var")).processes().values()} == {"STOPPED"}
    assert Supervisor(Paths(Path(fleet.env["SIMX_VAR"]))).processes()["runq:runq"]["statename"] == "STOPPED"


# The default settings' proportions (heartbeat 10 s, lease 30 s: runq cuts a worker silent for
# worker_idle_factor = 3 heartbeats at the lease), scaled down; a grace ten times the lease, so a
# run requeued within the test's waits was requeued by the lease, not by the grace.
LEASE_SETTINGS = dict(RUNQ_HEARTBEAT=2, RUNQ_LEASE=6, RUNQ_GRACE=60)


@pytest.mark.parametrize("fleet", [dict(hosts=2, count=1, settings=LEASE_SETTINGS)], indirect=True)
def test_host_cut_off_past_the_lease_loses_its_run_the_run_finishes_once_and_the_late_result_is_refused(fleet):
    """A host's veth is set down while its worker computes a run, for longer than the lease and
    the run: runq requeues the run at the lease and the other host finishes it.  Once the link is
    up the cut-off worker comes back (same id) with its finished report, which runq refuses as a
    stale attempt (docs/ARCHITECTURE.md, "Leases, grace and late reports"): one finished attempt,
    one result, and the worker takes runs again."""
    for h in fleet.hosts:
        ok(fleet.fab(f"{h.name}.trust", "--fingerprint", h.fingerprint()))
    ok(fleet.fab("all"))
    wait_until(lambda: len(workers_connected(fleet.runq_port, fleet.env)) == 2, 60, what="a worker on each host")
    def view(path):
        return http("GET", f"{fleet.url}{path}", headers={"Accept": "application/json"})[2]

    def done(batch_id):
        def check():
            page = view(f"/batch/{batch_id}")
            return page if page["batch"]["state"] == "done" else None
        return check

    # 12 steps of 0.5 s: 6 s, as long as the lease, so its end is long over when the other host ends it
    body = {"name": "cut", "engine": "dummy", "n_runs": 1, "param": {"step_count": 12, "step_delay": 0.5}}
    status, _, reply = http("POST", f"{fleet.url}/batch/new", body)
    assert status == 201, reply
    run_path = f"/batch/{reply['batch_id']}/run/0"

    def computing():
        run = view(run_path)["run"]
        return run if run["state"] == "running" and run["progress"] > 0 else None
    first = wait_until(computing, 30, interval=0.1, what="the run computing on a host")
    cut = fleet.lab.addresses.index(first["address"])
    other = fleet.lab.addresses[1 - cut]
    worker_log = fleet.hosts[cut].dir / "var" / "log" / "worker-dummy_00.log"
    runq_log = Path(fleet.env["SIMX_VAR"]) / "log" / "runq.log"

    subprocess.run(["ip", "link", "set", fleet.lab.veths[cut], "down"], check=True)
    try:
        # well within the grace (60 s): only the lease can have requeued it
        wait_until(done(reply["batch_id"]), 40, interval=0.3,
                   what="the run requeued at the lease and finished on the other host")
        ended = view(run_path)["run"]
        assert (ended["attempt"], ended["address"]) == (2, other), ended
    finally:
        subprocess.run(["ip", "link", "set", fleet.lab.veths[cut], "up"], check=True)

    rejected = (f"rejected WorkerFinishedRun from worker {first['worker_id']} for run "
                f"({reply['batch_id']}, 0) attempt 1: not its current attempt")
    wait_until(lambda: rejected in runq_log.read_text(), 60, interval=0.3,
               what=f"the cut-off worker's late result refused by runq ({runq_log})")
    assert f"finished report of run {reply['batch_id']}/0#1 acked (accepted False: stale attempt)" \
        in worker_log.read_text()

    def back():
        workers = {w["id"]: w for w in workers_connected(fleet.runq_port, fleet.env)}
        worker = workers.get(first["worker_id"])
        return worker if worker is not None and worker["state"] == "idle" else None
    returned = wait_until(back, 30, what="the cut-off worker connected and idle, under its own id")
    assert returned["ipaddr"] == first["address"]

    run = view(run_path)["run"]
    assert run["state"] == "finished" and run["attempt"] == 2, run
    assert [(a["attempt"], a["worker_id"], a["outcome"], a["message"]) for a in run["attempts"]] == [
        (1, first["worker_id"], "lost", "worker lease expired"), (2, ended["worker_id"], "finished", None)]
    batch = view(f"/batch/{reply['batch_id']}?runs=none")["batch"]
    assert (batch["n_finished"], batch["n_failed"], batch["n_waiting"], batch["n_running"]) == (1, 0, 0, 0)
    _, _, results = http("GET", f"{fleet.url}/batch/{reply['batch_id']}/results?format=csv")
    assert len(results.strip().splitlines()) == 2, results   # the header and one result

    # the worker that was cut off takes runs again: two runs, one on each host
    status, _, again = http("POST", f"{fleet.url}/batch/new", dict(body, name="after", n_runs=2,
                                                                  param={"step_count": 4, "step_delay": 0.5}))
    assert status == 201, again
    final = wait_until(done(again["batch_id"]), 30, interval=0.3, what="the second batch")
    assert {r["address"] for r in final["runs"]} == set(fleet.lab.addresses)


def test_teardown_kills_what_runs_in_a_namespace_and_removes_it():
    lab = NetnsLab(1).open()
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", lab.namespaces[0], "sleep", "300"],
                                   start_new_session=True)
        wait_until(lambda: subprocess.run(["ip", "netns", "pids", lab.namespaces[0]], capture_output=True,
                                          text=True).stdout.strip(), 5, what="a process in the namespace")
    finally:
        lab.close()
    assert sleeper.wait(10) != 0  # killed
    assert lab.namespaces[0] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert lab.bridge not in links and lab.veths[0] not in links
