"""Aurora's scenario end to end: real runq + runweb + workers started with ``--engine aurora`` (the
shipped conf/engines.yaml).  A sweep's every run has its param, result and output files over HTTP,
matching what ctm.py computes for those values here; the original's request runs unchanged;
batches that cannot run are refused at submit; runq's files directory running out of space fails
the upload clearly and the run is retried on another worker."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

import procs
from procs import ROOT, http, wait_until
from simx import sweep
from test_cli import cli_env, simx

sys.path.append(str(ROOT))
from examples.aurora import ctm  # noqa: E402

JSON = {"Accept": "application/json"}
DEFAULTS = {"mode": "simulation", "b_time": 0.0, "control": False, "qcontrol": False, "events": False}


def ended(url: str, bid: int, timeout: float = 30) -> dict:
    def done():
        body = http("GET", f"{url}/batch/{bid}", headers=JSON)[2]
        return body if body["batch"]["state"] in ("done", "failed", "cancelled") else None
    return wait_until(done, timeout, what=f"batch {bid} to end")


def computed_here(param: dict, tmp: Path) -> dict[str, bytes]:
    """ctm.py's output files for `param`, computed in this process (what the engine's argv asks)."""
    p = {**DEFAULTS, **param}
    out = tmp / hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]
    argv = [f"--mode={p['mode']}", f"--b-time={p['b_time']}", f"--duration={float(p['duration'])}",
            f"--control={str(p['control']).lower()}", f"--qcontrol={str(p['qcontrol']).lower()}",
            f"--events={str(p['events']).lower()}", f"--scenario={p['scenario']}", f"--out={out}"]
    assert ctm.main(argv) == 0
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())}


def check_run(url: str, bid: int, index: int, param: dict, tmp: Path) -> None:
    run = http("GET", f"{url}/batch/{bid}/run/{index}", headers=JSON)[2]["run"]
    assert run["state"] == "finished", run
    assert run["param"] == param
    want = computed_here(param, tmp)
    assert run["result"]["result"] == json.loads(want["result.json"])
    assert [f["name"] for f in run["result"]["files"]] == sorted(want)
    for entry in run["result"]["files"]:
        status, headers, raw = fetch(f"{url}/batch/{bid}/run/{index}/files/{entry['name']}")
        assert status == 200 and raw == want[entry["name"]], entry
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"] == headers["x-checksum-sha256"]
        assert headers["content-disposition"].startswith("attachment") and headers["x-content-type-options"] == "nosniff"


def fetch(url: str):
    """GET raw bytes (procs.http parses bodies by type)."""
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def test_an_aurora_sweep_and_the_original_request_give_params_results_and_files_over_http(stack, tmp_path):
    for _ in range(2):
        stack.worker(engine="aurora", group="topl", user="topl")
    sweep_doc = (ROOT / "examples" / "aurora" / "batch-sweep.yaml").read_bytes()
    status, _, body = http("POST", f"{stack.url}/batch/new", sweep_doc)
    assert status == 201, body
    sweep_id = body["batch_id"]
    status, _, body = http("POST", f"{stack.url}/batch/new", (ROOT / "examples" / "aurora" / "batch-req.yaml").read_bytes())
    assert status == 201, body
    original_id = body["batch_id"]

    doc = yaml.safe_load(sweep_doc)
    spec = {"sweep": doc["sweep"]}
    batch = ended(stack.url, sweep_id, 60)["batch"]
    assert (batch["state"], batch["n_runs"], batch["n_finished"]) == ("done", 8, 8), batch
    assert batch["sweep"] == spec and batch["param"] == doc["param"]
    for index in range(8):
        check_run(stack.url, sweep_id, index, sweep.param_for(doc["param"], spec, index), tmp_path)

    code, out, err = simx(cli_env(stack, tmp_path), "run", str(sweep_id), "7")   # the CLI shows the param
    assert code == 0 and 'param: {"mode": "simulation", "duration": 3600.0, "scenario":' in out, (out, err)
    assert '"control": true, "events": true' in out.replace("\n", " "), out

    original = yaml.safe_load((ROOT / "examples" / "aurora" / "batch-req.yaml").read_text())
    assert ended(stack.url, original_id)["batch"]["state"] == "done"
    check_run(stack.url, original_id, 0, original["param"], tmp_path)

    # the workers removed each run's work directory once its files were sent
    work = Path(stack.env["SIMX_VAR"]) / "work"
    assert [p for p in work.rglob("*") if p.is_file()] == []
    status, _, body = http("GET", f"{stack.url}/batch/{sweep_id}/run/0/files/nothing.csv", headers=JSON)
    assert status == 404 and "no file 'nothing.csv'" in body["message"]


def test_batches_that_cannot_run_are_refused_at_submit_over_http(stack):
    cases = [
        ({"engine": "aurra", "n_runs": 1}, "engine 'aurra' is not declared in"),
        ({"engine": "aurora", "n_runs": 1, "param": {"scenario": 123}}, "engine 'aurora': param.duration: required"),
        ({"engine": "aurora", "param": {"duration": 10, "scenario": 1}, "sweep": {"duration": [10, 0]}},
         "sweep.duration[1]: value must be at least 1"),
        ({"engine": "aurora", "n_runs": 5, "param": {"duration": 10, "scenario": 1}, "sweep": {"control": [True, False]}},
         "n_runs: 5 given, but the sweep makes 2 runs"),
    ]
    for request, message in cases:
        status, _, body = http("POST", f"{stack.url}/batch/new", request, headers=JSON)
        assert status == 400 and message in body["message"], (request, body)
    assert http("GET", f"{stack.url}/batch", headers=JSON)[2]["batches"] == []


BIG_ENGINE = {"engines": {"big": {
    "kind": "command", "files": True,
    "argv": ["{python}", "-c", "import os, sys; open(os.path.join(sys.argv[1], 'big.bin'), 'wb')"
                               ".write(os.urandom(int(sys.argv[2])))", "{out}", "{param.size}"],
    "params": {"size": {"type": "int", "required": True, "min": 0, "max": 10000000}}}}}


def test_a_full_files_directory_fails_the_upload_clearly_and_another_worker_retries(tmp_path):
    """runq's files directory is a 1 MiB tmpfs mounted here (we run as root); a run's 2 MiB file
    does not fit: ENOSPC fails that attempt, the run goes to the other worker, then fails."""
    mnt = tmp_path / "files"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    started: list[procs.Proc] = []
    try:
        (tmp_path / "engines.yaml").write_text(yaml.safe_dump(BIG_ENGINE))
        port = procs.free_port()
        env = procs.base_env(tmp_path, port, SIMX_ENGINES=tmp_path / "engines.yaml", SIMX_FILES_DIR=mnt)
        started.append(procs.start_runq(tmp_path, port, env=env))
        for _ in range(2):
            started.append(procs.start_worker(tmp_path, port, engine="big", env=env))
        client = procs.client(port, env)
        wait_until(lambda: len(procs.workers_connected(port, env)) == 2, 20, what="2 workers")
        reply = client.request("StartBatch", engine="big", n_runs=1, param={"size": 2 * 1024 * 1024}, max_attempts=2)
        assert reply["status"] == "ok", reply

        def failed():
            run = client.request("RunStatus", batch_id=reply["batch_id"], batch_index=0)["run"]
            return run if run["state"] == "failed" else None
        run = wait_until(failed, 30, what="the run to fail twice")
        attempts = run["attempts"]
        assert [a["outcome"] for a in attempts] == ["failed", "failed"], attempts
        assert attempts[0]["worker_id"] != attempts[1]["worker_id"], attempts
        for a in attempts:
            assert "upload of the run's files failed: runq's files directory is full" in a["message"], a
            assert "No space left on device" in a["message"]
        assert not any(p.is_file() for p in mnt.rglob("*"))   # partial files removed
        assert client.request("Ping")["status"] == "ok"       # runq carried on
        # a run whose files fit goes through on the same runq
        small = client.request("StartBatch", engine="big", n_runs=1, param={"size": 1000})["batch_id"]
        wait_until(lambda: client.request("RunStatus", batch_id=small, batch_index=0)["run"]["state"] == "finished",
                   20, what="the small run")
        assert (mnt / str(small) / "0" / "1" / "big.bin").stat().st_size == 1000
        client.close()
    finally:
        for proc in reversed(started):
            proc.stop()
        subprocess.run(["umount", str(mnt)], check=False)
