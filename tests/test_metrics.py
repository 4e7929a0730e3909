"""runq's Metrics request and runweb's /metrics: the coordinator driven without sockets, the
histogram by hand, the Prometheus rendering, and a real stack whose /metrics matches its API."""
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

import procs
from simx import protocol
from runq.core.metrics import Histogram
from runweb.metrics import render
from test_coordinator import MEMORY, Harness


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, sample: str | None = None, **labels) -> float:
    fam = fams[name]
    hits = [s.value for s in fam.samples if s.name == (sample or name) and all(s.labels.get(k) == v
                                                                              for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, fam.samples)
    return hits[0]


def test_histogram_buckets_are_cumulative_with_inf_last():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0, -1.0):
        h.observe(v)
    assert h.view() == {"buckets": [[0.1, 3], [1.0, 4], ["+Inf", 5]], "sum": 3.65, "count": 5}


def test_metrics_request_counts_runs_workers_queue_and_latency(tmp_path):
    h = Harness(MEMORY)
    w1 = h.worker("w1")
    h.worker("w2", engine="other")
    h.request("StartBatch", engine="dummy", n_runs=4, max_attempts=1)
    h.now += 2.0
    (a1,) = h.assigned("w1")
    h.report("w1", w1, a1)                                     # finished after waiting 0 s
    h.now += 1.0
    (_, a2) = h.assigned("w1")
    h.report("w1", w1, a2, mtype="WorkerFailedRun")            # failed, waited 2 s
    m = h.request("Metrics")
    assert m["status"] == "ok"
    assert m["runs"] == {"waiting": 1, "running": 1, "finished": 1, "failed": 1, "cancelled": 0}
    assert m["queue"] == {"dummy": 1, "other": 0}
    assert m["batches"] == {"active": 1}
    assert {(w["engine"], w["state"]): w["count"] for w in m["workers"]} == {("dummy", "busy"): 1, ("other", "idle"): 1}
    assert m["totals"] == {"dispatched": 3, "finished": 1, "failed": 1, "attempts": {"failed": 1, "finished": 1}}
    dispatch = m["histograms"]["dispatch_latency_seconds"]
    assert dispatch["count"] == 3 and dispatch["sum"] == pytest.approx(0 + 2 + 3)
    h.request("CancelBatch", batch_id=1)
    m = h.request("Metrics")
    assert m["runs"] == {"waiting": 0, "running": 0, "finished": 1, "failed": 1, "cancelled": 2}
    assert m["batches"] == {"cancelled": 1} and m["queue"] == {"dummy": 0, "other": 0}
    h.restart()   # ended batches are counted again from the store
    m = h.request("Metrics")
    assert m["runs"] == {"waiting": 0, "running": 0, "finished": 1, "failed": 1, "cancelled": 2}
    assert m["batches"] == {"cancelled": 1} and m["totals"]["dispatched"] == 0


def test_render_is_prometheus_text_the_parser_reads(tmp_path):
    h = Harness(MEMORY)
    w = h.worker("w1")
    h.request("StartBatch", engine="dummy", n_runs=2)
    h.report("w1", w, h.assigned("w1")[0])
    commits = h.store.commits   # each turn that wrote was committed, and the core told so
    reply = h.request("Metrics")
    fams = families(render({k: v for k, v in reply.items() if k not in ("type", "code")}).decode())
    assert value(fams, "simx_runs", state="finished") == 1
    assert value(fams, "simx_runs", state="running") == 1
    assert value(fams, "simx_queue_depth", engine="dummy") == 0
    assert value(fams, "simx_runs_dispatched", "simx_runs_dispatched_total") == 2
    assert value(fams, "simx_workers", engine="dummy", state="busy") == 1
    assert value(fams, "simx_commit_latency_seconds", "simx_commit_latency_seconds_count") == commits > 0
    assert value(fams, "simx_dispatch_latency_seconds", "simx_dispatch_latency_seconds_bucket", le="+Inf") == 2


@pytest.mark.parametrize("bad", [{"runs": {"x": "1"}}, {"runs": [1]}, {"workers": [{"count": None}]},
                                 {"histograms": {"commit_latency_seconds": {"buckets": [["x", 1]]}}}])
def test_render_refuses_a_malformed_reply_naming_it(bad):
    with pytest.raises(protocol.ProtocolError, match="Metrics reply"):
        render(bad)


