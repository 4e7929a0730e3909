"""One run being computed: its engine call, its progress and its outcome; and the engine thread.

The loop thread owns everything else; the two threads share only what is
guarded here (the latest progress, the outcome) and talk through ``wake()``,
which writes to the loop's wakeup socket.  A Job never touches the network.

Runs are computed by one long-lived ``EngineThread`` (a thread per run cost
about 60 us of CPU to create, start and reap), or inline on the loop thread
when the engine declares a run trivial (``Engine.runs_inline(param)``, e.g. a
zero-step dummy run): the link cannot be held up by a run that never waits.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import traceback

from simx import protocol

from .engines.base import Aborted, Engine, RunContext, failure_kind

log = logging.getLogger("worker")

TRACEBACK_CHARS = 4000
TRACEBACK_LINE = 1000
MESSAGE_CHARS = 4000
PROGRESS_MESSAGE_CHARS = 1000
# Leave room in the 10 MiB frame for the envelope of WorkerFinishedRun.
MAX_DATA_BYTES = protocol.MAX_FRAME - 64 * 1024


def run_name(key) -> str:
    """How logs name a run: batch/index#attempt."""
    return "-" if key is None else f"{key[0]}/{key[1]}#{key[2]}"


def jsonable(data):
    """The engine's result as runq will store it: JSON as is, anything else as its str()."""
    if type(data) is str and data.isascii() and len(data) <= MAX_DATA_BYTES // 6:
        return data   # fits as it is (JSON escapes an ASCII character into at most 6)
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        data = str(data)
        text = json.dumps(data, ensure_ascii=False)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DATA_BYTES:
        raise ValueError(f"result of {len(text)} characters is too large to send to runq")
    problem = protocol.nested_problem(data)   # what runq would refuse: fail the run with the reason instead
    if problem is not None:
        raise ValueError(f"the result {problem}; runq accepts none of that")
    return data


def traceback_tail(exc: BaseException) -> str:
    """The end of the traceback, with long lines (a huge exception message) cut in the middle
    so that the frames still fit in the tail."""
    chunks = traceback.TracebackException.from_exception(exc).format()
    text = "".join(c if len(c) <= TRACEBACK_LINE else f"{c[:TRACEBACK_LINE // 2]} ... {c[-TRACEBACK_LINE // 2:]}"
                   for c in chunks)
    return text[-TRACEBACK_CHARS:]


