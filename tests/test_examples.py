"""The shipped example engines (examples/), run through the worker's engine layer exactly as a
worker started with ``--engine aurora`` / ``--engine calibration`` runs them, against a direct
computation of the same model."""
from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from simx import catalog as catalog_mod
from simx import protocol, sweep
from worker.engines import failure_kind
from worker.engines.named import engine_for
from worker.job import Job

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # examples/ is not an installed package; a worker finds it the same way

from examples.aurora import ctm, scenario  # noqa: E402
from examples.montecarlo.calibration import calibrate  # noqa: E402

CATALOG = catalog_mod.load(ROOT / "conf" / "engines.yaml", required=True)


def batch(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def run_job(engine, param, index=0):
    """(report type, fields, last progress) of one run through worker.job.Job."""
    wakes = threading.Semaphore(0)
    job = Job(protocol.message("RunqAssignRun", seq=1, batch_id=9, batch_index=index, attempt=1, engine=engine.name,
                               param=param, time_limit=None), engine, 1, wakes.release)
    progress = []

    job.start()
    while job.thread.is_alive() or job.has_progress():
        wakes.acquire(timeout=0.05)
        p = job.take_progress()
        if p is not None:
            progress.append(p)
    job.thread.join(10)
    mtype, fields = job.outcome()
    return mtype, fields, progress


def runs_of(request: dict):
    spec = {k: request[k] for k in ("sweep", "zip") if k in request}
    n = sweep.validate(spec, request["param"])
    assert request.get("n_runs") in (None, n)
    return [sweep.param_for(request["param"], spec, i) for i in range(n)]


@pytest.fixture
def aurora(tmp_path):
    return engine_for("aurora", CATALOG, root=ROOT, work_root=tmp_path / "work")


def direct(param: dict):
    p = CATALOG.validate_param("aurora", param)
    return ctm.simulate(scenario.load(p["scenario"]), p["mode"], p["b_time"], p["duration"], p["control"],
                        p["qcontrol"], p["events"])


# -- aurora --------------------------------------------------------------------------------------

def test_the_original_aurora_batch_runs_unchanged_and_matches_the_model(aurora):
    request = batch("examples/aurora/batch-req.yaml")
    mtype, fields, progress = run_job(aurora, request["param"])
    assert mtype == "WorkerFinishedRun", fields
    data = fields["data"]
    expected, rows = direct(request["param"])
    assert data["result"] == expected
    assert progress and progress[-1][0] == 1.0
    files = {f["name"]: f for f in data["files"]}
    assert set(files) == {"cells.csv", "result.json"}
    workdir = aurora.take_outputs((9, 0, 1))
    csv = (workdir.out / "cells.csv").read_text().splitlines()
    assert [[float(x) for x in line.split(",")] for line in csv[1:]] == rows
    assert files["cells.csv"]["size"] == (workdir.out / "cells.csv").stat().st_size
    workdir.remove()


def test_the_aurora_sweep_runs_every_combination(aurora):
    runs = runs_of(batch("examples/aurora/batch-sweep.yaml"))
    assert len(runs) == 8
    seen = set()
    for i, param in enumerate(runs):
        mtype, fields, _ = run_job(aurora, param, index=i)
        assert mtype == "WorkerFinishedRun", fields
        assert fields["data"]["result"] == direct(param)[0]
        seen.add((param["control"], param["events"], fields["data"]["result"]["scenario"]))
        aurora.take_outputs((9, i, 1)).remove()
    assert len(seen) == 8
    # The incident costs delay on scenario 123.
    by = {(p["control"], p["events"], str(p["scenario"])[:3]): direct(p)[0]["total_delay"] for p in runs}
    assert by[(False, True, "123")] > by[(False, False, "123")]


def test_inline_yaml_and_xml_scenarios_give_the_same_result(aurora):
    yaml_doc = textwrap.dedent("""
        name: two cells
        dt: 5
        cells: [{length: 0.5, lanes: 2, vf: 100, w: 20, qmax: 2000, kjam: 150, count: 2}]
        demand: [[0, 3000]]
        onramps: [{cell: 1, capacity: 1500, max_queue: 50, demand: [[0, 400]]}]
        offramps: [{cell: 0, split: 0.1}]
        events: [{cell: 1, start: 0, end: 60, capacity_factor: 0.5}]
    """)
    results = []
    for doc in (yaml_doc, scenario.SCENARIO_XML):
        param = {"duration": 300.0, "events": True, "control": True, "scenario": doc}
        mtype, fields, _ = run_job(aurora, param)
        assert mtype == "WorkerFinishedRun", fields
        results.append(fields["data"]["result"])
    assert results[0] == results[1] == direct({"duration": 300.0, "events": True, "control": True,
                                               "scenario": yaml_doc})[0]
    assert results[0]["throughput"] > 0


@pytest.mark.parametrize("bad, message", [
    (7, "no built-in scenario with this id"),
    ("cells: []\ndemand: [[0, 1]]", "no cells"),
    ("<!DOCTYPE x [<!ENTITY a 'b'>]><scenario/>", "DOCTYPE"),
    ("<scenario><cell length='0.5' lanes='2' qmax='99999'/></scenario>", "qmax"),
])
def test_a_bad_scenario_fails_the_run_once(aurora, bad, message):
    with pytest.raises(Exception) as info:
        aurora.run({"duration": 10.0, "scenario": bad}, lambda *a: None, threading.Event(),
                   Job(protocol.message("RunqAssignRun", seq=1, batch_id=1, batch_index=0, attempt=1, engine="aurora",
                                        param={}, time_limit=None), aurora, 1, lambda: None).context)
    assert failure_kind(info.value) == "run" and "status 3" in str(info.value) and message in str(info.value)


def test_a_param_outside_the_schema_never_starts_the_program(aurora):
    mtype, fields, _ = run_job(aurora, {"duration": -5.0, "scenario": 123})
    assert mtype == "WorkerFailedRun"
    assert "engine 'aurora': param.duration: value must be at least 1" in fields["message"]


def test_ctm_conserves_vehicles():
    s = scenario.load(1)
    result, rows = ctm.simulate(s, duration=600.0)
    inside = sum(k * c["length"] for k, c in zip(rows[-1][1:], s["cells"]))
    entered = 3000 * result["steps"] * s["dt"] / 3600 - result["queued_at_end"]
    assert inside + result["vehicles_out"] + result["offramp_out"] == pytest.approx(entered, rel=1e-6)


# -- Monte Carlo calibration -----------------------------------------------------------------------

def test_the_calibration_sweep_matches_a_direct_computation_and_finds_the_rate():
    engine = engine_for("calibration", CATALOG, root=ROOT, work_root=ROOT / "var" / "unused")
    runs = runs_of(batch("examples/montecarlo/batch-sweep.yaml"))
    assert len(runs) == 20
    results = []
    for i, param in enumerate(runs):
        mtype, fields, progress = run_job(engine, param, index=i)
        assert mtype == "WorkerFinishedRun", fields
        expected = calibrate(CATALOG.validate_param("calibration", param))
        assert fields["data"] == json.loads(json.dumps(expected))
        assert progress[-1] == (1.0, "replication 20 of 20")
        results.append((param["cycle"], fields["data"]))
    for plan in (90, 120):
        delays = [r["mean_delay"] for c, r in results if c == plan]
        assert delays == sorted(delays)  # more arrivals, more delay (same seeds)
        best = min((r for c, r in results if c == plan), key=lambda r: r["loss"])
        assert abs(best["mean_delay"] - 30.0) < 5


def test_an_oversaturated_approach_is_a_run_failure():
    engine = engine_for("calibration", CATALOG, root=ROOT, work_root=ROOT / "var" / "unused")
    param = {"arrival_rate": 900.0, "target_delay": 30.0}
    with pytest.raises(Exception) as info:
        engine.run(param, lambda *a: None, threading.Event(), None)
    assert failure_kind(info.value) == "run" and "capacity 800.0" in str(info.value)
    mtype, fields, _ = run_job(engine, param)
    assert mtype == "WorkerFailedRun" and fields["message"].startswith("Fatal: arrival_rate 900.0")
