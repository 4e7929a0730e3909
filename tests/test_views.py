"""The API views that scale (issue 8), driven through the coordinator with a real SQLite store:
summary-only status, the ?state= filter against a brute-force listing, results pages, `served`,
engines in Ping, and how a batch ends (done, failed, cancelled; old rows migrated)."""
import random

import pytest

from runq import queries
from runq.core import states
from runq.store import SqlStore
from runweb import results
from test_coordinator import MEMORY, Harness, start


@pytest.fixture
def h(tmp_path):
    harness = Harness(MEMORY)
    yield harness
    harness.close()


def all_runs(h, batch_id):
    return h.request("BatchStatus", batch_id=batch_id, limit=10000)["runs"]


def filtered(h, batch_id, state, limit):
    """Every run in `state`, page by page, checking offset/next_offset as a client follows them."""
    got, offset = [], 0
    while offset is not None:
        reply = h.request("BatchStatus", batch_id=batch_id, state=state, offset=offset, limit=limit)
        assert reply["status"] == "ok", reply
        assert len(reply["runs"]) <= limit
        assert all(r["state"] == state for r in reply["runs"])
        got += reply["runs"]
        assert reply["next_offset"] in (None, len(got))
        offset = reply["next_offset"]
    return got


def mixed_batch(h, n_runs=40, seed=1):
    """A batch with runs in every state: finished, failed, requeued (waiting with a row), running,
    cancelled while running, cancelled alone before dispatch, and never dispatched."""
    rnd = random.Random(seed)
    wids = {c: h.worker(c) for c in ("w0", "w1", "w2", "w3")}
    b = start(h, n_runs, max_attempts=1)
    for _ in range(4):  # cancel a few never-dispatched runs, out of order
        h.request("CancelRun", batch_id=b, batch_index=rnd.randrange(20, n_runs))
    for step in range(13):
        conn = list(wids)[step % 4]
        assign = h.assigned(conn)[-1]
        kind = step % 4 if step < 12 else 2
        if kind == 0:
            h.report(conn, wids[conn], assign)
        elif kind == 1:
            h.report(conn, wids[conn], assign, "WorkerFailedRun", message=f"boom {assign['batch_index']}")
        elif kind == 2:   # the worker stops: its run goes back to waiting (a row), a new worker comes
            h.report(conn, wids[conn], assign, "WorkerStoppedRun")
            if step < 12:
                del wids[conn]
                wids[f"n{step}"] = h.worker(f"n{step}")
        else:
            h.request("CancelRun", batch_id=b, batch_index=assign["batch_index"])
    return b


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("cancel_batch", [False, True])
def test_state_filter_pages_match_the_full_listing(h, cancel_batch, seed):
    b = mixed_batch(h, seed=seed)
    if cancel_batch:
        h.request("CancelBatch", batch_id=b)
    everything = all_runs(h, b)
    seen = {r["state"] for r in everything}
    assert {"finished", "failed", "cancelled"} <= seen and (cancel_batch or {"waiting", "running"} <= seen)
    for state in states.RUN_STATES:
        want = [r for r in everything if r["state"] == state]
        for limit in (1, 3, 7, 1000):
            assert filtered(h, b, state, limit) == want, (state, limit)


def test_state_filter_offset_past_the_end_and_bad_state(h):
    b = mixed_batch(h)
    reply = h.request("BatchStatus", batch_id=b, state="waiting", offset=10_000, limit=5)
    assert (reply["runs"], reply["next_offset"]) == ([], None)
    bad = h.request("BatchStatus", batch_id=b, state="done")
    assert (bad["code"], bad["status"]) == (400, "error") and "state must be one of" in bad["message"]


def test_limit_zero_is_the_summary_alone(h):
    b = start(h, 100_000)
    reply = h.request("BatchStatus", batch_id=b, limit=0)
    assert reply["status"] == "ok" and "runs" not in reply
    assert (reply["batch"]["n_runs"], reply["batch"]["n_waiting"]) == (100_000, 100_000)


