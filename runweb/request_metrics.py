"""runweb's own request latency, summed over gunicorn's worker processes.

Each gunicorn worker is a process with its own memory, so a plain counter would
show one worker's share, whichever answered the scrape.  prometheus_client's
multiprocess mode keeps every process's values in files under
``PROMETHEUS_MULTIPROC_DIR`` and adds them up when /metrics is read.
``python -m runweb`` gives each instance its own directory
(``<run-time dir>/runweb-metrics-<port>``), emptied at start so that values of
a previous instance never leak in, and gunicorn's ``child_exit`` hook
(runweb/gunicorn_hooks.py) marks a dead worker's files.  Without that
variable (tests in one process, ``gunicorn`` started by hand) nothing is
recorded and /metrics shows runq's figures only.

Labels are bounded: the route template (``/batch/{batch_id}``, never the raw
path), the method and the status class.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def prepare(directory: Path) -> Path:
    """An empty directory for one runweb instance's per-process files (called before gunicorn starts)."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    return directory


def enabled(env=os.environ) -> bool:
    return bool(env.get(ENV)) and Path(env[ENV]).is_dir()


class Timing:
    """Middleware: observe each request's duration, when multiprocess mode is set up."""

    def __init__(self, env=os.environ, clock=time.perf_counter):
        self.clock = clock
        self.histogram = None
        if enabled(env):
            from prometheus_client import Histogram
            self.histogram = Histogram("simx_runweb_request_seconds", "runweb request latency in seconds, "
                                       "all gunicorn workers", ["method", "route", "status"], buckets=BUCKETS,
                                       registry=None)

    def process_request(self, req, resp) -> None:
        req.context.started = self.clock()

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        if self.histogram is None or not hasattr(req.context, "started"):
            return
        route = req.uri_template if resource is not None and req.uri_template else "(no route)"
        method = req.method if req.method in METHODS else "OTHER"
        status = str(resp.status)[:1] + "xx" if resp.status else "unknown"
        self.histogram.labels(method, route, status).observe(self.clock() - req.context.started)


def collect_into(registry) -> None:
    """Add every worker process's values to `registry` (for GET /metrics)."""
    if enabled():
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry)
