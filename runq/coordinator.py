"""runq's core, sans I/O: one message at a time at time `now`, messages out.

``handle(conn, msg, now)``, ``connected(conn, peer, now)``, ``disconnected(conn, now)``
and ``tick(now)`` change the in-memory model, buffer the matching writes in the
store, and return ``[(conn, message)]`` to send (a message of None means: close
that connection).  The server commits the store before it sends anything, so
nothing is ever sent about state that is not durable.

Worker-side logic lives here; client requests (StartBatch, listings, cancel)
live in ``runq/api.py``, which uses the same model and the ``dispatch`` and
``end_attempt`` steps below.
"""
from __future__ import annotations

import heapq
import logging

from . import auth, protocol, states
from .api import MAX_RESULT_BYTES, Api, json_size
from .config import BatchDefaults, RunqConfig, SchedConfig
from .errors import RunqError
from .fairshare import FairShare
from .files import Files, UploadRefused
from .matching import Matcher, Presence
from .metrics import Metrics
from .model import Batch, Run, Worker
from .recovery import recover
from .retry import Backoff
from .store import Store

log = logging.getLogger("runq.coordinator")

CONTACT_WRITE_INTERVAL = 5.0   # seconds between writes of a worker's last_contact
REPORT_OUTCOME = {
    "WorkerFinishedRun": states.OUTCOME_FINISHED, "WorkerFailedRun": states.OUTCOME_FAILED,
    "WorkerAbortedRun": states.OUTCOME_ABORTED, "WorkerStoppedRun": states.OUTCOME_STOPPED,
}


