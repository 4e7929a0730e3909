"""GET /metrics: runq's figures in Prometheus text format.

One ``Metrics`` request to runq per scrape; its reply (built by
runq/metrics.py from runq's memory) becomes metric families through a custom
prometheus_client Collector registered in a fresh registry, so every gunicorn
worker answers the same numbers and nothing is kept between requests.
runweb's own request latency is added from every gunicorn worker's files
when multiprocess mode is set up (runweb/request_metrics.py).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from simx.protocol import ProtocolError

from . import request_metrics
from .resources import ask_plain

# The classic text format: what every Prometheus scrapes (our names are plain ASCII).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HISTOGRAMS = {
    "dispatch_latency_seconds": "Seconds a run waited from becoming ready (batch submitted, attempt "
                                "requeued) to its dispatch to a worker",
    "commit_latency_seconds": "Seconds runq took to commit one loop turn's writes to its database",
}


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"Metrics reply: {what} is not a number")
    return value


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"Metrics reply: {what} is not a mapping")
    return value


class RunqCollector:
    """Metric families from one Metrics reply."""

    def __init__(self, reply: dict):
        self.reply = reply

    def collect(self):
        r = self.reply
        yield self._gauge("simx_runs", "Runs by state, in every batch runq holds", "state", r.get("runs"))
        yield self._gauge("simx_batches", "Batches by state", "state", r.get("batches"))
        yield self._gauge("simx_queue_depth", "Waiting runs of active batches, by engine", "engine", r.get("queue"))
        workers = GaugeMetricFamily("simx_workers", "Workers runq knows, by engine and state",
                                    labels=["engine", "state"])
        for row in r.get("workers") or []:
            row = _mapping(row, "a workers entry")
            workers.add_metric([str(row.get("engine")), str(row.get("state"))], _number(row.get("count"), "count"))
        yield workers
        totals = _mapping(r.get("totals") or {}, "totals")
        for key, text in (("dispatched", "Runs handed to workers (attempts started) since runq started"),
                          ("finished", "Runs that ended finished since runq started"),
                          ("failed", "Runs that ended failed (attempts used up) since runq started")):
            yield CounterMetricFamily(f"simx_runs_{key}", text, value=_number(totals.get(key, 0), key))
        attempts = CounterMetricFamily("simx_attempts", "Attempts ended since runq started, by outcome",
                                       labels=["outcome"])
        for outcome, n in _mapping(totals.get("attempts") or {}, "attempts").items():
            attempts.add_metric([outcome], _number(n, outcome))
        yield attempts
        hists = _mapping(r.get("histograms") or {}, "histograms")
        for name, text in HISTOGRAMS.items():
            h = _mapping(hists.get(name) or {"buckets": [["+Inf", 0]], "sum": 0}, name)
            buckets = [("+Inf" if b == "+Inf" else str(float(_number(b, name))), _number(n, name))
                       for b, n in h.get("buckets", [])]
            yield HistogramMetricFamily(f"simx_{name}", text, buckets=buckets, sum_value=_number(h.get("sum", 0), name))
        yield GaugeMetricFamily("simx_runq_uptime_seconds", "Seconds since runq started",
                                value=_number(r.get("uptime", 0), "uptime"))

    @staticmethod
    def _gauge(name: str, text: str, label: str, values) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, text, labels=[label])
        for key, n in sorted(_mapping(values or {}, name).items()):
            family.add_metric([key], _number(n, f"{name}{{{label}={key!r}}}"))
        return family


def render(reply: dict) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunqCollector(reply))
    request_metrics.collect_into(registry)
    return generate_latest(registry)


class Metrics:
    """GET /metrics: Prometheus text from one Metrics request to runq."""

    def __init__(self, client):
        self.client = client

    def on_get(self, req, resp):
        body = render(ask_plain(self.client, "Metrics"))
        resp.content_type = CONTENT_TYPE
        resp.data = body
