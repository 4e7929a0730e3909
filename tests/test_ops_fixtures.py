"""The shared test helpers themselves (tests/procs.py, the `stack` fixture), on real processes."""
from __future__ import annotations

import time

import pytest

from procs import base_env, free_port, http, start_runq, wait_until, workers_connected


def test_wait_until_returns_the_value_or_says_what_it_waited_for():
    assert wait_until(lambda: 42, 1) == 42
    with pytest.raises(AssertionError, match="timed out after 0.1 s waiting for the moon"):
        wait_until(lambda: False, 0.1, what="the moon")


def test_a_process_that_dies_at_start_is_reported_with_its_log(tmp_path):
    port = free_port()
    env = base_env(tmp_path, port, RUNQ_HEARTBEAT="-1")  # a configuration error: runq exits at once
    with pytest.raises(AssertionError, match=r"(?s)exited with 2.*heartbeat_interval"):
        start_runq(tmp_path, port=port, env=env)


def test_stack_runs_a_batch_over_http_on_parallel_workers(stack):
    for _ in range(3):
        stack.worker()
    wait_until(lambda: len(workers_connected(stack.runq_port)) == 3, 20, what="3 connected workers")
    body = {"name": "fixture", "engine": "dummy", "n_runs": 3, "param": {"step_count": 4, "step_delay": 0.5}}
    status, headers, reply = http("POST", f"{stack.url}/batch/new", body)
    assert status == 201 and "yaml" in headers["content-type"], reply
    started = time.monotonic()

    def done():
        status, headers, got = http("GET", f"{stack.url}/batch/{reply['batch_id']}",
                                    headers={"Accept": "application/json"})
        assert status == 200 and "json" in headers["content-type"]
        return got if got["batch"]["state"] == "done" else None
    final = wait_until(done, 30, interval=0.1, what="the batch to finish")
    assert time.monotonic() - started < 2 * 4 * 0.5 + 1.5  # parallel: well under 3 runs x 2 s
    assert [r["state"] for r in final["runs"]] == ["finished"] * 3
    assert len({r["worker_id"] for r in final["runs"]}) == 3
    assert http("GET", f"{stack.url}/batch/999999")[0] == 404
