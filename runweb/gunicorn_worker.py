"""runweb's gunicorn worker class: gthread, whose errors speak the API's format.
"""
from __future__ import annotations

from gunicorn.workers import gthread


class ThreadWorker(gthread.ThreadWorker):
    pass
