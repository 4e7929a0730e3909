"""What the worker holds and tells runq: its id, its runs, reports awaiting ack, drain and stop.

``Session`` is one state machine in four modules: the runs here; who the worker is to runq
(hello, challenge, registration, acceptance) in handshake.py; output files in upload.py; stop,
drain and exit in ending.py.

This is the worker's half of "Worker conversation" in docs/ARCHITECTURE.md
without any I/O: the loop feeds it runq's messages and the time, and it sends
through the ``send`` callable it was given (which drops messages while runq is
away; the session re-sends what matters after the next RunqAcceptWorker).
It runs on the loop thread only; the engine thread is reached through ``Job``.

Prefetch (``prefetch`` > 1): runq may assign up to that many runs; one computes,
the others are held (in order) and the next starts as soon as one ends, without
waiting for runq.  Starting a run is told with WorkerStartedRun (its time limit
starts then); heartbeats list every run computed or held.  With prefetch 1 the
worker says nothing of it, so a runq that predates prefetch understands it.

Every message the worker sends is built by ``protocol.message`` from its declaration
(checked; about a microsecond on the per-run path); text and data are made fit where
they are made (``job.jsonable``, ``protocol.clean_text``).
"""
from __future__ import annotations

import dataclasses
import logging
import math

from simx import limits, protocol

from .ending import Ending
from .engines.base import Engine
from .handshake import Handshake
from .job import EngineThread, Job, run_name
from .summary import OUTCOMES as OUTCOME
from .summary import SUMMARY_INTERVAL, Summary
from .upload import Upload, Uploading

log = logging.getLogger("worker")

MAX_PREFETCH = limits.MAX_PREFETCH  # runs a worker may hold at once
UPDATE_INTERVAL = 0.2  # seconds: at most ~5 WorkerUpdate per second per run
STOP_TIMEOUT = 5.0  # seconds a stopping worker waits for the ack of its WorkerStoppedRun
DRAIN_LINGER = 0.5  # seconds an idle draining worker stays to refuse an assignment already in flight


# What a worker tells runq about itself; runq matches runs on these.  Its fields are the worker
# record's asked ones (simx/records.py WORKER, as protocol.WORKER_TRAITS): declared there once.
Traits = dataclasses.make_dataclass(
    "Traits", [(name, int if kind.types == (int,) else str if kind.types == (str,) else float)
               for name, kind in protocol.SCHEMA["WorkerReady"].items() if name in protocol.WORKER_TRAITS],
    frozen=True, namespace={"__module__": __name__})


class _WorkerLog(logging.LoggerAdapter):
    """Prefixes every line with the worker id, which runq may change on a reconnect."""

    def process(self, msg, kwargs):
        return f"worker {self.extra['session'].worker_id or '-'}: {msg}", kwargs


