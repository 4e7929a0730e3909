"""Submit-time checks: runq refuses a batch for an undeclared engine, or whose param or sweep does
not fit its engine's schema, with a 400 naming the engine or the field (runq/submit.py).  The
coordinator is driven without sockets, with the shipped conf/engines.yaml as its catalog."""
import pytest

from procs import ROOT
from simx import catalog as engines
from simx.config import BatchDefaults
from runq import startup
from test_coordinator import MEMORY, Harness

CATALOG = engines.load(ROOT / "conf" / "engines.yaml", required=True)
AURORA = {"duration": 100.0, "scenario": 123}


@pytest.fixture
def h(tmp_path):
    harness = Harness(MEMORY)
    harness.coord = startup.coordinator(harness.store, harness.cfg, BatchDefaults(), now=harness.now, catalog=CATALOG,
                                files_dir=tmp_path / "files")
    yield harness
    harness.close()


def submit(h, **fields):
    fields.setdefault("n_runs", None)
    if fields["n_runs"] is None:
        del fields["n_runs"]
    return h.request("StartBatch", **fields)


REFUSED = [
    # (fields, words the message must hold)
    ({"engine": "nope", "n_runs": 1}, ["engine 'nope' is not declared", "aurora", "dummy"]),
    ({"engine": "aurora", "n_runs": 1, "param": {"scenario": 123}}, ["engine 'aurora'", "param.duration", "required"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "duration": "long"}},
     ["param.duration", "must be float, not str"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "duration": 0.5}}, ["param.duration", "at least 1"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "duration": 1e9}}, ["param.duration", "at most 86400"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "mode": "replay"}},
     ["param.mode", "must be one of 'simulation', 'prediction'"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "speed": 3}}, ["param.speed", "unknown field"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "control": "yes"}}, ["param.control", "must be bool"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "scenario": "x" * 30001}},
     ["param.scenario", "length must be at most 30000"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "scenario": "a\0b"}}, ["param.scenario", "NUL"]),
    ({"engine": "aurora", "n_runs": 1, "param": {**AURORA, "scenario": -1}}, ["param.scenario", "at least 0"]),
    ({"engine": "dummy", "n_runs": 1, "param": {"step_count": -1}}, ["engine 'dummy'", "param.step_count"]),
    # sweeps: keys, values and shapes
    ({"engine": "aurora", "param": AURORA, "sweep": {"gain": [1, 2]}}, ["engine 'aurora'", "sweep.gain", "names no field"]),
    ({"engine": "aurora", "param": AURORA, "sweep": {"duration": [100, -5]}}, ["sweep.duration[1]", "at least 1"]),
    ({"engine": "aurora", "param": AURORA, "sweep": {"mode": ["simulation", "replay"]}}, ["sweep.mode[1]", "one of"]),
    ({"engine": "aurora", "param": AURORA, "sweep": {"duration": []}}, ["sweep.duration", "non-empty list"]),
    ({"engine": "aurora", "param": AURORA, "sweep": {"duration": 5}}, ["sweep.duration", "non-empty list"]),
    ({"engine": "aurora", "param": AURORA, "zip": {"duration": [100, 200], "control": [True]}},
     ["zip", "different lengths"]),
    ({"engine": "aurora", "param": AURORA, "sweep": {"control": [True]}, "zip": {"control": [False]}},
     ["zip.control", "overlaps"]),
    ({"engine": "aurora", "param": AURORA, "sweep": {"duration": [100, 200]}, "n_runs": 3},
     ["n_runs", "3 given", "makes 2 runs"]),
    ({"engine": "aurora", "param": {"scenario": 123}, "sweep": {"control": [True, False]}},
     ["param.duration", "required"]),
    ({"engine": "aurora", "param": AURORA}, ["n_runs is required"]),
    ({"engine": "aurora", "param": AURORA, "n_runs": 0}, ["n_runs must be an integer from 1"]),
    ({"engine": "command", "param": {"a": 1}, "sweep": {"a.b": [1]}}, ["sweep.a.b", "param.a is not a mapping"]),
]


@pytest.mark.parametrize("fields,words", REFUSED)
def test_a_batch_that_cannot_run_is_refused_at_submit_naming_what(h, fields, words):
    reply = submit(h, **fields)
    assert (reply["status"], reply["code"]) == ("error", 400), reply
    for word in words:
        assert word in reply["message"], (word, reply["message"])
    assert h.request("BatchList")["batches"] == []   # nothing stored


