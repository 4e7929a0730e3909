"""gunicorn server hooks for runweb (``gunicorn -c python:runweb.gunicorn_hooks``).

``child_exit``: a gunicorn worker died or was replaced; prometheus_client's
multiprocess mode forgets its live gauges (see runweb/request_metrics.py).
``on_exit``: runweb stops; its request-metrics directory goes (it is on memory).
"""
import os
import shutil

from runweb import request_metrics


def child_exit(server, worker):
    if request_metrics.enabled():
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if request_metrics.enabled():
        shutil.rmtree(os.environ[request_metrics.ENV], ignore_errors=True)
