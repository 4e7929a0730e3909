"""runq's Metrics request and runweb's /metrics: the coordinator driven without sockets, the
histogram by hand, the Prometheus rendering, and a real stack whose /metrics matches its API."""
import math
import os
import struct
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import procs
from simx import protocol
from runq.core.metrics import Histogram
from runweb import request_metrics
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
        env = procs.base_env(tmp_path, runq.port)
        directory = request_metrics.location(Path(env["SIMX_VAR"]).resolve(), port, env)
        assert Path(env["SIMX_VAR"]) not in directory.parents     # on memory, not on var/'s disk
        assert os.stat(directory.parent).st_mode & 0o777 == 0o700
        files = list(directory.glob("*.db"))
        assert files, "no multiprocess files"
        for f in files:   # prometheus_client writes the files runweb allocated, and only those
            info = os.stat(f)
            assert f.name.startswith("histogram_") and info.st_blocks * 512 >= info.st_size, (f, info)
        runweb.stop()
        assert "Traceback" not in runweb.log(), runweb.log()   # child_exit hook ran cleanly
        assert not directory.exists(), "on_exit left the directory"
        runweb = procs.start_runweb(tmp_path, runq.port, port=port, workers=2)
        assert procs.http("GET", f"{runweb.url}/batch/1")[0] == 404
        assert request_count(runweb.url, "/batch/{batch_id}") == 1
    finally:
        if runweb is not None:
            runweb.stop()
        runq.stop()


def test_runweb_request_metrics_go_on_memory_in_a_directory_of_this_users_own(tmp_path):
    var = tmp_path / "var"
    run = tmp_path / "run"
    run.mkdir()
    on_memory = request_metrics.location(var, 8097, {"XDG_RUNTIME_DIR": str(run)})
    assert on_memory.parent == run / "simx" and on_memory.name.startswith("runweb-metrics-")
    assert request_metrics.location(tmp_path / "other", 8097, {"XDG_RUNTIME_DIR": str(run)}) != on_memory
    if os.path.isdir("/dev/shm"):
        assert request_metrics.location(var, 8097, {}).parent == Path(f"/dev/shm/simx-{os.getuid()}")
    assert request_metrics.setup(var, 8097, {"XDG_RUNTIME_DIR": str(run)}) == on_memory
    assert os.stat(run / "simx").st_mode & 0o777 == 0o700 and on_memory.is_dir()
    os.chmod(run / "simx", 0o755)      # others may enter: they could have planted files
    import io
    err = io.StringIO()
    assert request_metrics.setup(var, 8097, {"XDG_RUNTIME_DIR": str(run)}, stderr=err) is None
    assert err.getvalue().count("\n") == 1 and "request latency metrics are off" in err.getvalue() \
        and "open to other users" in err.getvalue(), err.getvalue()


def test_a_new_label_set_always_fits_in_the_room_runweb_keeps_allocated():
    """What prometheus_client writes for one (method, route, status) of the histogram (a key per
    bucket and the sum, each padded to 8 bytes with its two doubles) is less than ROOM, for the
    longest route template: its growth always lands on bytes runweb allocated."""
    from prometheus_client.mmap_dict import mmap_key
    from runweb.app import ROUTES
    name, text = "simx_runweb_request_seconds", "runweb request latency in seconds, all gunicorn workers"
    route = max([path for path, *_ in ROUTES] + ["(no route)"], key=len)
    labels = ["method", "route", "status"]
    values = ["OPTIONS", route, "unknown"]
    keys = [mmap_key(name, name + "_sum", labels, values, text)]
    keys += [mmap_key(name, name + "_bucket", labels + ["le"], values + ["+Inf" if b is None else str(b)], text)
             for b in (*request_metrics.BUCKETS, None)]
    size = sum(4 + len(k.encode()) + 8 + 16 for k in keys)
    assert size < request_metrics.ROOM < request_metrics.FIRST_SIZE, size


def test_the_room_is_allocated_ahead_and_a_full_disk_is_an_error_not_a_signal(tmp_path):
    with procs.small_disk(tmp_path / "disk", "256k") as disk:
        f = request_metrics.ProcessFile(disk, 123)
        assert f.path.name == "histogram_123.db" and f.size == request_metrics.FIRST_SIZE
        os.pwrite(f.fd, struct.pack("i", request_metrics.FIRST_SIZE - request_metrics.ROOM + 1), 0)
        f.make_room()
        info = os.stat(f.path)
        assert f.size == info.st_size == 2 * request_metrics.FIRST_SIZE and info.st_blocks * 512 >= info.st_size
        procs.fill_disk(disk)
        os.pwrite(f.fd, struct.pack("i", f.size - 8), 0)
        with pytest.raises(OSError):
            f.make_room()
        with pytest.raises(OSError):
            request_metrics.ProcessFile(disk, 124)
        os.close(f.fd)
