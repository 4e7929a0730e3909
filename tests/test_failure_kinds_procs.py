"""Failure kinds end to end: real runq and worker processes on loopback.

A permanent failure fails once; a program missing on one host requeues the run to another
worker without using an attempt and takes the broken worker off the engine; a transient
failure waits out its backoff, is retried and succeeds."""
import datetime as dt

import pytest
import yaml

import procs
from simx.client import RunqClient

ENGINE = {"kind": "command", "params": {"x": {"type": "int", "default": 1}}}
BROKEN = {"engines": {"probe": dict(ENGINE, argv=["/nonexistent/simx-probe", "--x={param.x}"])}}
GOOD = {"engines": {"probe": dict(ENGINE, argv=["{python}", "-c", "import sys; print('result', sys.argv[1])",
                                                "{param.x}"])}}


# what runq knows at submit (batches for undeclared engines are refused): the engines the tests use
DECLARED = {"engines": {"probe": GOOD["engines"]["probe"], "kinds": {"kind": "python", "class": "kinds_engine:Kinds"}}}


def start_runq_with_conf(tmp, conf: dict) -> procs.Proc:
    path = tmp / "simx.yaml"
    path.write_text(yaml.safe_dump(conf))
    (tmp / "engines.yaml").write_text(yaml.safe_dump(DECLARED))
    port = procs.free_port()
    env = procs.base_env(tmp, port, SIMX_ENGINES=str(tmp / "engines.yaml"), PYTHONPATH=str(procs.ROOT / "tests"))
    proc = procs.Proc("runq", [procs.PYTHON, "-m", "runq", "--conf", str(path)], env, tmp / "runq.log")
    proc.port = port
    try:
        procs.wait_until(lambda: proc.alive() and procs.ping(port)["status"] == "ok", 15, what="runq up")
    except AssertionError:
        proc.stop()
        raise AssertionError(proc.describe()) from None
    return proc


@pytest.fixture(scope="module")
def runq(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    proc = start_runq_with_conf(tmp, {"sched": {"backoff_base": 0.3}})
    proc.tmp, proc.client, proc.started = tmp, RunqClient("127.0.0.1", proc.port), []
    try:
        yield proc
    finally:
        for p in proc.started:
            p.stop()
        proc.stop()


def worker(runq, engine, name, **env):
    env = procs.base_env(runq.tmp, runq.port, PYTHONPATH=str(procs.ROOT / "tests"), **env)
    proc = procs.start_worker(runq.tmp, runq.port, engine=engine, env=env, name=name)
    runq.started.append(proc)
    return proc


def batch_done(runq, batch_id):
    reply = runq.client.request("BatchStatus", batch_id=batch_id, offset=0, limit=100)
    return reply if reply["batch"]["state"] != "active" else None


def submit(runq, **fields):
    reply = runq.client.request("StartBatch", name="t", group="", user="", **fields)
    assert reply["status"] == "ok", reply
    return reply["batch_id"]


def attempts(runq, batch_id, index=0):
    return runq.client.request("RunStatus", batch_id=batch_id, batch_index=index)["run"]["attempts"]


def worker_view(runq, proc):
    workers = runq.client.request("WorkerList", offset=0, limit=100)["workers"]
    return next((w for w in workers if w["pid"] == proc.pid and w["connected"]), None)


def test_permanent_failure_fails_once_and_transient_one_retries_then_succeeds(runq):
    worker(runq, "kinds_engine:Kinds", "kinds")
    fatal = submit(runq, engine="kinds", n_runs=1, param={"fail": "fatal"}, max_attempts=3)
    flaky = submit(runq, engine="kinds", n_runs=1, param={"fail": "flaky"}, max_attempts=2)
    done = procs.wait_until(lambda: batch_done(runq, fatal), 20, what="the fatal batch to end")
    assert done["runs"][0]["state"] == "failed" and "can never work" in done["runs"][0]["error"]
    assert [a["outcome"] for a in attempts(runq, fatal)] == ["failed"]
    done = procs.wait_until(lambda: batch_done(runq, flaky), 20, what="the flaky batch to end")
    assert done["runs"][0]["state"] == "finished" and done["runs"][0]["result"] == {"attempt": 2}
    first, second = attempts(runq, flaky)
    assert (first["outcome"], second["outcome"]) == ("failed", "finished")
    gap = dt.datetime.fromisoformat(second["started"]) - dt.datetime.fromisoformat(first["ended"])
    assert gap.total_seconds() >= 0.25          # the backoff (0.3 s here, ticks of 0.5 s) was waited out


def test_missing_program_requeues_to_another_worker_and_takes_the_broken_one_off(runq, tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(BROKEN))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(GOOD))
    bad = worker(runq, "probe", "bad", SIMX_ENGINES=tmp_path / "bad.yaml")
    first = submit(runq, engine="probe", n_runs=1, param={"x": 7}, max_attempts=1)
    view = procs.wait_until(lambda: (w := worker_view(runq, bad)) and w["state"] == "broken" and w,
                            20, what="the worker without the program to be marked broken")
    assert "simx-probe" in view["broken"]
    assert runq.client.request("BatchStatus", batch_id=first, offset=0, limit=1)["runs"][0]["state"] == "waiting"
    good = worker(runq, "probe", "good", SIMX_ENGINES=tmp_path / "good.yaml")
    done = procs.wait_until(lambda: batch_done(runq, first), 20, what="the run to finish elsewhere")
    run = done["runs"][0]
    assert (run["state"], run["result"]["result"]) == ("finished", 7)     # max_attempts 1: the failure used none
    good_id = procs.wait_until(lambda: worker_view(runq, good), 5)["id"]
    assert [(a["outcome"], a["worker_id"]) for a in attempts(runq, first)] == [
        ("failed", view["id"]), ("finished", good_id)]
    more = submit(runq, engine="probe", n_runs=4, param={"x": 1}, max_attempts=1)
    done = procs.wait_until(lambda: batch_done(runq, more), 20, what="the next batch to finish")
    assert {r["worker_id"] for r in done["runs"]} == {good_id}
    assert done["batch"]["n_finished"] == 4
    view = worker_view(runq, bad)
    assert (view["state"], view["connected"]) == ("broken", True) and bad.alive()