class Session(Handshake, Uploading, Ending):
    def __init__(self, traits: Traits, engine: Engine, send, wake, secret: bytes | None = None, *,
                 update_interval: float = UPDATE_INTERVAL, stop_timeout: float = STOP_TIMEOUT,
                 drain_linger: float = DRAIN_LINGER, prefetch: int = 1,
                 summary_interval: float = SUMMARY_INTERVAL):
        if not isinstance(prefetch, int) or not 1 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be an integer from 1 to {MAX_PREFETCH}, not {prefetch!r}")
        self.traits, self.engine, self.send, self.wake, self.secret = traits, engine, send, wake, secret
        self.prefetch = prefetch
        self.runner = EngineThread()
        self.update_interval, self.stop_timeout, self.drain_linger = update_interval, stop_timeout, drain_linger
        self.log = _WorkerLog(log, {"session": self})
        self.summary = Summary(traits.engine, summary_interval)  # the INFO line about the runs ended
        self.worker_id: int | None = None  # from the first RunqAcceptWorker on
        self.key: str | None = None  # proves this worker's identity on reconnect (never sent)
        self.instance: str | None = None  # the runq database this worker is registered with
        self.seq = 0  # highest RunqAssignRun.seq received
        self.nonce: str | None = None  # this connection's Hello nonce
        self.runq_nonce: str | None = None  # this connection's RunqChallenge nonce
        self.hangup: str | None = None  # set when the loop must drop the connection (runq not proven)
        self.online = False  # RunqAcceptWorker received on the current connection
        self.heartbeat_interval = math.inf
        self.next_heartbeat = math.inf
        self.next_update = -math.inf
        self.job: Job | None = None  # the run started last, until its report is acked or the next one starts
        self.held: dict[tuple, dict] = {}  # prefetched assignments not started yet, oldest first
        self.last_job: Job | None = None  # joined at exit so an aborted engine can clean up
        self.pending: dict[tuple, tuple[str, dict]] = {}  # run key -> terminal report awaiting RunqAck
        self.upload: Upload | None = None  # the job's output files being sent, before its finished report
        self.upload_report: tuple[str, dict] | None = None  # that report
        self.stopping = False
        self.stop_deadline = math.inf
        self.draining = False
        self.drain_sent_at = -math.inf
        self.exit_code: int | None = None
        self.registration()  # fails now, not at the first connection, if a trait has the wrong type

    # -- connection events -----------------------------------------------------------

    def disconnected(self) -> None:
        self.online = False
        self.next_heartbeat = math.inf

    # -- messages from runq ----------------------------------------------------------

    def handle(self, msg: dict, now: float) -> None:
        try:
            self._dispatch(msg, now)
        except Exception:  # one bad message must not kill a worker that may hold a run
            self.log.exception("failed to handle %s from runq", msg["type"])

    def _dispatch(self, msg: dict, now: float) -> None:
        mtype = msg["type"]
        if self.runq_nonce is not None:   # the two per-run messages first
            if mtype == "RunqAssignRun":
                return self._assign(msg, now)
            if mtype == "RunqAck":
                return self._acked(msg)
        if mtype == "RunqError":
            self._error(msg)
        elif self.runq_nonce is None and mtype != "RunqChallenge":
            # nothing counts before runq has answered Hello (and, with a secret, proved itself)
            self.log.warning("ignoring %s from runq before its challenge", mtype)
        elif mtype == "RunqChallenge":
            if self.runq_nonce is not None:
                self.log.warning("ignoring a second RunqChallenge on this connection")
                return
            self._challenged(msg)
        elif mtype == "RunqAcceptWorker":
            self._accepted(msg, now)
        elif mtype == "RunqAssignRun":
            self._assign(msg, now)
        elif mtype == "RunqAck":
            self._acked(msg)
        elif mtype == "RunqAbortRun":
            self._abort(msg, now)
        elif mtype == "RunqDrain":
            self.drain(now, "runq asked")
        else:
            self.log.warning("ignoring unexpected %s from runq", mtype)

    def computing(self) -> Job | None:
        """The run whose engine is computing (no outcome reported yet), or None."""
        job = self.job
        return job if job is not None and job.report is None else None

    def _assign(self, msg: dict, now: float) -> None:
        key = (msg["batch_id"], msg["batch_index"], msg["attempt"])
        if msg["seq"] > self.seq:
            self.seq = msg["seq"]  # even when refused: runq learns from the heartbeat
        job = self.job
        if self.draining or self.stopping:
            self.log.info("refusing run %s: %s", run_name(key), "stopping" if self.stopping else "draining")
            self._report(key, "WorkerStoppedRun", {})
        elif (job is not None and job.key == key) or key in self.pending or key in self.held:
            self.log.error("runq assigned run %s, which this worker holds already; ignored", run_name(key))
        elif len(self.held) + (job is not None and job.report is None) >= self.prefetch:
            held = run_name(job.key) if self.prefetch == 1 else f"{self.prefetch} runs"
            self.log.error("runq assigned run %s while this worker holds %s; ignored", run_name(key), held)
        elif msg["engine"] != self.traits.engine:
            self.log.error("runq assigned run %s of engine %r; this worker runs %r",
                           run_name(key), msg["engine"], self.traits.engine)
            self._report(key, "WorkerFailedRun", {
                "message": f"worker runs engine {self.traits.engine!r}, not {msg['engine']!r}"})
        else:
            self.held[key] = msg
            self._step(now)

    def _step(self, now: float) -> None:
        """Report the computed run's outcome, and start the next held run while none computes."""
        while True:
            self._collect_outcome(now)
            if not self.held or self.computing() is not None or self.stopping or self.draining:
                return
            key = next(iter(self.held))
            self._start(self.held.pop(key), now)

    def _start(self, msg: dict, now: float) -> None:
        job = self.job = self.last_job = Job(msg, self.engine, self.worker_id, self.wake)
        job.started = now
        self.next_update = -math.inf
        # Per-run lines are at DEBUG, formatted only when written: two lines per run at INFO cost
        # as much CPU as a zero-step run.  The operator's INFO view is the summary (summary.py).
        if log.isEnabledFor(logging.DEBUG):
            self.log.debug("assigned run %s", run_name(job.key))
        if self.prefetch > 1 and self.online:
            self.send(protocol.message("WorkerStartedRun", worker_id=self.worker_id, batch_id=job.key[0],
                                       batch_index=job.key[1], attempt=job.key[2]))
        job.start(self.runner)

    def _acked(self, msg: dict) -> None:
        key = (msg["batch_id"], msg["batch_index"], msg["attempt"])
        report = self.pending.pop(key, None)
        if report is None:
            self.log.warning("ack for run %s, which has no report waiting; ignored", run_name(key))
            return
        level = logging.DEBUG if msg["accepted"] else logging.WARNING   # the run's outcome had its line
        if log.isEnabledFor(level):
            note = f": {msg['message']}" if msg.get("message") else ""
            self.log.log(level, "%s report of run %s acked (accepted %s%s)",
                         OUTCOME[report[0]], run_name(key), msg["accepted"], note)
        if self.job is not None and self.job.key == key:
            self.job = None  # idle unless runs are held: runq assigns the next run on its own

    def _abort(self, msg: dict, now: float) -> None:
        key = protocol.run_key(msg)
        if self.held.pop(key, None) is not None:   # runq takes back a prefetched run: never started
            if log.isEnabledFor(logging.DEBUG):   # routine with prefetch: runq gives it to an idle worker
                self.log.debug("runq took back run %s before it started (%s)", run_name(key), msg["reason"])
            self._report(key, "WorkerAbortedRun", {"message": protocol.clean_text(msg["reason"])})
            return
        job = self.job
        if job is None or job.key != key or job.report is not None:
            self.log.info("ignoring abort of run %s (%s): not computing it (holding %s)",
                          run_name(key), msg["reason"], run_name(job.key if job else None))
            return
        self.log.info("aborting run %s: %s", run_name(key), msg["reason"])
        if self.upload is not None:
            self._abandon_upload(msg["reason"], now)
            return
        job.request_abort(msg["reason"])

    # -- time and the engine -----------------------------------------------------------

    def advance(self, now: float) -> None:
        """Report an outcome the engine produced (starting the next held run), and send progress and
        heartbeats that are due."""
        job = self.job
        if self.held or (job is not None and job.report is None):   # else _step has nothing to do
            self._step(now)
        if now >= self.summary.due:
            self.log_summary(now)
        if self.online:
            self._send_progress(now)
            if now >= self.next_heartbeat:
                self._send_heartbeat(now)

    def soonest(self, now: float) -> float:
        """The earliest of ``due(now)`` (math.inf if none), without the list on the common path."""
        if self.draining or not self.online:
            return min(self.due(now))
        job = self.job
        if job is not None and job.report is None and job.has_progress():
            return min(self.stop_deadline, self.next_heartbeat, self.next_update, self.summary.due)
        return min(self.stop_deadline, self.next_heartbeat, self.summary.due)

    def due(self, now: float) -> list[float]:
        """Times at which advance() or check_exit() will act without being woken."""
        times = [self.stop_deadline, self.summary.due]
        if self.online:
            times.append(self.next_heartbeat)
            job = self.job
            if job is not None and job.report is None and job.has_progress():
                times.append(self.next_update)
            linger_end = self.drain_sent_at + self.drain_linger
            if self.draining and job is None and not self.pending and linger_end > now:
                times.append(linger_end)  # once past, only the output draining (a socket event) is awaited
        return times

    def _collect_outcome(self, now: float) -> None:
        job = self.job
        if job is None or job.report is not None or self.upload is not None:
            return
        outcome = job.outcome()
        if outcome is None:
            return
        mtype, fields = outcome
        if mtype == "WorkerFinishedRun" and self._start_upload(job, fields):
            return
        if mtype == "WorkerFinishedRun" and self.upload_report is not None:
            mtype, fields = self.upload_report   # the upload could not start: a failure
            self.upload_report = None
        self._ended(job, mtype, fields, now)

    def _ended(self, job: Job, mtype: str, fields: dict, now: float) -> None:
        """The started run ``job`` ended with report ``mtype``: its line, the summary's count, the report."""
        job.report = mtype
        summary = self.summary
        counts = summary.counts
        if not counts:
            summary.start(now)
        counts[mtype] = counts.get(mtype, 0) + 1   # Summary.record, inlined: once per run
        summary.seconds += now - job.started
        # finished at DEBUG (see _start), failed at WARNING; aborted at INFO like the abort asked
        # (the engine heeded it); stopped at DEBUG: "stopping: giving run ... back" said it
        level = (logging.DEBUG if mtype == "WorkerFinishedRun" else logging.WARNING if mtype == "WorkerFailedRun"
                 else logging.INFO if mtype == "WorkerAbortedRun" else logging.DEBUG)
        if log.isEnabledFor(level):
            detail = (fields.get("message") or "").strip()
            detail = f": {detail.splitlines()[0][:200]}" if detail else ""
            self.log.log(level, "run %s %s%s", run_name(job.key), OUTCOME[mtype], detail)
        self._report(job.key, mtype, fields)

    def log_summary(self, now: float) -> None:
        """Write the summary of the runs ended since the last one, if any (also at exit)."""
        line = self.summary.take(now)
        if line is not None:
            self.log.info("%s", line)

    # -- messages to runq ------------------------------------------------------------

    def _report(self, key, mtype: str, fields: dict) -> None:
        """Keep a terminal report until its RunqAck; send it now if runq is there."""
        self.pending[key] = (mtype, fields)
        if self.online:
            self._send_report(key)

    def _send_report(self, key) -> None:
        mtype, fields = self.pending[key]
        # worker_id is filled in at each send: runq may have given a new one on reconnect.
        self.send(protocol.message(mtype, worker_id=self.worker_id, batch_id=key[0], batch_index=key[1],
                                   attempt=key[2], **fields))

    def _send_heartbeat(self, now: float) -> None:
        # Name a run only while computing or holding it: once its report is sent, runq knows the outcome.
        job = self.computing()
        runs = [list(job.key)] if job is not None else []
        runs.extend(list(key) for key in self.held)
        self.next_heartbeat = now + self.heartbeat_interval
        self.send(protocol.message("WorkerHeartbeat", worker_id=self.worker_id, seq=self.seq, runs=runs))

    def _send_progress(self, now: float) -> None:
        job = self.job
        if job is None or job.report is not None or now < self.next_update or not job.has_progress():
            return
        fraction, message = job.take_progress()
        self.next_update = now + self.update_interval
        self.send(protocol.message("WorkerUpdate", worker_id=self.worker_id, batch_id=job.key[0],
                                   batch_index=job.key[1], attempt=job.key[2], progress=fraction, message=message))
