"""TLS on runq's port and on runweb, with a private CA made by the test (real processes, loopback)."""
from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from procs import PYTHON, Proc, base_env, free_port, start_runq, start_worker, wait_until
from simx import protocol, tls
from simx.client import Link, RunqClient, RunqUnavailable, handshake
from testca import CA

QUICK = {"step_count": 2, "step_delay": 0.01}


@pytest.fixture
def pki(tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key = ca.issue("runq")
    return ca, cert, key


def tls_runq(tmp_path, pki):
    ca, cert, key = pki
    context = tls.client_context(ca.path)
    runq = start_runq(tmp_path, conf={"runq": {"tls": {"cert": str(cert), "key": str(key)}}}, tls=context)
    return runq, context


def batch_done(client, batch_id):
    return client.request("BatchStatus", batch_id=batch_id)["batch"]["state"] == "done"


def test_worker_and_client_complete_a_batch_over_tls_and_strangers_are_cut_off(tmp_path, pki):
    runq, context = tls_runq(tmp_path, pki)
    worker = None
    try:
        env = base_env(tmp_path, runq.port, SIMX_TLS_CA=pki[0].path)
        worker = start_worker(tmp_path, runq.port, env=env)
        client = RunqClient(port=runq.port, tls=context)
        wait_until(lambda: any(w["connected"] for w in client.request("WorkerList")["workers"]), 15,
                   what="the worker to connect over TLS")
        plain = socket.create_connection(("127.0.0.1", runq.port), timeout=5)   # speaks no TLS
        plain.sendall(protocol.encode(protocol.message("Ping")))
        reply = client.request("StartBatch", name="tls", engine="dummy", n_runs=3, param=QUICK)
        wait_until(lambda: batch_done(client, reply["batch_id"]), 15, what="the batch to finish over TLS")
        assert _closed(plain), "a plaintext peer on the TLS port must be cut off"
        other = CA(tmp_path / "other", "another CA")
        with pytest.raises(RunqUnavailable, match="is not who it should be"):
            RunqClient(port=runq.port, tls=tls.client_context(other.path)).request("Ping")
        with pytest.raises(RunqUnavailable, match="is not who it should be"):   # right CA, wrong name
            RunqClient(port=runq.port, tls=context, server_name="runq.example").request("Ping")
        assert client.request("Ping")["status"] == "ok"
        assert worker.alive() and runq.alive()
        assert "TLS handshake failed" in runq.log()
    finally:
        if worker:
            worker.stop()
        runq.stop()


def _closed(sock) -> bool:
    """Whether runq closes `sock` within 5 s (what it sends before, a TLS alert say, is skipped)."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_worker_with_the_wrong_ca_never_registers(tmp_path, pki):
    runq, context = tls_runq(tmp_path, pki)
    other = CA(tmp_path / "other", "another CA")
    worker = start_worker(tmp_path, runq.port, env=base_env(tmp_path, runq.port, SIMX_TLS_CA=other.path))
    try:
        wait_until(lambda: "is not who it should be" in worker.log(), 15, what="the worker to refuse runq")
        assert RunqClient(port=runq.port, tls=context).request("WorkerList")["workers"] == []
    finally:
        worker.stop()
        runq.stop()


def test_a_stalled_tls_handshake_hits_the_auth_timeout(tmp_path, pki):
    ca, cert, key = pki
    context = tls.client_context(ca.path)
    runq = start_runq(tmp_path, tls=context, conf={"runq": {
        "tls": {"cert": str(cert), "key": str(key)}, "limits": {"auth_timeout": 1}}})
    try:
        stalled = socket.create_connection(("127.0.0.1", runq.port), timeout=5)
        stalled.sendall(b"\x16\x03\x01")   # the start of a ClientHello, then nothing
        assert _closed(stalled)
        assert "did not say who it is in time" in runq.log()
        assert RunqClient(port=runq.port, tls=context).request("Ping")["status"] == "ok"
    finally:
        runq.stop()


def test_runweb_serves_https_and_talks_tls_to_runq(tmp_path, pki):
    ca, cert, key = pki
    runq, context = tls_runq(tmp_path, pki)
    web_cert, web_key = ca.issue("runweb")
    port = free_port()
    env = base_env(tmp_path, runq.port, RUNWEB_PORT=port, RUNWEB_TLS_CERT=web_cert, RUNWEB_TLS_KEY=web_key,
                   SIMX_TLS_CA=ca.path)
    web = Proc("runweb", [PYTHON, "-m", "runweb", "--port", str(port), "--bind", "127.0.0.1", "--workers", "1"],
               env, tmp_path / "runweb.log")
    url = f"https://127.0.0.1:{port}"

    def curl(*args):
        return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "5", *args],
                              capture_output=True, text=True)
    try:
        wait_until(lambda: curl("--cacert", str(ca.path), f"{url}/health").returncode == 0, 20,
                   what=f"runweb over HTTPS\n{web.log()}")
        done = curl("--cacert", str(ca.path), "-H", "Accept: application/json", f"{url}/health")
        assert '"ok"' in done.stdout, done.stdout + done.stderr + web.log()   # runweb reached runq over TLS
        other = CA(tmp_path / "other", "another CA")
        refused = curl("--cacert", str(other.path), f"{url}/health")
        assert refused.returncode != 0 and "certificate" in refused.stderr
        plain = curl(f"http://127.0.0.1:{port}/health")
        assert plain.returncode != 0 or "200" not in plain.stdout
    finally:
        web.stop()
        runq.stop()


def test_half_tls_configuration_is_refused_naming_the_keys(tmp_path, pki):
    port = free_port()
    conf = tmp_path / "half.yaml"
    conf.write_text(f"runq:\n  tls:\n    cert: {pki[1]}\n")
    done = subprocess.run([PYTHON, "-m", "runq", "--conf", str(conf)], env=base_env(tmp_path, port),
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "runq.tls" in done.stderr


def test_frames_over_tls_reassemble_across_records(tmp_path, pki):
    runq, context = tls_runq(tmp_path, pki)
    try:
        link = Link.connect("127.0.0.1", runq.port, tls=context)
        handshake(link, "client")
        frames = b"".join(protocol.encode(protocol.message("Ping")) for _ in range(50))
        for i in range(0, len(frames), 7):         # many tiny TLS records
            link.sock.sendall(frames[i:i + 7])
        assert [link.recv()["status"] for _ in range(50)] == ["ok"] * 50
        link.sock.sendall(struct.pack(">I", 2 * 1024 * 1024))   # over the client cap
        assert "exceeds" in link.recv()["message"]
        link.close()
    finally:
        runq.stop()


def test_a_large_report_crosses_tls_whole(tmp_path, pki):
    runq, context = tls_runq(tmp_path, pki)
    try:
        link = Link.connect("127.0.0.1", runq.port, tls=context)
        handshake(link, "worker")
        link.send(protocol.message("WorkerReady", host="h", pid=1, group="", user="", engine="dummy",
                                   cost=1.0, speed=1.0, priority=0.0))
        wid = link.recv()["worker_id"]
        link.send(protocol.message("WorkerFinishedRun", worker_id=wid, batch_id=5, batch_index=0, attempt=1,
                                   data="t" * (3 * 1024 * 1024)))
        wait_until(lambda: "rejected WorkerFinishedRun" in runq.log(), 10, what="the 3 MiB report to arrive")
        link.send(protocol.message("WorkerFinishedRun", worker_id=wid, batch_id=6, batch_index=0, attempt=1,
                                   data="small"))
        answers = [link.recv() for _ in range(2)]   # both reports answered, the big one first: the link is whole
        assert [(a["type"], a["batch_id"]) for a in answers] == [("RunqAck", 5), ("RunqAck", 6)]
    finally:
        runq.stop()