ACCEPTED = [
    {"engine": "aurora", "n_runs": 1, "param": AURORA},
    {"engine": "aurora", "n_runs": 1, "param": {**AURORA, "scenario": "<scenario/>"}},   # inline: checked by the program
    {"engine": "dummy", "n_runs": 2, "param": {"step_count": 1, "anything": [1]}},        # dummy allows extra keys
    {"engine": "command", "n_runs": 1, "param": {"argv": ["true"]}},    # raw engine: the worker decides
]


@pytest.mark.parametrize("fields", ACCEPTED)
def test_declared_engines_with_fitting_params_and_unchecked_kinds_are_accepted(h, fields):
    reply = submit(h, **fields)
    assert reply["status"] == "ok", reply
    # the param is stored as given: defaults are filled in by the worker, not written into the batch
    assert reply["batch"]["param"] == fields["param"]


def test_without_a_catalog_runq_checks_only_shapes(tmp_path):
    harness = Harness(MEMORY)   # startup.coordinator(catalog=None): unit tests, tools
    try:
        assert submit(harness, engine="anything", n_runs=2, param={"x": 1})["status"] == "ok"
        reply = submit(harness, engine="anything", param={}, sweep={"x": [1, 2]}, n_runs=3)
        assert reply["code"] == 400 and "n_runs" in reply["message"]
    finally:
        harness.close()


def test_a_module_class_engine_is_taken_only_when_declared_or_allowed(h, tmp_path):
    """Anyone could otherwise invent engine names: batches no worker serves, a metric series each."""
    refused = submit(h, engine="examples.x:Engine", n_runs=1, param={"free": 1})
    assert refused["code"] == 400 and "no engine of conf/engines.yaml has this class" in refused["message"]
    assert "examples.x:Engine" in refused["message"]
    declared = next(d for d in CATALOG.engines.values() if d.kind == "python" and d.name != "dummy")
    reply = submit(h, engine=declared.cls, n_runs=1, param={})   # its class is declared: its schema applies
    assert "has this class" not in reply.get("message", "") and declared.name in str(reply)
    import dataclasses
    allowing = Harness(MEMORY, cfg=dataclasses.replace(h.cfg, allow_undeclared_engines=True), catalog=CATALOG)
    assert submit(allowing, engine="examples.x:Engine", n_runs=1, param={"free": 1})["status"] == "ok"


def test_only_declared_engine_names_become_metric_labels(h):
    h.worker("w1", engine="invented.by:Someone")
    h.worker("w2", engine="dummy")
    metrics = h.request("Metrics")
    assert {w["engine"] for w in metrics["workers"]} == {"other", "dummy"}
    assert "invented.by:Someone" not in str(metrics)


def test_quotas_on_active_batches_and_waiting_runs_answer_429_naming_the_quota():
    from runq.core.quotas import Quotas
    h = Harness(MEMORY, quotas=Quotas(active_batches=2, waiting_runs=100, users={"root": {"active_batches": None}}))
    ok = lambda reply: reply["status"] == "ok"   # noqa: E731
    assert ok(h.request("StartBatch", engine="dummy", n_runs=60, actor="ann", admin=False))
    over = h.request("StartBatch", engine="dummy", n_runs=41, actor="ann", admin=False)
    assert over["code"] == 429 and "quota waiting_runs" in over["message"] and "60 waiting" in over["message"]
    assert ok(h.request("StartBatch", engine="dummy", n_runs=40, actor="ann", admin=False))
    third = h.request("StartBatch", engine="dummy", n_runs=1, actor="ann", admin=False)
    assert third["code"] == 429 and "quota active_batches" in third["message"]
    assert ok(h.request("StartBatch", engine="dummy", n_runs=1, actor="bob", admin=False))   # per user
    for _ in range(3):                                                       # a user with its own limit
        assert ok(h.request("StartBatch", engine="dummy", n_runs=1, actor="root", admin=True))
    h.request("CancelBatch", batch_id=1, actor="ann", admin=False)
    assert ok(h.request("StartBatch", engine="dummy", n_runs=1, actor="ann", admin=False))