def test_metrics_endpoint_matches_the_api_after_a_batch(stack):
    """A real stack: /metrics, parsed by prometheus_client, agrees with GET /batch/N and /worker."""
    for _ in range(2):
        stack.worker()
    procs.wait_until(lambda: len(procs.workers_connected(stack.runq_port)) == 2, 15, what="2 workers")
    spec = {"name": "m", "engine": "dummy", "n_runs": 6, "max_attempts": 1,
            "param": {"step_count": 1, "step_delay": 0.01, "fail": "odd one out", "fail_attempts": 0}}
    status, _, reply = procs.http("POST", f"{stack.url}/batch/new", spec)
    assert status == 201, reply
    spec2 = dict(spec, name="bad", param={"step_count": 1, "step_delay": 0.01, "fail": "boom"}, n_runs=2)
    assert procs.http("POST", f"{stack.url}/batch/new", spec2)[0] == 201

    def ended():
        batches = procs.http("GET", f"{stack.url}/batch", headers={"Accept": "application/json"})[2]["batches"]
        return batches if all(b["end_time"] for b in batches) else None
    batches = procs.wait_until(ended, 30, what="both batches to end")
    status, headers, text = procs.http("GET", f"{stack.url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), text
    fams = families(text)
    for state in ("waiting", "running", "finished", "failed", "cancelled"):
        assert value(fams, "simx_runs", state=state) == sum(b["n_" + state] for b in batches), state
    assert sum(b["n_finished"] for b in batches) == 6 and sum(b["n_failed"] for b in batches) == 2
    assert value(fams, "simx_runs_finished", "simx_runs_finished_total") == 6
    assert value(fams, "simx_runs_failed", "simx_runs_failed_total") == 2
    assert value(fams, "simx_runs_dispatched", "simx_runs_dispatched_total") == 8
    assert value(fams, "simx_dispatch_latency_seconds", "simx_dispatch_latency_seconds_count") == 8
    assert value(fams, "simx_commit_latency_seconds", "simx_commit_latency_seconds_count") >= 1
    assert value(fams, "simx_queue_depth", engine="dummy") == 0
    workers = procs.http("GET", f"{stack.url}/worker", headers={"Accept": "application/json"})[2]["workers"]
    for w in workers:
        want = sum(1 for x in workers if (x["engine"], x["state"]) == (w["engine"], w["state"]))
        assert value(fams, "simx_workers", engine=w["engine"], state=w["state"]) == want
    # every gunicorn worker answers the same: ask several times
    again = [families(procs.http("GET", f"{stack.url}/metrics")[2]) for _ in range(4)]
    assert {value(f, "simx_runs_finished", "simx_runs_finished_total") for f in again} == {6}
    assert math.isfinite(value(fams, "simx_runq_uptime_seconds"))


def request_count(url: str, route: str) -> float:
    fams = families(procs.http("GET", f"{url}/metrics")[2])
    return sum(s.value for s in fams["simx_runweb_request_seconds"].samples
               if s.name == "simx_runweb_request_seconds_count" and s.labels["route"] == route)


def test_runweb_request_latency_is_summed_over_gunicorn_workers(tmp_path):
    """Two gunicorn workers answer; /metrics (whichever answers) counts every request once, by route
    template; a new instance on the same port starts from zero."""
    runq = procs.start_runq(tmp_path)
    port = procs.free_port()
    runweb = None
    try:
        runweb = procs.start_runweb(tmp_path, runq.port, port=port, workers=2)
        for i in range(20):
            assert procs.http("GET", f"{runweb.url}/batch/{i + 1}")[0] == 404
        counts = {request_count(runweb.url, "/batch/{batch_id}") for _ in range(4)}
        assert counts == {20.0}
        routes = {s.labels["route"] for s in families(procs.http("GET", f"{runweb.url}/metrics")[2])[
            "simx_runweb_request_seconds"].samples}
        assert "/batch/{batch_id}" in routes and not any(ch.isdigit() for r in routes for ch in r)  # templates only
        files = list((tmp_path / "var" / f"runweb-metrics-{port}").glob("*.db"))
        assert files, "no multiprocess files"
        runweb.stop()
        assert "Traceback" not in runweb.log(), runweb.log()   # child_exit hook ran cleanly
        runweb = procs.start_runweb(tmp_path, runq.port, port=port, workers=2)
        assert procs.http("GET", f"{runweb.url}/batch/1")[0] == 404
        assert request_count(runweb.url, "/batch/{batch_id}") == 1
    finally:
        if runweb is not None:
            runweb.stop()
        runq.stop()