class Coordinator:
    def __init__(self, store: Store, config: RunqConfig = RunqConfig(),
                 batch_defaults: BatchDefaults = BatchDefaults(), now: float = 0.0,
                 secrets: auth.Secrets = auth.Secrets(), sched: SchedConfig = SchedConfig(), catalog=None,
                 files_dir=None):
        self.store, self.config, self.batch_defaults = store, config, batch_defaults
        self.catalog = catalog   # runq.engines.Catalog checked at submit; None: any engine, unchecked
        self.files = Files(files_dir, config.files_max_run)   # runs' output files (runq/files.py)
        self.instance = store.instance()
        self.gate = auth.Gate(secrets, self.instance)   # each connection's handshake
        self.fairshare = FairShare(sched.half_life, sched.shares, now)
        self.matcher = Matcher(self.fairshare.rank)
        self.presence = Presence()                # connected, non-draining, unbroken workers by traits
        self.backoff = Backoff(sched.backoff_base, sched.backoff_max)
        self.batches: dict[int, Batch] = {}      # active batches (runs left)
        self.runs: dict[tuple[int, int], Run] = {}  # materialized non-terminal runs
        self.workers: dict[int, Worker] = {}
        self.conns: dict[object, int] = {}        # conn -> worker id
        self.peers: dict[object, str] = {}
        self.out: list[tuple[object, dict | None]] = []
        self.started = now
        self.last_batch_id = self.last_worker_id = 0   # highest ids given out; recover() reads them
        self.api = Api(self)
        self.metrics = Metrics(now)
        recover(self, now)
        self.metrics.load_ended(store.ended_batch_totals())

    # ---- entry points the server calls
    def connected(self, conn, peer: str, now: float) -> list:
        self.peers[conn] = peer   # the peer speaks first (Hello)
        return self.take_output()

    def role_of(self, conn) -> str | None:
        """"worker" or "client" once the connection has authenticated; None before."""
        return self.gate.role_of(conn)

    def handle(self, conn, msg: dict, now: float) -> list:
        mtype = msg["type"]
        if conn in self.gate.refused:
            return self.take_output()
        role = self.role_of(conn)
        try:
            if mtype in ("Hello", "Auth"):
                challenge = self.gate.opening(conn, msg)
                if challenge is not None:
                    self.send(conn, protocol.message("RunqChallenge", **challenge))
            elif role is None:
                state = self.gate.states.get(conn)
                raise RunqError(f"{mtype} before authentication: runq speaks protocol {protocol.VERSION}, which "
                                "opens with Hello and Auth" if state is None else
                                f"{mtype} before Auth", 426 if state is None else 401)
            elif (mtype in protocol.FROM_WORKER) != (role == "worker"):
                raise RunqError(f"{mtype} is not allowed on a {role} connection "
                                f"(the {role} secret allows only {role} messages)", 403)
            elif role == "worker":
                self._worker_message(conn, msg, now)
            else:
                self.send(conn, self.api.handle(msg, now))
        except auth.AuthError as exc:
            log.warning("%s from %s refused: %s", mtype, self.peers.get(conn), exc)
            self.gate.refused.add(conn)
            self.send(conn, protocol.message("RunqError", message=str(exc), code=exc.code))
            self.send(conn, None)
        except RunqError as exc:
            log.warning("%s from %s refused: %s", mtype, self.peers.get(conn), exc)
            if role == "client" or (role is None and mtype not in protocol.FROM_WORKER):
                self.send(conn, protocol.reply("error", exc.code, str(exc)))
                if role is None:
                    self.gate.refused.add(conn)
                    self.send(conn, None)
            else:
                self.send(conn, protocol.message("RunqError", message=str(exc), code=exc.code))
                self.send(conn, None)
        return self.take_output()

    def disconnected(self, conn, now: float) -> list:
        self.peers.pop(conn, None)
        self.gate.forget(conn)
        wid = self.conns.pop(conn, None)
        worker = self.workers.get(wid)
        if worker is not None and worker.conn == conn:
            worker.conn = None
            worker.disconnected_at = now
            worker.state = states.DISCONNECTED
            self.matcher.remove_idle(worker.id)
            self.note_presence(worker)
            self.store.save_worker(worker.row())
            log.info("worker %d disconnected%s", worker.id,
                     f" holding run {worker.run}" if worker.run else "")
        return self.take_output()

    def tick(self, now: float) -> list:
        """Leases, grace periods, time limits, periodic contact writes."""
        lease, grace = self.config.lease, self.config.grace
        for worker in list(self.workers.values()):
            if worker.conn is None:
                if (worker.state != states.GONE and worker.disconnected_at is not None
                        and now - worker.disconnected_at > grace):
                    if worker.run:
                        log.warning("worker %d not back within %.0fs: requeueing run %s", worker.id, grace,
                                    worker.run)
                        self.take_back(worker, states.OUTCOME_LOST, "worker disconnected past the grace period", now)
                    worker.state = states.GONE
                    self.store.save_worker(worker.row())
                continue
            run = self.runs.get(worker.run) if worker.run else None
            # the lease runs from the last word of the worker or the dispatch, whichever is later
            if run is not None and now - max(worker.last_contact, run.started or 0.0) > lease:
                log.warning("worker %d silent for %.0fs (lease %.0fs): requeueing run %s",
                            worker.id, now - worker.last_contact, lease, worker.run)
                self.take_back(worker, states.OUTCOME_LOST, "worker lease expired", now)
            elif worker.last_contact - worker.saved_contact > CONTACT_WRITE_INTERVAL:
                worker.saved_contact = worker.last_contact
                self.store.save_worker(worker.row())
        for run in list(self.runs.values()):
            batch = self.batches.get(run.batch_id)
            if (run.state == states.RUNNING and batch is not None and batch.time_limit
                    and run.started is not None and now - run.started > batch.time_limit):
                worker = self.workers.get(run.worker_id)
                log.warning("run %s over its %ss time limit: aborting", run.key, batch.time_limit)
                why = f"time limit of {batch.time_limit}s exceeded"
                if worker is not None and worker.run == run.key:
                    self.take_back(worker, states.OUTCOME_TIMEOUT, why, now)
                else:
                    self.end_attempt(run, states.OUTCOME_TIMEOUT, why, now)
        self._release_due(now)
        if self.fairshare.due(now):
            self.fairshare.renormalize(now)
            self.matcher.rerank_all()
        self.api.tick(now)
        return self.take_output()

    def _release_due(self, now: float) -> None:
        """Runs whose retry backoff is over go back to their batch's waiting runs."""
        for key in self.backoff.due(now):
            run = self.runs.get(key)
            if run is None or run.state != states.WAITING or run.retry_at is None:
                continue
            batch = self.batches[run.batch_id]
            run.retry_at = None
            batch.n_delayed -= 1
            heapq.heappush(batch.requeued, run.batch_index)
            if batch.state == states.ACTIVE:
                self.make_ready(batch, now)

    # ---- output
    def send(self, conn, msg: dict | None) -> None:
        if conn is not None:
            self.out.append((conn, msg))

    def take_output(self) -> list:
        out, self.out = self.out, []
        return out

    # ---- worker messages
    def _worker_message(self, conn, msg: dict, now: float) -> None:
        mtype = msg["type"]
        if mtype in ("WorkerReady", "WorkerReconnect"):
            self._hello(conn, msg, now)
            return
        # Only the connection that registered or proved a worker speaks for it.
        wid = self.conns.get(conn)
        if wid is None or msg["worker_id"] != wid:
            raise RunqError(f"{mtype} for worker {msg['worker_id']}: this connection speaks for "
                            f"{'worker %d' % wid if wid is not None else 'no worker (send WorkerReady first)'}", 403)
        worker = self.workers[wid]
        worker.last_contact = now
        if mtype == "WorkerHeartbeat":
            self._heartbeat(worker, msg, now)
        elif mtype == "WorkerUpdate":
            run = self._current_run(worker, msg)
            if run is not None:
                run.progress = max(0.0, min(1.0, float(msg["progress"])))
                run.message = msg.get("message")
                self.store.save_run(run.row())
        elif mtype == "WorkerDraining":
            self.set_draining(worker)
        elif mtype == "WorkerFileChunk":
            self._file_chunk(worker, msg, now)
        elif mtype in REPORT_OUTCOME:
            self._report(worker, msg, now)

    def _proven(self, state: auth.PeerState, msg: dict) -> tuple[Worker | None, str]:
        """The worker a WorkerReconnect proves to be, or (None, why not).  Claiming a run proves nothing."""
        wid = msg["worker_id"]
        worker = self.workers.get(wid)
        if worker is None:
            return None, f"unknown worker id {wid} (another runq instance, or a purged worker)"
        if worker.key is None:
            return None, f"worker {wid} has no key (registered before protocol v2)"
        if not auth.same(auth.reconnect_proof(worker.key, wid, state.runq_nonce), msg.get("proof")):
            return None, f"wrong proof of identity for worker {wid}"
        return worker, ""

    def _hello(self, conn, msg: dict, now: float) -> None:
        if conn in self.conns:
            raise RunqError(f"{msg['type']}: this connection already speaks for worker {self.conns[conn]}", 409)
        state = self.gate.states[conn]
        try:
            state.bounds.check(msg)
        except auth.AuthError as exc:
            raise RunqError(f"{msg['type']}: {exc}", exc.code) from None
        worker, why = self._proven(state, msg) if msg["type"] == "WorkerReconnect" else (None, "")
        sent_key = None
        new = worker is None
        if new:
            if why:
                log.warning("worker from %s not recognized: %s; registering it as new", self.peers.get(conn), why)
            # A fresh id, never one the peer chose: ids stay dense and in range.
            wid = self.last_worker_id = self.last_worker_id + 1
            key, send_key = self.gate.new_worker_key(state)
            sent_key = key if send_key else None
            worker = Worker(id=wid, host=msg["host"], ipaddr=self.peers.get(conn, ""), pid=msg["pid"],
                            group=msg["group"], user=msg["user"], engine=msg["engine"], cost=msg["cost"],
                            speed=msg["speed"], priority=msg["priority"], started=now, key=key)
            self.workers[wid] = worker
            log.info("worker %d ready: %s pid %d engine=%s group=%r user=%r", wid, worker.host, worker.pid,
                     worker.engine, worker.group, worker.user)
        else:
            wid = worker.id
            if worker.conn is not None and worker.conn != conn:
                self.conns.pop(worker.conn, None)
                self.send(worker.conn, None)  # a half-open old connection: drop it
            log.info("worker %d reconnected", wid)
        self.conns[conn] = wid
        worker.conn, worker.last_contact, worker.disconnected_at = conn, now, None
        worker.ipaddr = self.peers.get(conn, worker.ipaddr)
        claimed = protocol.run_key(msg)
        keep = False
        if claimed is not None and not new:
            run = self.runs.get(claimed[:2])
            keep = (run is not None and run.state == states.RUNNING and run.worker_id == wid
                    and run.attempt == claimed[2])
        # The answer goes first, and the worker is marked busy with a run it still holds
        # before anything can settle it: otherwise it could be handed a new run ahead of
        # RunqAcceptWorker, or while it is still computing one it will not give up at once.
        self.send(conn, protocol.message("RunqAcceptWorker", worker_id=wid, key=sent_key,
                                         heartbeat_interval=self.config.heartbeat_interval, keep_run=keep))
        if keep:
            worker.aborting = None
        else:
            worker.aborting = claimed   # None when it holds nothing
            if claimed is not None:
                self.send(conn, protocol.message("RunqAbortRun", batch_id=claimed[0], batch_index=claimed[1],
                                                 attempt=claimed[2], reason="this run is no longer yours"))
            if worker.run:
                # runq gave this worker a run it does not have (the assignment was lost with the
                # connection, or runq restarted): the run goes back to the queue.
                self.take_back(worker, states.OUTCOME_LOST, "worker came back without its run", now, abort=False)
        self.note_presence(worker)
        self._settle_worker(worker, now)
        self.store.save_worker(worker.row(), new=new)

    def _heartbeat(self, worker: Worker, msg: dict, now: float) -> None:
        """Reconcile what the worker computes with what runq gave it.

        A run assigned at a seq the worker has seen (seq <= the heartbeat's) that it does not
        list was lost on the way or dropped: it goes back to the queue.  One assigned later is
        still in flight.  Written for a worker holding several runs; today it holds one.
        """
        held = held_runs(msg)
        let_go = worker.aborting is not None and worker.aborting not in held
        if let_go:
            worker.aborting = None           # it let go of the run we took back
        run = self.runs.get(worker.run) if worker.run else None
        current = (run.batch_id, run.batch_index, run.attempt) if run is not None else None
        if current is not None and current not in held and worker.assign_seq <= msg["seq"]:
            log.warning("worker %d does not hold run %s (assignment %d lost or dropped): requeueing it",
                        worker.id, worker.run, worker.assign_seq)
            self.take_back(worker, states.OUTCOME_LOST, "the worker did not hold the run it was assigned", now,
                           abort=False)
            current = None
        for key in held:
            if key != current and key != worker.aborting:
                self.send(worker.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                        attempt=key[2], reason="this run is no longer yours"))
        if let_go:
            self._settle_worker(worker, now)

    def _current_run(self, worker: Worker, msg: dict) -> Run | None:
        run = self.runs.get((msg["batch_id"], msg["batch_index"]))
        if (run is None or run.state != states.RUNNING or run.worker_id != worker.id
                or run.attempt != msg["attempt"]):
            return None
        return run

    def _report(self, worker: Worker, msg: dict, now: float) -> None:
        mtype, key = msg["type"], protocol.run_key(msg)
        if msg.get("kind") not in (None, *states.FAILURE_KINDS):
            raise RunqError(f"{mtype}: field 'kind' must be one of {', '.join(states.FAILURE_KINDS)}", 400)
        run = self._current_run(worker, msg)
        ack = dict(batch_id=key[0], batch_index=key[1], attempt=key[2])
        if run is None:
            accepted = self._already_recorded(worker, msg)
            if not accepted:
                log.warning("rejected %s from worker %d for run %s attempt %d: not its current attempt",
                            mtype, worker.id, key[:2], key[2])
            if worker.aborting == key:
                worker.aborting = None
            if mtype == "WorkerStoppedRun":
                self.set_draining(worker)
            self.send(worker.conn, protocol.message("RunqAck", accepted=accepted, **ack,
                                                    message=None if accepted else "stale attempt"))
            self._settle_worker(worker, now)
            return
        if mtype != "WorkerFinishedRun" and key in self.files.incoming:
            self.files.discard(key)   # the run ended otherwise: its partial upload goes
        size = mtype == "WorkerFinishedRun" and json_size(msg["data"])
        if size > MAX_RESULT_BYTES:  # never stored: it would break every listing that shows it
            self.files.discard(key)
            run.failures = max(run.failures, self.batches[run.batch_id].max_attempts - 1)  # no retry
            self.end_attempt(run, states.OUTCOME_FAILED, f"result of {size} bytes refused: over the "
                             f"{MAX_RESULT_BYTES}-byte limit for a stored result", now)
        elif mtype == "WorkerFinishedRun":
            problem = self._files_problem(key, self.batches[run.batch_id].engine, msg["data"])
            if problem is None:
                self.end_attempt(run, states.OUTCOME_FINISHED, None, now, result=msg["data"])
            else:
                log.warning("run %s of worker %d: %s", key, worker.id, problem)
                self.end_attempt(run, states.OUTCOME_FAILED, problem, now)
        elif mtype == "WorkerFailedRun":
            kind = msg.get("kind") or states.KIND_TRANSIENT
            self.end_attempt(run, states.OUTCOME_FAILED, msg["message"], now, traceback=msg.get("traceback"),
                             kind=kind)
            if kind == states.KIND_WORKER:
                self.set_broken(worker, msg["message"])
        elif mtype == "WorkerAbortedRun":
            self.end_attempt(run, states.OUTCOME_ABORTED, msg.get("message") or "aborted by the worker", now)
        else:  # WorkerStoppedRun: the worker process is stopping; its run goes back at once
            self.set_draining(worker)
            self.end_attempt(run, states.OUTCOME_STOPPED, "worker stopped", now)
        worker.run = None
        self.send(worker.conn, protocol.message("RunqAck", accepted=True, **ack))
        self._settle_worker(worker, now)

    def _file_chunk(self, worker: Worker, msg: dict, now: float) -> None:
        """A piece of a finished run's output file, before its WorkerFinishedRun: written at once.
        A chunk of another attempt is refused (RunqAbortRun); a chunk runq cannot take (no space,
        over the per-run limit, bad name) fails the attempt, and the run is retried."""
        key = protocol.run_key(msg)
        run = self._current_run(worker, msg)
        if run is None:
            log.warning("worker %d sent a file of run %s, not its current attempt: refused", worker.id, key)
            self.send(worker.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                    attempt=key[2], reason="files of a stale attempt are refused"))
            return
        definition = self.catalog.engines.get(self.batches[run.batch_id].engine) if self.catalog else None
        try:
            if definition is not None and not definition.files:
                raise UploadRefused(f"engine {definition.name!r} does not declare files: true")
            self.files.write(key, msg)
        except UploadRefused as exc:
            log.warning("upload of run %s from worker %d refused: %s", key, worker.id, exc)
            self.files.discard(key)
            self.take_back(worker, states.OUTCOME_FAILED, f"upload of the run's files failed: {exc}", now)

    def _files_problem(self, key, engine: str, data) -> str | None:
        """Why a finished run's files do not match its manifest (``data.files``), or None.  Only for
        engines that declare files, or when files were uploaded."""
        definition = self.catalog.engines.get(engine) if self.catalog is not None else None
        if not getattr(definition, "files", False) and key not in self.files.incoming:
            return None
        manifest = data.get("files", []) if isinstance(data, dict) else []
        try:
            self.files.complete(key, manifest)
        except UploadRefused as exc:
            return f"the run's output files: {exc}"
        return None

    def _already_recorded(self, worker: Worker, msg: dict) -> bool:
        """A re-sent report whose outcome is already stored (runq died before its ack)."""
        outcome = REPORT_OUTCOME[msg["type"]]
        return any(a["attempt"] == msg["attempt"] and a["worker_id"] == worker.id and a["outcome"] == outcome
                   for a in self.store.attempt_rows(msg["batch_id"], msg["batch_index"]))

    # ---- worker state
    def set_draining(self, worker: Worker) -> None:
        if not worker.draining:
            log.info("worker %d draining: no new runs", worker.id)
        worker.draining = True
        self.matcher.remove_idle(worker.id)
        if worker.conn is not None:
            worker.state = states.DRAINING
        self.note_presence(worker)
        self.store.save_worker(worker.row())

    def note_presence(self, worker: Worker) -> None:
        """Keep the presence index (batch `served`, engines in Ping) in step with the worker."""
        self.presence.update(worker.id, worker.traits,
                             worker.conn is not None and not worker.draining and not worker.broken)

    def set_broken(self, worker: Worker, why: str) -> None:
        """The worker cannot run its engine here: no more runs for it until it restarts
        (a restarted worker process registers anew), so one bad host cannot fail every run."""
        log.warning("worker %d (%s) cannot run engine %s: no more runs for it until it restarts (%s)",
                    worker.id, worker.host, worker.engine, why)
        worker.broken = why
        self.matcher.remove_idle(worker.id)
        self.note_presence(worker)
        self.store.save_worker(worker.row())

    def _settle_worker(self, worker: Worker, now: float) -> None:
        """Give a connected worker with nothing to do its next run, or index it as idle."""
        if worker.conn is None:
            return
        if worker.run is not None or worker.aborting is not None:
            new = states.DRAINING if worker.draining else (states.BUSY if worker.run else states.ABORTING)
        elif worker.draining:
            new = states.DRAINING
        elif worker.broken is not None:
            new = states.BROKEN
        else:
            batch_id = self.matcher.batch_for(worker.traits)
            if batch_id is not None:
                self.assign(worker, self.batches[batch_id], now)
                return
            self.matcher.add_idle(worker.id, worker.traits, worker.cost, worker.speed, worker.priority)
            new = states.IDLE
        if new != worker.state:
            worker.state = new
            self.store.save_worker(worker.row())

    # ---- dispatch
    def make_ready(self, batch: Batch, now: float) -> None:
        """A batch has waiting runs: hand them to idle matching workers, index the rest."""
        while batch.has_waiting():
            wid = self.matcher.take_worker_for(batch.traits)
            if wid is None:
                self.matcher.add_ready(batch.id, batch.traits, batch.sharer, batch.priority)
                return
            self.assign(self.workers[wid], batch, now)
        self.matcher.remove_ready(batch.id)

    def assign(self, worker: Worker, batch: Batch, now: float) -> None:
        index, materialized = batch.take_next_index()
        run = self.runs.get((batch.id, index)) if materialized else None
        new = run is None
        if new:
            run = Run(batch_id=batch.id, batch_index=index)
            self.runs[run.key] = run
            batch.active.add(index)
        self.metrics.dispatched(now - (batch.start_time if run.ended is None else run.ended))
        run.state, run.attempt, run.worker_id, run.host = states.RUNNING, run.attempt + 1, worker.id, worker.host
        run.started, run.ended, run.progress, run.message = now, None, 0.0, None
        batch.count(states.WAITING, -1)
        batch.count(states.RUNNING, +1)
        if not batch.has_waiting():
            self.matcher.remove_ready(batch.id)
        worker.run, worker.state = run.key, states.BUSY
        worker.assign_seq += 1
        self.fairshare.started(run.key, batch.sharer, now)
        self.matcher.rerank(batch.sharer)
        self.store.save_run(run.row(), new=new)
        self.store.save_batch(batch.counters())
        self.store.save_worker(worker.row())
        self.send(worker.conn, protocol.message(
            "RunqAssignRun", batch_id=batch.id, batch_index=index, attempt=run.attempt, seq=worker.assign_seq,
            engine=batch.engine, param=batch.param_of(index), time_limit=batch.time_limit))

    def take_back(self, worker: Worker, outcome: str, message: str, now: float, abort: bool = True) -> None:
        """End the worker's current attempt without its report (lease, grace, timeout, cancel)."""
        run = self.runs.get(worker.run) if worker.run else None
        worker.run = None
        if run is None:
            return
        if abort and worker.conn is not None:
            worker.aborting = (run.batch_id, run.batch_index, run.attempt)
            self.send(worker.conn, protocol.message("RunqAbortRun", batch_id=run.batch_id,
                                                    batch_index=run.batch_index, attempt=run.attempt,
                                                    reason=message))
        self.end_attempt(run, outcome, message, now)
        self._settle_worker(worker, now)

    def end_attempt(self, run: Run, outcome: str, message: str | None, now: float,
                    result=None, traceback: str | None = None, kind: str = states.KIND_TRANSIENT) -> None:
        """Record how a running attempt ended and move the run to its next state.

        A failure's kind decides what happens next: ``run`` fails it at once, ``worker``
        requeues it without using an attempt (the caller takes the worker off its engine),
        ``transient`` uses an attempt and, with attempts left, waits out a backoff."""
        batch = self.batches[run.batch_id]
        owner = self.fairshare.ended(run.key, now)
        if owner is not None:
            self.matcher.rerank(owner)
        self.store.add_attempt({"batch_id": run.batch_id, "batch_index": run.batch_index, "attempt": run.attempt,
                                "worker_id": run.worker_id, "host": run.host, "started": run.started,
                                "ended": now, "outcome": outcome, "message": message})
        run.ended = now
        if outcome == states.OUTCOME_FINISHED:
            new, run.result, run.progress, run.error = states.FINISHED, result, 1.0, None
        elif outcome == states.OUTCOME_CANCELLED:
            new = states.CANCELLED
        elif outcome == states.OUTCOME_FAILED and kind == states.KIND_WORKER:
            run.error, run.traceback = message, traceback
            new = states.WAITING
        elif outcome in states.COUNTS_AS_FAILURE:
            run.failures += 1
            run.error, run.traceback = message, traceback
            if kind == states.KIND_RUN or run.failures >= batch.max_attempts:
                new = states.FAILED
            else:
                new = states.WAITING
                if outcome == states.OUTCOME_FAILED:
                    run.retry_at = now + self.backoff.delay(run.failures)
        else:
            run.requeues += 1
            if run.requeues > batch.max_requeues:
                new, run.error = states.FAILED, f"lost too often ({run.requeues} times; last: {message})"
            else:
                new = states.WAITING
        run.message = message if message is not None else run.message
        if new == states.WAITING:   # a new attempt starts from scratch
            run.progress, run.message = 0.0, None
        self.metrics.attempt_ended(outcome, new)
        self.move_run(run, new, now)

    def move_run(self, run: Run, new: str, now: float) -> None:
        batch = self.batches[run.batch_id]
        states.check_transition(run.state, new)
        if run.state == states.WAITING and run.retry_at is not None:   # leaves its backoff (cancelled)
            self._end_backoff(run, batch)
        batch.count(run.state, -1)
        batch.count(new, +1)
        run.state = new
        self.store.save_run(run.row())
        if new == states.WAITING and run.retry_at is not None:
            batch.n_delayed += 1
            self.backoff.hold(run.key, run.retry_at)
        elif new == states.WAITING:
            heapq.heappush(batch.requeued, run.batch_index)
            if batch.state == states.ACTIVE:
                self.make_ready(batch, now)
        else:
            if new in states.TERMINAL:
                del self.runs[run.key]
                batch.active.discard(run.batch_index)
            self.finish_batch_if_done(batch, now)
        self.store.save_batch(batch.counters())

    def _end_backoff(self, run: Run, batch: Batch) -> None:
        self.backoff.discard(run.key)
        run.retry_at = None
        batch.n_delayed -= 1

    def finish_batch_if_done(self, batch: Batch, now: float) -> None:
        if batch.settle(now):
            log.info("batch %d %s: %d finished, %d failed, %d cancelled in %.1fs", batch.id, batch.state,
                     batch.n_finished, batch.n_failed, batch.n_cancelled, now - batch.start_time)
            self.metrics.batch_ended(batch)
            self.matcher.remove_ready(batch.id)
            del self.batches[batch.id]
            self.store.save_batch(batch.counters())


MAX_HELD_RUNS = 64
MAX_ID = 2 ** 63 - 1


def held_runs(msg: dict) -> set[tuple[int, int, int]]:
    """The runs a WorkerHeartbeat lists, validated: [[batch_id, batch_index, attempt], ...]."""
    runs = msg["runs"]
    if len(runs) > MAX_HELD_RUNS:
        raise RunqError(f"WorkerHeartbeat: runs lists {len(runs)} runs; at most {MAX_HELD_RUNS}", 400)
    out = set()
    for item in runs:
        if (not isinstance(item, list) or len(item) != 3
                or not all(type(v) is int and 0 <= v <= MAX_ID for v in item)):
            raise RunqError("WorkerHeartbeat: each entry of runs must be [batch_id, batch_index, attempt]", 400)
        out.add(tuple(item))
    return out