def test_waiting_filter_on_a_big_batch_reads_only_its_page(h):
    start(h, 100_000)
    h.worker("w1")
    reply = h.request("BatchStatus", batch_id=1, state="waiting", offset=99_990, limit=20)
    assert [r["batch_index"] for r in reply["runs"]] == list(range(99_991, 100_000))
    assert reply["next_offset"] is None


def test_results_come_in_pages_that_respect_the_byte_budget(h, monkeypatch):
    wid = h.worker("w")
    b = start(h, 5, max_attempts=1)
    for i in range(5):
        assign = h.assigned("w")[-1]
        if i == 2:
            h.report("w", wid, assign, "WorkerFailedRun", message="nope")
        else:
            h.report("w", wid, assign, data={"i": assign["batch_index"], "blob": "x" * 300})
    monkeypatch.setattr(queries, "RESULTS_BUDGET", 900)
    pages = list(results.pages(lambda mtype, **f: h.request(mtype, **f), b, None))
    assert len(pages) > 1 and all(pages)
    flat = [r for p in pages for r in p]
    assert [(r["batch_index"], r["state"]) for r in flat] == [(0, "finished"), (1, "finished"), (2, "failed"),
                                                              (3, "finished"), (4, "finished")]
    assert flat[2]["error"] == "nope" and flat[0]["result"]["i"] == 0
    only = h.request("BatchResults", batch_id=b, state="failed")
    assert [r["batch_index"] for r in only["results"]] == [2] and only["next_start"] is None
    assert h.request("BatchResults", batch_id=99)["code"] == 404


def test_served_follows_connected_non_draining_workers_and_ping_lists_engines(h):
    b = start(h, 2, engine="sim", group="g", user="ann")
    assert h.batch(b)["batch"]["served"] is False
    assert h.request("Ping")["runq"]["engines"] == {}
    h.worker("other", engine="sim", group="h")             # another group: does not match
    assert h.batch(b)["batch"]["served"] is False
    wid = h.worker("w", engine="sim", user="ann")          # wildcard group, same user
    assert h.batch(b)["batch"]["served"] is True
    assert h.request("Ping")["runq"]["engines"] == {"sim": 2}
    assert h.request("BatchList")["batches"][0]["served"] is True
    h.request("DrainWorker", worker_id=wid)
    assert h.batch(b)["batch"]["served"] is False
    h._run(h.coord.disconnected("other", h.now))
    assert h.request("Ping")["runq"]["engines"] == {}


def test_views_say_who_may_cancel_and_drain(h):
    """can_cancel: the batch's owner or an admin, until the batch (run) ends; can_drain: admins,
    connected workers.  The same views through every request that shows them."""
    ann, bob, admin = {"actor": "ann", "admin": False}, {"actor": "bob", "admin": True}, {}
    mine = start(h, 2, actor="ann", admin=False)
    wid = h.worker("w")                                        # takes run 0 of ann's batch
    status = h.request("BatchStatus", batch_id=mine, **ann)
    assert status["batch"]["can_cancel"] is True and [r["can_cancel"] for r in status["runs"]] == [True, True]
    assert h.request("BatchStatus", batch_id=mine, **bob)["batch"]["can_cancel"] is True   # an admin
    assert h.request("BatchList", **ann)["batches"][0]["can_cancel"] is True
    assert h.request("UserStatus", user="ann", **admin)["batches"][0]["can_cancel"] is True
    assert h.request("RunStatus", batch_id=mine, batch_index=0, **ann)["run"]["can_cancel"] is True
    assert [w["can_drain"] for w in h.request("WorkerList", **ann)["workers"]] == [False]
    assert h.request("WorkerStatus", worker_id=wid, **ann)["worker"]["can_drain"] is False
    assert h.request("WorkerStatus", worker_id=wid, **bob)["worker"]["can_drain"] is True
    assert h.request("WorkerStatus", worker_id=wid, **admin)["worker"]["can_drain"] is True

    reply = h.request("CancelRun", batch_id=mine, batch_index=1, **ann)   # the run ended: no more
    assert reply["run"]["can_cancel"] is False and reply["batch"]["can_cancel"] is True
    h.request("CancelBatch", batch_id=mine, **ann)
    status = h.request("BatchStatus", batch_id=mine, **ann)
    assert status["batch"]["can_cancel"] is False and not any(r["can_cancel"] for r in status["runs"])
    h._run(h.coord.disconnected("w", h.now))
    assert h.request("WorkerStatus", worker_id=wid, **admin)["worker"]["can_drain"] is False


