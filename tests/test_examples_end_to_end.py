"""The example engines on a real stack: runq + runweb + workers started with ``--engine aurora`` and
``--engine calibration`` (the shipped conf/engines.yaml), batches posted over HTTP."""
from __future__ import annotations

import sys

from procs import ROOT, http, wait_until

sys.path.append(str(ROOT))
from examples.aurora import ctm, scenario  # noqa: E402
from examples.montecarlo.calibration import calibrate  # noqa: E402

JSON = {"Accept": "application/json"}


def finished_runs(stack, bid: int, timeout: float = 30) -> list[dict]:
    def done():
        body = http("GET", f"{stack.url}/batch/{bid}", headers=JSON)[2]
        return body if body["batch"]["state"] in ("done", "failed", "cancelled") else None
    body = wait_until(done, timeout, what=f"batch {bid} to end")
    return body["runs"]


def test_the_original_aurora_request_runs_on_an_aurora_worker(stack):
    stack.worker(engine="aurora", group="topl", user="topl")
    stack.worker(engine="calibration")
    wait_until(lambda: len(http("GET", f"{stack.url}/workers", headers=JSON)[2]["workers"]) == 2, 20,
               what="2 workers")
    request = (ROOT / "examples" / "aurora" / "batch-req.yaml").read_bytes()
    status, _, body = http("POST", f"{stack.url}/batch/new", request)
    assert status in (200, 201), body
    runs = finished_runs(stack, body["batch_id"])
    assert [r["state"] for r in runs] == ["finished"], runs
    expected, _ = ctm.simulate(scenario.load(123), "simulation", 0.0, 100.0, False, False, False)
    result = runs[0]["result"]
    assert result["result"] == expected and result["returncode"] == 0
    assert [f["name"] for f in result["files"]] == ["cells.csv", "result.json"]

    param = {"arrival_rate": 500.0, "target_delay": 30.0, "replications": 5}
    status, _, body = http("POST", f"{stack.url}/batch/new", {"engine": "calibration", "n_runs": 2, "param": param})
    assert status in (200, 201), body
    runs = finished_runs(stack, body["batch_id"])
    full = {"cycle": 90.0, "green": 40.0, "saturation_flow": 1800.0, "n_cycles": 40, "seed": 1, **param}
    assert [r["result"] for r in runs] == [calibrate(full)] * 2
