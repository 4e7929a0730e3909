"""A fleet of three hosts with their own addresses: network namespaces joined by veth pairs to one bridge.

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
def fleet():
    tmp = Path(tempfile.mkdtemp(prefix="sxf-", dir="/tmp"))
    lab = NetnsLab(3)
    hosts: list[SshHost] = []
    env = None
    try:
        lab.open()
        key = keygen(tmp / "client_ed25519")
        for i, (ns, addr) in enumerate(zip(lab.namespaces, lab.addresses), 1):
            hosts.append(SshHost(tmp, f"h{i}", key, address=addr, port=22, netns=ns).start())
        runq_port, runweb_port = free_port(), free_port()
        pools = "[{name: dummy, engine: dummy, count: 2}]"
        hosts_file = tmp / "hosts.yaml"
        hosts_file.write_text("server: local\nssh: {connect_timeout: 5}\ninstances:\n  local: {pools: []}\n"
                              + "".join(h.instance_yaml(lab.gateway, pools) for h in hosts))
        # runq listens beyond loopback, so it needs both secrets (protected mode); fab copies the
        # worker secret to each host, and the hosts' workers authenticate with it
        env = base_env(tmp, runq_port, RUNWEB_PORT=runweb_port, RUNQ_LISTEN=f"127.0.0.1,{lab.gateway}",
                       SIMX_HOSTS=hosts_file, SIMX_KNOWN_HOSTS=tmp / "known_hosts", **make_secrets(tmp))

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
