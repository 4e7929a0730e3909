"""What the worker holds and tells runq: its id, its runs, reports awaiting ack, drain and stop.

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

from simx import auth, limits, protocol
from simx.client import RunqRefused, check_challenge

from .engines.base import Engine
from .job import EngineThread, Job, run_name
from .upload import Upload, UploadError

log = logging.getLogger("worker")

MAX_PREFETCH = limits.MAX_PREFETCH  # runs a worker may hold at once
UPDATE_INTERVAL = 0.2  # seconds: at most ~5 WorkerUpdate per second per run
STOP_TIMEOUT = 5.0  # seconds a stopping worker waits for the ack of its WorkerStoppedRun
DRAIN_LINGER = 0.5  # seconds an idle draining worker stays to refuse an assignment already in flight
# How logs name each terminal report.
OUTCOME = {"WorkerFinishedRun": "finished", "WorkerFailedRun": "failed", "WorkerAbortedRun": "aborted",
           "WorkerStoppedRun": "stopped"}


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


def run_fields(key) -> dict:
    names = ("batch_id", "batch_index", "attempt")
    return dict(zip(names, key if key is not None else (None, None, None)))


class Session:
    def __init__(self, traits: Traits, engine: Engine, send, wake, secret: bytes | None = None, *,
                 update_interval: float = UPDATE_INTERVAL, stop_timeout: float = STOP_TIMEOUT,
                 drain_linger: float = DRAIN_LINGER, prefetch: int = 1):
        if not isinstance(prefetch, int) or not 1 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be an integer from 1 to {MAX_PREFETCH}, not {prefetch!r}")
        self.traits, self.engine, self.send, self.wake, self.secret = traits, engine, send, wake, secret
        self.prefetch = prefetch
        self.runner = EngineThread()
        self.update_interval, self.stop_timeout, self.drain_linger = update_interval, stop_timeout, drain_linger
        self.log = _WorkerLog(log, {"session": self})
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

    def hello(self) -> dict:
        """The first message on a new connection: Hello (protocol v2, runq/auth.py)."""
        self.nonce, self.runq_nonce, self.hangup = auth.new_nonce(), None, None
        return protocol.message("Hello", version=protocol.VERSION, role="worker", nonce=self.nonce,
                                key_id=auth.key_id(self.secret) if self.secret is not None else None)

    def registration(self) -> dict:
        """After Auth: WorkerReady, or WorkerReconnect proving the identity, with the run held."""
        traits = dataclasses.asdict(self.traits)
        if self.prefetch > 1:
            traits["prefetch"] = self.prefetch   # absent at 1: runq that predates prefetch refuses unknown fields
        if self.worker_id is None:
            return protocol.message("WorkerReady", **traits)
        held = self.job.key if self.job is not None else None   # the run computed (or its report unacked)
        proof = auth.reconnect_proof(self.key, self.worker_id, self.runq_nonce) if self.key else None
        return protocol.message("WorkerReconnect", worker_id=self.worker_id, proof=proof, **traits,
                                **run_fields(held))

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

    def _challenged(self, msg: dict) -> None:
        """Check runq's proof, prove the secret, then register or reconnect (pipelined)."""
        try:
            check_challenge(msg, "worker", self.secret, self.nonce)
        except RunqRefused as exc:
            self.log.error("%s; not talking to it", exc)
            self.hangup = str(exc)
            return
        if self.instance is not None and msg["instance"] != self.instance:
            self._forget_instance()
        self.instance, self.runq_nonce = msg["instance"], msg["nonce"]
        proof = auth.peer_proof(self.secret, "worker", self.runq_nonce, self.nonce) if self.secret else None
        self.send(protocol.message("Auth", proof=proof))
        self.send(self.registration())

    def _forget_instance(self) -> None:
        """runq's database is another one (it was reset): nothing this worker held there means anything."""
        self.log.warning("runq is a new instance (its database was reset?): registering afresh, "
                         "dropping the run and reports of the old one")
        self.worker_id, self.key, self.seq = None, None, 0
        self.pending.clear()
        self.held.clear()
        job = self.job
        self._drop_upload()
        if job is not None:
            if job.report is None:
                job.request_abort("runq's database was reset")
                job.report = "abandoned"
            self.job = None  # last_job keeps it, to be joined at exit

    def _accepted(self, msg: dict, now: float) -> None:
        if msg["worker_id"] != self.worker_id:
            if self.worker_id is not None:
                self.log.warning("runq registered this worker afresh as %s", msg["worker_id"])
            # a new identity: its key comes with it (no secret) or from this handshake (secret)
            self.key = msg.get("key") or (auth.worker_key(self.secret, self.runq_nonce, self.nonce)
                                          if self.secret else None)
            self.seq = 0
        self.worker_id = msg["worker_id"]
        self.online = True
        self.heartbeat_interval = msg["heartbeat_interval"] or math.inf
        self.next_heartbeat = now + self.heartbeat_interval
        self.log.info("accepted by runq (heartbeat every %ss, keep_run %s)", msg["heartbeat_interval"], msg["keep_run"])
        job = self.job
        if job is not None and job.report is None:
            if msg["keep_run"] and self.upload is not None:
                self.log.info("sending the files of run %s again", run_name(job.key))
                self.upload.restart()
            elif msg["keep_run"]:
                self.next_update = -math.inf  # progress made while away goes out at once
            elif self.upload is not None:
                self._abandon_upload("runq did not keep the run after a reconnect")
            else:
                self.log.info("runq did not keep run %s; aborting it", run_name(job.key))
                job.request_abort("runq did not keep the run after a reconnect")
        for key in self.pending:
            self._send_report(key)
        if self.held:
            self._send_heartbeat(now)  # runq reconciles the prefetched runs now (takes back or aborts)
        if self.draining:
            self._send_draining(now)

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
            self._collect_outcome()
            if not self.held or self.computing() is not None or self.stopping or self.draining:
                return
            key = next(iter(self.held))
            self._start(self.held.pop(key), now)

    def _start(self, msg: dict, now: float) -> None:
        job = self.job = self.last_job = Job(msg, self.engine, self.worker_id, self.wake)
        self.next_update = -math.inf
        # Two lines per run at INFO (this and the outcome) cost more CPU than the rest of a
        # zero-step run: fleets of very short runs log at WARNING (docs/ARCHITECTURE.md).
        if log.isEnabledFor(logging.INFO):
            self.log.info("assigned run %s", run_name(job.key))
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
        # a finished run's ack at DEBUG: a third line per run is not worth its CPU
        level = (logging.WARNING if not msg["accepted"] else
                 logging.DEBUG if report[0] == "WorkerFinishedRun" else logging.INFO)
        if log.isEnabledFor(level):
            note = f": {msg['message']}" if msg.get("message") else ""
            self.log.log(level, "%s report of run %s acked (accepted %s%s)",
                         OUTCOME[report[0]], run_name(key), msg["accepted"], note)
        if self.job is not None and self.job.key == key:
            self.job = None  # idle unless runs are held: runq assigns the next run on its own

    def _abort(self, msg: dict, now: float) -> None:
        key = protocol.run_key(msg)
        if self.held.pop(key, None) is not None:   # runq takes back a prefetched run: never started
            self.log.info("runq took back run %s before it started (%s)", run_name(key), msg["reason"])
            self._report(key, "WorkerAbortedRun", {"message": protocol.clean_text(msg["reason"])})
            return
        job = self.job
        if job is None or job.key != key or job.report is not None:
            self.log.info("ignoring abort of run %s (%s): not computing it (holding %s)",
                          run_name(key), msg["reason"], run_name(job.key if job else None))
            return
        self.log.info("aborting run %s: %s", run_name(key), msg["reason"])
        if self.upload is not None:
            self._abandon_upload(msg["reason"])
            return
        job.request_abort(msg["reason"])

    def _error(self, msg: dict) -> None:
        self.log.error("runq error: %s", msg["message"])
        # A refused secret (401), another protocol version (426) or traits outside the
        # secret's bounds (403 at registration) are configuration errors that retrying
        # cannot fix, so give up rather than loop forever.
        code = msg.get("code")
        if code in (401, 426) or (code == 403 and not self.online):
            self.log.error("runq refused this worker (%s); exiting", code)
            self.exit_code = 2

    # -- time and the engine -----------------------------------------------------------

    def advance(self, now: float) -> None:
        """Report an outcome the engine produced (starting the next held run), and send progress and
        heartbeats that are due."""
        job = self.job
        if self.held or (job is not None and job.report is None):   # else _step has nothing to do
            self._step(now)
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
            return min(self.stop_deadline, self.next_heartbeat, self.next_update)
        return min(self.stop_deadline, self.next_heartbeat)

    def due(self, now: float) -> list[float]:
        """Times at which advance() or check_exit() will act without being woken."""
        times = [self.stop_deadline]
        if self.online:
            times.append(self.next_heartbeat)
            job = self.job
            if job is not None and job.report is None and job.has_progress():
                times.append(self.next_update)
            linger_end = self.drain_sent_at + self.drain_linger
            if self.draining and job is None and not self.pending and linger_end > now:
                times.append(linger_end)  # once past, only the output draining (a socket event) is awaited
        return times

    def _collect_outcome(self) -> None:
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
        job.report = mtype
        if log.isEnabledFor(logging.INFO):   # formatted only when written (see _start)
            detail = (fields.get("message") or "").strip()
            detail = f": {detail.splitlines()[0][:200]}" if detail else ""
            self.log.info("run %s %s%s", run_name(job.key), OUTCOME[mtype], detail)
        self._report(job.key, mtype, fields)

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

    def _send_draining(self, now: float) -> None:
        self.drain_sent_at = now
        self.send(protocol.message("WorkerDraining", worker_id=self.worker_id))

    # -- output files ------------------------------------------------------------------

    def _start_upload(self, job: Job, fields: dict) -> bool:
        """Begin sending a finished run's files (engines with files: true); False when it has none."""
        take = getattr(self.engine, "take_outputs", None)
        workdir = take(job.key) if take is not None else None
        if workdir is None:
            return False
        data = fields.get("data")
        try:
            self.upload = Upload(job.key, workdir, data.get("files") if isinstance(data, dict) else None)
        except UploadError as exc:
            workdir.remove()
            self.upload_report = ("WorkerFailedRun", {"message": f"output files: {exc}"})
            return False
        self.upload_report = ("WorkerFinishedRun", fields)
        self.log.info("run %s finished; sending its %d files", run_name(job.key), len(self.upload.entries))
        return True

    def send_upload(self) -> bool:
        """Send the next chunk of the files being uploaded (the loop calls this while its link has
        room); after the last, the run's finished report.  False when nothing more is to be sent."""
        upload, job = self.upload, self.job
        if upload is None or job is None or not self.online:
            return False
        try:
            msg = upload.next_message(self.worker_id)
        except UploadError as exc:
            self.log.error("run %s: %s", run_name(job.key), exc)
            self._drop_upload()
            job.report = "WorkerFailedRun"
            self._report(job.key, "WorkerFailedRun", {"message": f"output files: {exc}"})
            return False
        if msg is not None:
            self.send(msg)
            return True
        mtype, fields = self.upload_report
        self.log.info("run %s: %d bytes of files sent", run_name(job.key), upload.sent)
        self._drop_upload()
        job.report = mtype
        self._report(job.key, mtype, fields)
        return False

    def _drop_upload(self) -> None:
        if self.upload is not None:
            self.upload.close()
        self.upload = self.upload_report = None

    def _abandon_upload(self, reason: str) -> None:
        """runq took the run back while its files were on their way: report it aborted."""
        job = self.job
        self._drop_upload()
        job.report = "WorkerAbortedRun"
        self._report(job.key, "WorkerAbortedRun", {"message": reason})

    # -- stop and drain --------------------------------------------------------------

    def stop(self, now: float) -> None:
        """Give the run and the held ones back to runq (WorkerStoppedRun) and wait a little for the acks."""
        self._collect_outcome()  # a run that just finished keeps its result
        self.stopping = True
        self._hand_back_held("stopping")
        self.stop_deadline = now + self.stop_timeout
        job = self.job
        if job is not None and job.report is None:
            self.log.info("stopping: giving run %s back to runq", run_name(job.key))
            self._drop_upload()
            job.request_abort("worker stopping")
            job.report = "WorkerStoppedRun"
            self._report(job.key, "WorkerStoppedRun", {})
        else:
            self.log.info("stopping")

    def drain(self, now: float, why: str) -> None:
        """Finish the current run, take no other, exit once every report is acked."""
        if self.draining:
            return
        self.draining = True
        self.log.info("draining (%s): finishing the current run, taking no other", why)
        self._hand_back_held("draining")
        if self.online:
            self._send_draining(now)

    def _hand_back_held(self, why: str) -> None:
        for key in list(self.held):
            del self.held[key]
            self.log.info("%s: handing run %s back to runq unstarted", why, run_name(key))
            self._report(key, "WorkerStoppedRun", {})

    def check_exit(self, now: float, reachable: bool, flushed: bool) -> int | None:
        """The exit status once the worker may exit, else None.

        ``reachable``: a connection to runq exists or is being made;
        ``flushed``: nothing is waiting to be written to it.
        """
        if self.exit_code is None and self.stopping:
            if not reachable or not self.pending or now >= self.stop_deadline:
                if self.pending:
                    self.log.warning("exiting without runq's ack for %s", ", ".join(map(run_name, self.pending)))
                self.exit_code = 0
        elif self.exit_code is None and self.draining and self.job is None and not self.pending:
            # While a handshake is under way, wait for it: runq may send an assignment with its answer.
            if not reachable or (self.online and flushed and now >= self.drain_sent_at + self.drain_linger):
                self.log.info("drained; exiting")
                self.exit_code = 0
        return self.exit_code