class Job:
    """An assigned run: starts the engine in a thread and holds what the loop reports."""

    __slots__ = ("key", "param", "context", "engine", "wake", "abort", "abort_reason", "report", "_lock",
                 "_progress", "_outcome", "_waiter", "thread", "started")
    # One lock for every job: what it guards is a few assignments, and a lock per run cost
    # its making and freeing on the loop thread (the engine threads never hold it long).
    _shared_lock = threading.Lock()

    def __init__(self, assignment: dict, engine: Engine, worker_id: int | None, wake):
        batch_id, index, attempt = assignment["batch_id"], assignment["batch_index"], assignment["attempt"]
        self.key = (batch_id, index, attempt)
        self.param = assignment["param"]
        self.context = RunContext(batch_id, index, attempt, worker_id, assignment.get("time_limit"))
        self.engine = engine
        self.wake = wake
        self.abort = AbortFlag()
        self.abort_reason: str | None = None
        # Set by the loop once it has turned the outcome (or a stop) into a report;
        # from then on the run is no longer "being computed" as far as runq is told.
        self.report: str | None = None
        self._lock = Job._shared_lock
        self._progress: tuple[float, str | None] | None = None
        self._outcome: tuple[str, dict] | None = None
        self._waiter: threading.Event | None = None  # made only if someone waits (exit, tests)
        self.thread: threading.Thread | None = None  # the thread computing it (None: inline or not started)
        self.started = 0.0  # the loop's time when it started the run (set by the session)

    def start(self, runner: "EngineThread | None" = None) -> None:
        """Compute inline if the engine says the run is trivial, else on ``runner`` (a thread of its own
        without one)."""
        runs_inline = getattr(self.engine, "runs_inline", None)
        if runs_inline is not None and _inline_ok(runs_inline, self.param):
            self._publish(self._compute(), wake=False)  # the loop collects it in this very turn
        elif runner is not None:
            runner.submit(self)
        else:
            self.thread = threading.Thread(target=self.run, name=f"engine-{run_name(self.key)}", daemon=True)
            self.thread.start()

    def done(self) -> bool:
        """True once the outcome is there."""
        return self._outcome is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the outcome; True once it is there."""
        with self._lock:
            if self._outcome is not None:
                return True
            if self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        return waiter.wait(timeout)

    # -- engine thread -------------------------------------------------------

    def progress(self, fraction, message=None) -> None:
        """The callback handed to the engine; cheap, so engines may call it in tight loops."""
        fraction = float(fraction)
        if math.isnan(fraction):
            return
        fraction = min(1.0, max(0.0, fraction))
        if message is not None:
            message = protocol.clean_text(str(message)[:PROGRESS_MESSAGE_CHARS])
        with self._lock:
            was_clean = self._progress is None
            self._progress = (fraction, message)
        if was_clean:  # one wakeup per batch of updates, however fast the engine reports
            self.wake()

    def run(self) -> None:
        """Compute and publish the outcome (on the thread that calls it)."""
        self._publish(self._compute())

    def _compute(self) -> tuple[str, dict]:
        try:
            data = self.engine.run(self.param, self.progress, self.abort, self.context)
            return "WorkerFinishedRun", {"data": jsonable(data)}
        except BaseException as exc:  # the thread's boundary: any escape is the run's outcome
            return self._failure(exc)

    def _publish(self, outcome: tuple[str, dict], wake: bool = True) -> None:
        with self._lock:
            self._outcome = outcome
            waiter = self._waiter
        if waiter is not None:
            waiter.set()
        if wake:
            self.wake()

    def _failure(self, exc: BaseException) -> tuple[str, dict]:
        if self.abort.is_set():
            # Whatever the engine raised after being told to stop, the run was aborted.
            return "WorkerAbortedRun", {"message": protocol.clean_text(self.abort_reason or str(exc) or "aborted")}
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, Aborted):
            message = f"engine raised Aborted without an abort request ({message})"
        # NUL or a lone surrogate in an exception's text would make the report unsendable
        return "WorkerFailedRun", {"message": protocol.clean_text(message[-MESSAGE_CHARS:]),
                                   "traceback": protocol.clean_text(traceback_tail(exc)), "kind": failure_kind(exc)}

    # -- loop thread -----------------------------------------------------------

    def request_abort(self, reason: str) -> None:
        if not self.abort.is_set():
            self.abort_reason = reason
            self.abort.set()

    def take_progress(self) -> tuple[float, str | None] | None:
        """The latest progress not yet taken, or None."""
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def has_progress(self) -> bool:
        return self._progress is not None

    def outcome(self) -> tuple[str, dict] | None:
        """(report type, fields) once the engine has returned or raised, else None."""
        return self._outcome   # one reference, set once (under the lock, for wait()): read as it is


class AbortFlag:
    """What an engine's ``abort`` is: a ``threading.Event`` (is_set, wait, set) made of one lock.

    threading.Event builds a Condition: about 5 us per run, a tenth of a zero-step run's cost.
    The lock is made by the first ``wait`` (most runs never wait: a zero-step run only asks
    ``is_set``), under one lock shared by all flags so that ``set`` cannot miss it.  It is held
    while the flag is clear; ``set`` releases it, and each waiter that gets it hands it on, so
    every waiter wakes.
    """

    __slots__ = ("_set", "_lock")
    _making = threading.Lock()   # orders a first wait() against set(): both look under it

    def __init__(self):
        self._set = False
        self._lock: threading.Lock | None = None

    def is_set(self) -> bool:
        return self._set

    isSet = is_set

    def set(self) -> None:
        with AbortFlag._making:
            if self._set:
                return
            self._set = True
            lock = self._lock
        if lock is not None:
            lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        with AbortFlag._making:
            if self._set:
                return True
            lock = self._lock
            if lock is None:
                lock = self._lock = threading.Lock()
                lock.acquire()
        if timeout is None:
            got = lock.acquire()
        else:
            got = lock.acquire(timeout=max(0.0, timeout))
        if got:
            lock.release()   # hand it on to the next waiter
        return self._set


def _inline_ok(runs_inline, param) -> bool:
    try:
        return bool(runs_inline(param))
    except Exception:  # a param the engine cannot judge: let the engine thread fail it properly
        return False


class EngineThread:
    """Long-lived engine threads fed by a queue: ``submit(job)`` computes it on an idle one.

    One thread serves every run.  Only if a job is submitted while another still computes
    (an engine that ignores its abort while the worker moved on) does a second thread start,
    so a stuck engine never holds up the next run.  Threads are daemons: an engine that
    never returns does not keep the process alive.
    """

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.threads: list[threading.Thread] = []

    def submit(self, job: Job) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1   # that idle thread is as good as taken by this job
        if spawn:
            thread = threading.Thread(target=self._serve, name=f"engine-{len(self.threads) + 1}", daemon=True)
            self.threads.append(thread)
            thread.start()
        job.thread = None
        self.jobs.put(job)

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            job.thread = threading.current_thread()
            outcome = job._compute()
            with self._lock:
                self._idle += 1   # idle before the loop hears of the outcome, so the next run reuses this thread
            job._publish(outcome)