def test_batch_ends_failed_when_a_run_failed_and_cancelled_above_all(h):
    wid = h.worker("w")
    b1 = start(h, 2, max_attempts=1)
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", message="x")
    h.report("w", wid, h.assigned("w")[-1])
    assert h.batch(b1)["batch"]["state"] == "failed"
    b2 = start(h, 2, max_attempts=1)
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", message="x")
    h.request("CancelBatch", batch_id=b2)
    assert h.batch(b2)["batch"]["state"] == "cancelled"
    w2 = h.worker("w2")   # w is still letting go of the run taken back
    b3 = start(h, 1)
    h.report("w2", w2, h.assigned("w2")[-1])
    assert h.batch(b3)["batch"]["state"] == "done"


def test_old_done_rows_with_failed_runs_read_as_failed(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    store = SqlStore(url)
    base = dict(name="", group="", user="", engine="dummy", n_runs=1, param={}, max_attempts=1, max_requeues=1,
                time_limit=None, idempotency_key=None, next_index=1, n_waiting=0, n_running=0,
                n_cancelled=0, start_time=1.0, end_time=2.0)
    store.add_batch(dict(base, id=1, state="done", n_finished=0, n_failed=1))
    store.add_batch(dict(base, id=2, state="done", n_finished=1, n_failed=0))
    store.add_batch(dict(base, id=3, idempotency_key="k", state="cancelled", n_finished=0, n_failed=1))
    store.close()
    store = SqlStore(url)
    assert [store.reader().batch_row(i)["state"] for i in (1, 2, 3)] == ["failed", "done", "cancelled"]
    store.close()


def test_csv_flattens_result_keys_with_dots_and_deeper_values_as_json():
    pages = [[{"batch_index": 0, "state": "finished", "error": None,
               "result": {"a": 1, "b": {"c": "x,y", "d": [1, 2]}, "state": "mine"}}],
             [{"batch_index": 1, "state": "failed", "error": "boom", "result": None},
              {"batch_index": 2, "state": "finished", "error": None, "result": "plain"}]]
    names = results.columns(pages)
    assert names == ["a", "b.c", "b.d", "state", "result"]
    text = b"".join(results.csv_stream(pages, names)).decode()
    assert text.splitlines() == [
        "batch_index,state,error,a,b.c,b.d,result.state,result",
        '0,finished,,1,"x,y","[1,2]",mine,',
        "1,failed,boom,,,,,",
        "2,finished,,,,,,plain",
    ]


# ---- the same views through runweb (gunicorn), with real workers
def test_views_over_http_summary_filter_results_served_health(stack):
    import csv
    import io
    import json

    from procs import http, wait_until
    url = stack.url
    JSON = {"Accept": "application/json"}
    assert http("GET", f"{url}/health", headers=JSON)[2]["runq"]["engines"] == {}
    status, _, reply = http("POST", f"{url}/batch/new", {"engine": "dummy", "n_runs": 5, "max_attempts": 1,
                                                         "param": {"step_count": 0}})
    assert status == 201
    b = http("GET", f"{url}/batch/1?runs=none", headers=JSON)[2]
    assert "runs" not in b and b["batch"]["served"] is False and b["batch"]["n_waiting"] == 5
    assert "runs" not in http("GET", f"{url}/batch/1?limit=0", headers=JSON)[2]
    waiting = http("GET", f"{url}/batch/1?state=waiting&offset=2&limit=2", headers=JSON)[2]
    assert [r["batch_index"] for r in waiting["runs"]] == [2, 3] and waiting["next_offset"] == 4

    stack.worker()
    wait_until(lambda: http("GET", f"{url}/health", headers=JSON)[2]["runq"]["engines"] == {"dummy": 1},
               15, what="/health to list the dummy engine")
    done = wait_until(lambda: (lambda r: r if r["batch"]["state"] == "done" else None)(
        http("GET", f"{url}/batch/1?runs=none", headers=JSON)[2]), 15, what="batch 1 done")
    assert done["batch"]["served"] is True
    finished = http("GET", f"{url}/batch/1?state=finished&limit=3", headers=JSON)[2]
    assert [r["batch_index"] for r in finished["runs"]] == [0, 1, 2] and finished["next_offset"] == 3
    assert http("GET", f"{url}/batch/1?state=finished&offset=3", headers=JSON)[2]["next_offset"] is None

    status, headers, text = http("GET", f"{url}/batch/1/results")
    assert status == 200 and headers["content-type"].startswith("application/x-ndjson")
    assert headers.get("transfer-encoding") == "chunked" or "content-length" not in headers
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(r["batch_index"], r["state"]) for r in lines] == [(i, "finished") for i in range(5)]
    for query, headers in (("?format=csv", {}), ("", {"Accept": "text/csv"})):
        status, got, text = http("GET", f"{url}/batch/1/results{query}", headers=headers)
        assert status == 200 and got["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["batch_index"], r["state"], r["result"]) for r in rows] == [
            (str(i), "finished", f"dummy run {i} of batch 1: 0 steps") for i in range(5)]
    assert http("GET", f"{url}/batch/9/results", headers=JSON)[0] == 404
    assert http("GET", f"{url}/batch/1/results?format=xml", headers=JSON)[0] == 400

    # a batch whose runs fail ends `failed`; one cancelled ends `cancelled`; nobody serves engine `nope`
    http("POST", f"{url}/batch/new", {"engine": "dummy", "n_runs": 2, "max_attempts": 1,
                                      "param": {"step_count": 0, "fail": "bad"}})
    failed = wait_until(lambda: (lambda b: b if b["state"] == "failed" else None)(
        http("GET", f"{url}/batch/2?runs=none", headers=JSON)[2]["batch"]), 15, what="batch 2 failed")
    assert failed["n_failed"] == 2
    status, _, text = http("GET", f"{url}/batch/2/results?state=failed")
    assert [json.loads(line)["error"] for line in text.splitlines()] == ["RuntimeError: bad"] * 2
    # declared (conf/engines.yaml) but no worker runs it; an undeclared engine is refused at submit
    http("POST", f"{url}/batch/new", {"engine": "calibration", "n_runs": 3,
                                      "param": {"arrival_rate": 500, "target_delay": 30}})
    assert http("GET", f"{url}/batch/3?runs=none", headers=JSON)[2]["batch"]["served"] is False
    assert http("POST", f"{url}/batch/3/cancel", headers=JSON)[2]["batch"]["state"] == "cancelled"
    cancelled = http("GET", f"{url}/batch/3?state=cancelled", headers=JSON)[2]
    assert [r["batch_index"] for r in cancelled["runs"]] == [0, 1, 2]


def test_a_form_encoded_one_line_body_gets_the_data_binary_hint(stack):
    from procs import ROOT, http
    body = (ROOT / "runweb/example/batch-req.yaml").read_bytes().replace(b"\n", b"")   # what curl -d sends
    status, _, reply = http("POST", f"{stack.url}/batch/new", body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "malformed YAML" in reply["message"] and "--data-binary" in reply["message"]
    status, _, reply = http("POST", f"{stack.url}/batch/new", b"engine: dummy\nn_runs: [\n",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "--data-binary" not in reply["message"]   # real YAML errors stay as they are
