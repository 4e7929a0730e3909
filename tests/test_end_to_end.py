"""The core path as a user runs it: runq + gunicorn runweb + dummy workers on loopback,
the README's example batch posted over HTTP, watched and listed."""
from __future__ import annotations

import time

import yaml

from procs import ROOT, http, wait_until

EXAMPLE = (ROOT / "runweb" / "example" / "batch-req.yaml").read_bytes()


def test_example_batch_runs_in_parallel_on_three_workers(stack):
    for _ in range(3):
        stack.worker()
    wait_until(lambda: len(http("GET", f"{stack.url}/workers")[2]["workers"]) == 3, 20, what="3 workers")
    # curl --data-binary sends a form content type; the body is still read as YAML
    t0 = time.monotonic()
    status, _, body = http("POST", f"{stack.url}/batch/new", EXAMPLE,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status in (200, 201) and body["status"] == "ok", body
    bid = body["batch_id"]

    def done():
        batch = http("GET", f"{stack.url}/batch/{bid}", headers={"Accept": "application/json"})[2]["batch"]
        return batch if batch["state"] == "done" else None
    batch = wait_until(done, 30, what="the example batch to finish")
    wall = time.monotonic() - t0
    single = 5 * 1.0   # step_count 5 x step_delay 1 s
    assert batch["n_complete"] == batch["n_finished"] == 3
    assert wall < 2 * single, f"3 runs took {wall:.1f}s: not in parallel"
    assert single * 0.9 <= batch["execution_time"] < 2 * single

    status, headers, text = http("GET", f"{stack.url}/batch/{bid}")
    assert status == 200 and "yaml" in headers["content-type"]
    assert text["batch"]["name"] == "test123" and text["batch"]["user"] == "topl"
    runs = text["runs"]
    assert [r["batch_index"] for r in runs] == [0, 1, 2]
    assert len({r["worker_id"] for r in runs}) == 3                 # one run per worker
    assert all(r["state"] == "finished" and r["progress"] == 1.0 and r["result"] for r in runs)
    assert text["next_offset"] is None


def test_listings_have_the_original_shapes(stack):
    stack.worker(group="topl")
    wait_until(lambda: http("GET", f"{stack.url}/workers")[2]["workers"], 20, what="a worker")
    http("POST", f"{stack.url}/batch/new", EXAMPLE)
    http("POST", f"{stack.url}/batch/new", "engine: dummy\nn_runs: 2\nuser: ann\nname: Überlauf 東京\n")
    for path in ("/batch", "/batches"):
        status, _, body = http("GET", stack.url + path)
        assert status == 200 and body["status"] == "ok"
        assert [b["id"] for b in body["batches"]] == [1, 2]
        assert {"id", "name", "engine", "n_runs", "n_complete", "state", "start_time", "execution_time",
                "n_waiting", "n_running", "n_finished", "n_failed", "n_cancelled"} <= set(body["batches"][0])
    assert [b["name"] for b in http("GET", f"{stack.url}/user/ann")[2]["batches"]] == ["Überlauf 東京"]
    assert http("GET", f"{stack.url}/user/nobody")[2]["batches"] == []
    for path in ("/worker", "/workers"):
        workers = http("GET", stack.url + path)[2]["workers"]
        assert workers[0]["connected"] is True and workers[0]["group"] == "topl"
        assert {"id", "host", "pid", "engine", "state", "last_contact", "batch_id"} <= set(workers[0])
    first = http("GET", f"{stack.url}/batches?limit=1")[2]
    assert [b["id"] for b in first["batches"]] == [1] and first["next_offset"] == 1
    last = http("GET", f"{stack.url}/batches?offset=1&limit=1")[2]
    assert [b["id"] for b in last["batches"]] == [2] and last["next_offset"] is None
    wid = workers[0]["id"]
    assert http("GET", f"{stack.url}/worker/{wid}")[2]["worker"]["id"] == wid
    assert http("GET", f"{stack.url}/worker/999")[0] == 404
    status, _, page = http("GET", f"{stack.url}/batch/2?offset=1&limit=1")
    assert status == 200 and [r["batch_index"] for r in page["runs"]] == [1] and page["next_offset"] is None
    status, headers, index = http("GET", stack.url + "/")
    assert status == 200 and "yaml" in headers["content-type"]
    assert "/batch/new" in yaml.safe_dump(index)
    assert http("GET", f"{stack.url}/health")[0] == 200


def test_bad_input_gets_a_clear_error_and_stores_nothing(stack):
    cases = [
        ("engine: dummy\nn_runs: [3\n", 400, "YAML"),
        ("n_runs: 3\n", 400, "engine"),
        ("engine: dummy\nn_runs: 0\n", 400, "n_runs"),
        ("engine: dummy\nn_runs: three\n", 400, "n_runs"),
        ("engine: dummy\nn_runs: 3\ncolour: red\n", 400, "colour"),
        ("engine: dummy\nn_runs: 3\nparam: 7\n", 400, "param"),
        ("- just\n- a list\n", 400, "mapping"),
        ("engine: dummy\nn_runs: 1\nname: " + "x" * 2_000_000 + "\n", 413, ""),
    ]
    for body, code, word in cases:
        status, _, reply = http("POST", f"{stack.url}/batch/new", body)
        assert status == code, (body[:40], status, reply)
        assert reply["status"] == "error" and word in reply["message"], reply
    assert http("GET", f"{stack.url}/batches")[2]["batches"] == []
    assert http("GET", f"{stack.url}/batch/99")[0] == 404
    assert http("GET", f"{stack.url}/batch/abc")[0] == 400


def test_runweb_says_503_when_runq_is_away(stack):
    stack.runq.stop()
    status, _, body = http("GET", f"{stack.url}/batches")
    assert status == 503 and body["status"] == "error"
    assert http("GET", f"{stack.url}/health")[0] == 503
