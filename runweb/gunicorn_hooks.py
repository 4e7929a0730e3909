"""gunicorn server hooks for runweb (``gunicorn -c python:runweb.gunicorn_hooks``).

``child_exit``: a gunicorn worker died or was replaced; prometheus_client's
multiprocess mode forgets its live gauges (see runweb/request_metrics.py).
"""
from runweb import request_metrics


def child_exit(server, worker):
    if request_metrics.enabled():
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
