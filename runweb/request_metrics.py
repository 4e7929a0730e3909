"""runweb's own request latency, summed over gunicorn's worker processes.

Each gunicorn worker is a process with its own memory, so a plain counter would
show one worker's share, whichever answered the scrape.  prometheus_client's
multiprocess mode keeps every process's values in files under
``PROMETHEUS_MULTIPROC_DIR`` and adds them up when /metrics is read.
``python -m runweb`` gives each instance its own directory, emptied at start so
that values of a previous instance never leak in, and gunicorn's hooks
(runweb/gunicorn_hooks.py) mark a dead worker's files and remove the directory
at exit.  Without that variable (tests in one process, ``gunicorn`` started by
hand) nothing is recorded and /metrics shows runq's figures only.

**A full disk never kills a worker.**  prometheus_client maps each process's
file and grows it with ``truncate()``, which allocates nothing: once the disk
is full, the first store into a new page of the map is SIGBUS, the worker dies,
gunicorn starts another, which dies the same way.  So the directory is on
memory, away from var/'s disk (``$XDG_RUNTIME_DIR/simx``, else
``/dev/shm/simx-UID``: private to this user, refused when someone else's;
var/ only where neither exists), and every byte of a process's file is
allocated with ``posix_fallocate`` before prometheus_client may write it
(``ProcessFile``).  When that fails (memory or disk full, a directory swept at
logout), the process stops recording, says so once, and answers as before.

Labels are bounded: the route template (``/batch/{batch_id}``, never the raw
path), the method and the status class.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path

from simx import private

ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
SHM = "/dev/shm"
FIRST_SIZE = 1 << 16   # a process's file at start: prometheus_client's own first size, so both double alike
ROOM = 1 << 14         # bytes kept allocated past what the file uses: more than one new label set takes
_USED = struct.Struct("i")   # the file's first 4 bytes: how many bytes of it are used (prometheus_client's format)

log = logging.getLogger(__name__)


def location(var: Path, port: int, env=os.environ) -> Path:
    """Where one instance (run-time directory and port) keeps its files: on memory if it can."""
    if env.get("XDG_RUNTIME_DIR") or os.path.isdir(SHM):
        digest = hashlib.sha1(str(var).encode()).hexdigest()[:12]
        return private.runtime_base(env, SHM) / f"runweb-metrics-{digest}-{port}"
    return Path(var) / f"runweb-metrics-{port}"


def setup(var: Path, port: int, env=os.environ, stderr=sys.stderr) -> Path | None:
    """The empty directory of one instance's files (called before gunicorn starts), or None,
    after one warning, when it cannot be made: runweb then records no request latency."""
    directory = location(var, port, env)
    try:
        if directory.parent != Path(var):
            private.ensure(directory.parent, "runweb's request metrics")
        return prepare(directory)
    except (private.NotPrivate, OSError) as exc:
        print(f"runweb: warning: request latency metrics are off: {exc}", file=stderr, flush=True)
        return None


def prepare(directory: Path) -> Path:
    """An empty directory for one runweb instance's per-process files."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    return directory


def enabled(env=os.environ) -> bool:
    return bool(env.get(ENV)) and Path(env[ENV]).is_dir()


class ProcessFile:
    """This process's values file, every byte allocated before prometheus_client writes it.

    prometheus_client opens the file made here (its name: ``histogram_PID.db``) and takes
    its size as its capacity; it doubles that when a new label set does not fit.  Before
    each new label set, ``make_room`` allocates the double already when fewer than ROOM
    bytes are left past the used count, so prometheus_client's growth lands on allocated
    bytes (it never gets more than one doubling behind, as ROOM < FIRST_SIZE)."""

    def __init__(self, directory: Path, pid: int, size: int = FIRST_SIZE):
        self.path = Path(directory) / f"histogram_{pid}.db"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self.size = max(size, os.fstat(self.fd).st_size)   # (a dead worker's, if its pid came back)
            os.posix_fallocate(self.fd, 0, self.size)
        except OSError:
            os.close(self.fd)
            raise

    def used(self) -> int:
        return _USED.unpack(os.pread(self.fd, _USED.size, 0))[0]

    def make_room(self) -> None:
        """ROOM allocated bytes past the used ones; OSError when the space cannot be had."""
        while self.used() + ROOM > self.size:
            os.posix_fallocate(self.fd, 0, self.size * 2)
            self.size *= 2


class Timing:
    """Middleware: observe each request's duration, when multiprocess mode is set up."""

    def __init__(self, env=os.environ, clock=time.perf_counter, pid=os.getpid):
        self.clock = clock
        self.histogram = None
        self.seen: set[tuple] = set()   # label sets whose entries the file holds
        self.lock = threading.Lock()
        if not enabled(env):
            return
        try:
            self.file = ProcessFile(Path(env[ENV]), pid())
        except OSError as exc:
            self._off(f"cannot allocate its file: {exc}")
            return
        from prometheus_client import Histogram
        self.histogram = Histogram("simx_runweb_request_seconds", "runweb request latency in seconds, "
                                   "all gunicorn workers", ["method", "route", "status"], buckets=BUCKETS,
                                   registry=None)

    def process_request(self, req, resp) -> None:
        req.context.started = self.clock()

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        histogram = self.histogram
        if histogram is None or not hasattr(req.context, "started"):
            return
        route = req.uri_template if resource is not None and req.uri_template else "(no route)"
        method = req.method if req.method in METHODS else "OTHER"
        status = str(resp.status)[:1] + "xx" if resp.status else "unknown"
        labels = (method, route, status)
        if labels in self.seen or self._admit(labels):
            histogram.labels(*labels).observe(self.clock() - req.context.started)

    def _admit(self, labels: tuple) -> bool:
        """Make room for a new label set's entries, which prometheus_client writes at .labels()."""
        with self.lock:
            if self.histogram is None:
                return False
            if labels not in self.seen:
                try:
                    self.file.make_room()
                except OSError as exc:
                    self._off(f"cannot grow {self.file.path}: {exc}")
                    return False
                self.histogram.labels(*labels)
                self.seen.add(labels)
            return True

    def _off(self, why: str) -> None:
        self.histogram = None
        log.warning("runweb: request latency metrics are off in process %d: %s (runq's metrics are still "
                    "served)", os.getpid(), why)


def collect_into(registry) -> None:
    """Add every worker process's values to `registry` (for GET /metrics)."""
    if enabled():
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry)
