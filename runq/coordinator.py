"""runq's core, sans I/O: one message at a time at time `now`, messages out.

``handle(conn, msg, now)``, ``connected(conn, peer, now)``, ``disconnected(conn, now)``
and ``tick(now)`` change the in-memory model, buffer the matching writes in the
store, and return ``[(conn, message)]`` to send (a message of None means: close
that connection).  The server commits the store before it sends anything, so
nothing is ever sent about state that is not durable.

The coordinator is the one owner of runs, batches and workers: every change
of them happens here.  Client requests are checked in ``runq/api.py`` (fields,
who may ask), which then calls the changes below (``start_batch``,
``cancel_batch``, ``cancel_run``, ``drain_worker``); reads are
``runq/queries.py`` (read-only, committed data, off the loop in the server's
reader process).  Timers (leases, grace, time limits, contact writes,
retention) are kept by deadline in ``runq/timers.py``.
"""
from __future__ import annotations

import heapq
import logging
import math

from . import states
from simx import auth, protocol
from .api import Api
from .queries import MAX_RESULT_BYTES, Facts, Queries, json_size
from simx.config import BatchDefaults, RunqConfig, SchedConfig
from .errors import RunqError
from .fairshare import FairShare
from .files import Files, UploadRefused
from .matching import Matcher, Presence
from .metrics import Metrics
from .model import Batch, Run, Worker
from .recovery import Recovered, recover
from .retry import Backoff
from .store import Store
from .timers import Timers

log = logging.getLogger("runq.coordinator")

CONTACT_WRITE_INTERVAL = 5.0   # seconds between writes of a worker's last_contact
CONTACT_WRITE_SLOT = 1.0       # contact writes fall due on whole slots: a fleet's are grouped in one commit
PURGE_EVERY = 3600.0           # seconds between retention purges (runq.retention_days > 0)
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
        self.prefetched: dict[str, dict] = {}       # engine -> keys of assigned (held, unstarted) runs, oldest first
        self.workers: dict[int, Worker] = {}
        self.conns: dict[object, int] = {}        # conn -> worker id
        self.peers: dict[object, str] = {}
        self.out: list[tuple[object, dict | None]] = []
        self.started = now
        self.last_batch_id = self.last_worker_id = 0   # highest ids given out; recover() reads them
        self.timers = Timers()
        self._timer_handlers = {"lease": self._lease_due, "grace": self._grace_due, "limit": self._limit_due,
                                "contact": self._contact_due, "purge": self._purge_due,
                                "retry": self._retry_due}
        self.facts = Facts(self.presence)   # what reads take from memory (the reader gets a copy)
        self.files_dir = files_dir
        self.api = Api(self, Queries(store.reader(), self.facts, files_dir))
        self.metrics = Metrics(now)
        self.adopt(recover(store, now), now)
        if config.retention_days > 0:
            self.timers.set("purge", None, now)
        self.metrics.load_ended(store.ended_batch_totals())

    def adopt(self, model: Recovered, now: float) -> None:
        """Take over the model read back at start-up: requeue orphaned runs, arm the timers
        (grace for every worker, time limits of running runs), index batches with waiting runs."""
        self.batches.update(model.batches)
        self.runs.update(model.runs)
        self.workers.update(model.workers)
        self.last_batch_id, self.last_worker_id = model.last_batch_id, model.last_worker_id
        for run in model.orphans:
            if run.state == states.ASSIGNED:   # held unstarted: its worker's session is gone
                self.end_attempt(run, states.OUTCOME_REVOKED, "runq restarted before the run started", now)
                continue
            log.warning("run %s had no worker holding it: requeued", run.key)
            self.end_attempt(run, states.OUTCOME_LOST, "runq restarted; no worker held the run", now)
        for worker in self.workers.values():
            self.store.save_worker(worker.row())   # rows say what reads show: disconnected now
            if worker.state != states.GONE:
                self.timers.set("grace", worker.id, now + self.config.grace)
        for run in self.runs.values():
            if run.state == states.RUNNING:
                self.arm_limit(run, self.batches[run.batch_id])
        for batch in list(self.batches.values()):
            self.finish_batch_if_done(batch, now)
            if batch.id in self.batches:
                self.make_ready(batch, now)
        self.store.commit()
        log.info("recovered %d active batches, %d runs in flight, %d known workers",
                 len(self.batches), len(self.runs), len(self.workers))

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
            self.timers.set("grace", worker.id, now + self.config.grace)
            self.matcher.remove_idle(worker.id)
            self.note_presence(worker)
            self.store.save_worker(worker.row())
            log.info("worker %d disconnected%s", worker.id,
                     f" holding run {worker.run}" if worker.run else "")
        return self.take_output()

    def tick(self, now: float) -> list:
        """Fire the timers that are due: leases, grace periods, time limits, contact writes,
        retention.  Kept by deadline (runq/timers.py), so a tick costs O(due), not O(fleet)."""
        for kind, key in self.timers.due(now):
            self._timer_handlers[kind](key, now)
        if self.fairshare.due(now):
            self.fairshare.renormalize(now)
            self.matcher.rerank_all()
        return self.take_output()

    def next_deadline(self) -> float:
        """When tick() next has something to do (math.inf: nothing until a message comes): the
        server wakes for it, so timers fire at their deadline rather than on a sweep's beat."""
        return min(self.timers.next_deadline(), self.fairshare.due_at())

    # ---- timers (each handler checks the state it guards: a timer may be stale)
    def _retry_due(self, key: tuple[int, int], now: float) -> None:
        """A run's retry backoff is over: back to its batch's waiting runs."""
        run = self.runs.get(key)
        if run is None or run.state != states.WAITING or run.retry_at is None:
            return
        batch = self.batches[run.batch_id]
        run.retry_at = None
        batch.n_delayed -= 1
        heapq.heappush(batch.requeued, run.batch_index)
        if batch.state == states.ACTIVE:
            self.make_ready(batch, now)

    def _lease_due(self, wid: int, now: float) -> None:
        """The lease runs from the last word of the worker or the dispatch, whichever is later."""
        worker = self.workers.get(wid)
        if worker is None or worker.conn is None or not worker.run:
            return   # idle (no lease), or disconnected (the grace timer decides)
        run = self.runs.get(worker.run)
        if run is None:
            return
        due = max(worker.last_contact, run.started or 0.0) + self.config.lease
        if due > now:
            self.timers.set("lease", wid, due)
            return
        log.warning("worker %d silent for %.0fs (lease %.0fs): requeueing run %s",
                    worker.id, now - worker.last_contact, self.config.lease, worker.run)
        self.release_all(worker, states.OUTCOME_LOST, "worker lease expired", now)

    def _grace_due(self, wid: int, now: float) -> None:
        worker = self.workers.get(wid)
        if worker is None or worker.conn is not None or worker.state == states.GONE:
            return
        if worker.disconnected_at is None or worker.disconnected_at + self.config.grace > now:
            return
        if worker.run or worker.held:
            log.warning("worker %d not back within %.0fs: requeueing run %s%s", worker.id, self.config.grace,
                        worker.run, f" and {len(worker.held)} held" if worker.held else "")
            self.release_all(worker, states.OUTCOME_LOST, "worker disconnected past the grace period", now)
        worker.state = states.GONE
        self.store.save_worker(worker.row())

    def _limit_due(self, key: tuple[int, int], now: float) -> None:
        run = self.runs.get(key)
        batch = self.batches.get(key[0])
        if (run is None or run.state != states.RUNNING or batch is None or not batch.time_limit
                or run.started is None):
            return
        if run.started + batch.time_limit > now:
            self.timers.set("limit", key, run.started + batch.time_limit)
            return
        worker = self.workers.get(run.worker_id)
        log.warning("run %s over its %ss time limit: aborting", run.key, batch.time_limit)
        why = f"time limit of {batch.time_limit}s exceeded"
        if worker is not None and worker.run == run.key:
            self.take_back(worker, states.OUTCOME_TIMEOUT, why, now)
        else:
            self.end_attempt(run, states.OUTCOME_TIMEOUT, why, now)

    def _contact_due(self, wid: int, now: float) -> None:
        """last_contact is written at most every CONTACT_WRITE_INTERVAL per worker, batched by deadline."""
        worker = self.workers.get(wid)
        if worker is not None and worker.last_contact > worker.saved_contact:
            worker.saved_contact = worker.last_contact
            self.store.save_worker({"id": wid, "last_contact": worker.last_contact})   # that column only

    def _purge_due(self, _key, now: float) -> None:
        self.timers.set("purge", None, now + PURGE_EVERY)
        self.purge(now)

    def arm_lease(self, worker: Worker, now: float) -> None:
        if self.timers.when("lease", worker.id) is None:
            self.timers.set("lease", worker.id, now + self.config.lease)

    def arm_limit(self, run: Run, batch: Batch) -> None:
        if batch.time_limit and run.started is not None:
            self.timers.set("limit", run.key, run.started + batch.time_limit)

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
        if ("contact", wid) not in self.timers.live:
            self.timers.set("contact", wid, contact_slot(max(now, worker.saved_contact + CONTACT_WRITE_INTERVAL)))
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
        elif mtype == "WorkerStartedRun":
            self._started(worker, msg, now)
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
        claimed = protocol.run_key(msg)   # ProtocolError for a half claim: before anything changes
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
        prefetch = msg.get("prefetch", 0)
        if prefetch > MAX_HELD_RUNS:
            raise RunqError(f"{msg['type']}: prefetch {prefetch} is over {MAX_HELD_RUNS}", 400)
        worker.prefetch = prefetch
        for key in list(worker.held):   # what it held unstarted went with the old session
            self.revoke(worker, key, "worker reconnected", now, abort=False)
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
            self.arm_lease(worker, now)
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
        worker.saved_contact = worker.last_contact
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
        if current is not None and current not in held and worker.run_seq <= msg["seq"]:
            log.warning("worker %d does not hold run %s (assignment %d lost or dropped): requeueing it",
                        worker.id, worker.run, worker.run_seq)
            self.take_back(worker, states.OUTCOME_LOST, "the worker did not hold the run it was assigned", now,
                           abort=False)
            current = None
        mine = {current}
        for key, seq in list(worker.held.items()):   # prefetched, not started
            run3 = (key[0], key[1], self.runs[key].attempt)
            if run3 in held:
                mine.add(run3)
            elif seq <= msg["seq"]:
                log.warning("worker %d does not hold run %s it was assigned (seq %d): requeueing it",
                            worker.id, key, seq)
                self.revoke(worker, key, "the worker did not hold the run it was assigned", now, abort=False)
                let_go = True   # it has room again
        for key in held:
            if key not in mine and key != worker.aborting:
                self.send(worker.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                        attempt=key[2], reason="this run is no longer yours"))
        if let_go:
            self._settle_worker(worker, now)

    def _current_run(self, worker: Worker, msg: dict, now: float | None = None) -> Run | None:
        """The run a message names if it is that worker's current attempt.  With `now`, a run the
        worker holds unstarted (prefetch) counts as started by this message."""
        run = self.runs.get((msg["batch_id"], msg["batch_index"]))
        if run is None or run.worker_id != worker.id or run.attempt != msg["attempt"]:
            return None
        if run.state == states.ASSIGNED and now is not None and run.key in worker.held and worker.run is None:
            self.start_run(worker, run, now)
        return run if run.state == states.RUNNING else None

    def _started(self, worker: Worker, msg: dict, now: float) -> None:
        """WorkerStartedRun: a prefetching worker starts a run it holds."""
        run = self.runs.get((msg["batch_id"], msg["batch_index"]))
        if (run is None or run.state != states.ASSIGNED or run.worker_id != worker.id
                or run.attempt != msg["attempt"] or run.key not in worker.held):
            log.info("worker %d started run %s attempt %d, which is not its to start (taken back): ignored",
                     worker.id, (msg["batch_id"], msg["batch_index"]), msg["attempt"])
            return   # taken back meanwhile: the RunqAbortRun sent then stops it
        if worker.run is not None:
            raise RunqError(f"WorkerStartedRun {run.key}: worker {worker.id} is still running {worker.run} "
                            "(report it first)", 409)
        self.start_run(worker, run, now)

    def start_run(self, worker: Worker, run: Run, now: float) -> None:
        """assigned -> running: the worker computes it now; its time limit starts."""
        states.check_transition(run.state, states.RUNNING)
        worker.run_seq = worker.held.pop(run.key)
        self._unindex_prefetched(run)
        run.state, run.started = states.RUNNING, now
        worker.run, worker.state = run.key, states.BUSY
        self.store.save_run(run.row())
        self.store.save_worker(worker.row())
        self.arm_lease(worker, now)
        batch = self.batches[run.batch_id]
        self.arm_limit(run, batch)
        self.fairshare.started(run.key, batch.sharer, now)   # its fair-share usage starts now
        self.matcher.rerank(batch.sharer)

    def _report(self, worker: Worker, msg: dict, now: float) -> None:
        mtype, key = msg["type"], protocol.run_key(msg)
        if msg.get("kind") not in (None, *states.FAILURE_KINDS):
            raise RunqError(f"{mtype}: field 'kind' must be one of {', '.join(states.FAILURE_KINDS)}", 400)
        run = self._current_run(worker, msg, now)
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
        data = msg.get("data")
        small = data is None or isinstance(data, (bool, int, float)) or (isinstance(data, str) and len(data) < 1024)
        size = mtype == "WorkerFinishedRun" and not small and json_size(data)
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
                for held in list(worker.held):   # what it holds unstarted would fail the same way
                    self.revoke(worker, held, "the worker cannot run its engine", now)
        elif mtype == "WorkerAbortedRun":
            self.end_attempt(run, states.OUTCOME_ABORTED, msg.get("message") or "aborted by the worker", now)
        else:  # WorkerStoppedRun: the worker process is stopping; its run goes back at once
            self.set_draining(worker)
            self.end_attempt(run, states.OUTCOME_STOPPED, "worker stopped", now)
            for held in list(worker.held):   # and what it held unstarted (prefetch)
                self.revoke(worker, held, "worker stopped", now, abort=False)
        worker.run = None
        worker.last_report = (key, REPORT_OUTCOME[mtype])
        self.send(worker.conn, {"type": "RunqAck", **ack, "accepted": True})   # runq's own fields: not re-checked
        self._settle_worker(worker, now)

    def _file_chunk(self, worker: Worker, msg: dict, now: float) -> None:
        """A piece of a finished run's output file, before its WorkerFinishedRun: written at once.
        A chunk of another attempt is refused (RunqAbortRun); a chunk runq cannot take (no space,
        over the per-run limit, bad name) fails the attempt, and the run is retried."""
        key = protocol.run_key(msg)
        run = self._current_run(worker, msg, now)
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
        """A re-sent report whose outcome is already recorded (its ack was lost, or runq died
        before sending it).  Answered from the worker's last accepted report (one per worker);
        only a report older than that (after a restart) is looked up in the committed attempts."""
        outcome = REPORT_OUTCOME[msg["type"]]
        key = protocol.run_key(msg)
        if worker.last_report is not None and worker.last_report[0] == key:
            return worker.last_report[1] == outcome
        return any(a["attempt"] == msg["attempt"] and a["worker_id"] == worker.id and a["outcome"] == outcome
                   for a in self.store.attempt_rows(msg["batch_id"], msg["batch_index"]))

    # ---- changes asked by clients (runq/api.py checked the fields and who asks)
    def start_batch(self, spec: dict, now: float) -> Batch:
        """A new batch: spec holds name, group, user, owner, engine, n_runs, param, max_attempts,
        max_requeues, time_limit, idempotency_key (validated).  One row; runs are implicit."""
        self.last_batch_id += 1
        batch = Batch(id=self.last_batch_id, start_time=now, n_waiting=spec["n_runs"], **spec)
        self.batches[batch.id] = batch
        self.store.add_batch(batch.row())
        log.info("batch %d started: %d runs of %s (group %r, user %r, owner %r)", batch.id, batch.n_runs,
                 batch.engine, batch.group, batch.user, batch.owner)
        self.make_ready(batch, now)
        return batch

    def cancel_batch(self, batch_id: int, now: float) -> bool:
        """Cancel an active batch: waiting runs cancelled, running ones aborted.  False if it had ended."""
        batch = self.batches.get(batch_id)
        if batch is None:
            return False
        log.info("cancelling batch %d", batch.id)
        batch.state = states.BATCH_CANCELLED
        self.matcher.remove_ready(batch.id)
        virgin = batch.untouched_waiting()
        batch.count(states.WAITING, -virgin)
        batch.count(states.CANCELLED, +virgin)
        for index in sorted(batch.active):
            self._cancel_active(self.runs[(batch.id, index)], "batch cancelled", now)
        batch.requeued.clear()
        self.finish_batch_if_done(batch, now)
        self.store.save_batch(batch.counters())
        return True

    def cancel_run(self, batch_id: int, index: int, now: float) -> None:
        """Cancel one run of an active batch (waiting: it never starts; running: aborted)."""
        batch = self.batches.get(batch_id)
        if batch is None:
            return
        run = self.runs.get((batch_id, index))
        if run is not None:
            if run.state == states.WAITING and run.retry_at is None:   # else: in backoff, not in the heap
                batch.requeued.remove(index)
                heapq.heapify(batch.requeued)
            self._cancel_active(run, "run cancelled", now)
        elif index >= batch.next_index and index not in batch.skip_ahead:
            batch.skip_ahead.add(index)
            self.store.save_run(Run(batch_id, index, state=states.CANCELLED, ended=now).row(), new=True)
            batch.count(states.WAITING, -1)
            batch.count(states.CANCELLED, +1)
            if not batch.has_waiting():
                self.matcher.remove_ready(batch_id)
            self.finish_batch_if_done(batch, now)
            self.store.save_batch(batch.counters())

    def _cancel_active(self, run: Run, why: str, now: float) -> None:
        if run.state == states.WAITING:
            self.move_run(run, states.CANCELLED, now)
        elif run.state == states.ASSIGNED:
            holder = self.workers.get(run.worker_id)
            if holder is not None and run.key in holder.held:
                holder.held.pop(run.key)
                self.send(holder.conn, protocol.message("RunqAbortRun", batch_id=run.batch_id,
                                                        batch_index=run.batch_index, attempt=run.attempt,
                                                        reason=why))
            self._unindex_prefetched(run)
            self.end_attempt(run, states.OUTCOME_CANCELLED, why, now)
            if holder is not None:
                self._settle_worker(holder, now)
        elif run.state == states.RUNNING:
            worker = self.workers.get(run.worker_id)
            if worker is not None and worker.run == run.key:
                self.take_back(worker, states.OUTCOME_CANCELLED, why, now)
            else:
                self.end_attempt(run, states.OUTCOME_CANCELLED, why, now)

    def drain_worker(self, worker: Worker) -> None:
        self.set_draining(worker)
        self.send(worker.conn, protocol.message("RunqDrain"))

    def purge(self, now: float) -> None:
        """Retention: batches ended and workers gone more than runq.retention_days ago."""
        days = self.config.retention_days
        cutoff = now - days * 86400
        n_batches, n_workers = self.store.purge(cutoff)
        for wid in [w.id for w in self.workers.values()
                    if w.conn is None and w.run is None and not w.held and w.last_contact < cutoff]:
            del self.workers[wid]
        if n_batches:
            self.metrics.load_ended(self.store.ended_batch_totals())
            self.files.purge(lambda batch_id: self.store.batch_row(batch_id) is not None)
        if n_batches or n_workers:
            log.info("purged %d batches and %d workers older than %s days", n_batches, n_workers, days)

    # ---- the state as it is now, for the replies to changes (not yet committed)
    def batch_row(self, batch_id: int) -> dict | None:
        batch = self.batches.get(batch_id)
        if batch is not None:
            return batch.row()
        return self.store.current("batches", batch_id)

    def run_row(self, batch_id: int, index: int) -> dict | None:
        run = self.runs.get((batch_id, index))
        if run is not None:
            return run.row()
        return self.store.current("runs", (batch_id, index))

    def batch_by_key(self, key: str) -> dict | None:
        return self.store.batch_by_key(key)

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
        """Give a connected worker with nothing to do its next run (a prefetching one: up to its
        prefetch), or index it as idle."""
        if worker.conn is None:
            return
        if worker.prefetch and not worker.draining and worker.aborting is None:
            while self._has_room(worker):
                batch_id = self.matcher.batch_for(worker.traits)
                if batch_id is None:
                    break
                self.assign(worker, self.batches[batch_id], now)
        if worker.run is not None or worker.aborting is not None or worker.held:
            busy = worker.run is not None or worker.held
            new = states.DRAINING if worker.draining else (states.BUSY if busy else states.ABORTING)
        elif worker.draining:
            new = states.DRAINING
        elif worker.broken is not None:
            new = states.BROKEN
        else:
            batch_id = self.matcher.batch_for(worker.traits)
            if batch_id is None and worker.prefetch:
                batch_id = self._take_back_for(worker, now)
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
        """A batch has waiting runs: hand them to idle matching workers (one each first, then
        more in turn to those that prefetch), index the rest."""
        roomy = []
        while batch.has_waiting():
            wid = self.matcher.take_worker_for(batch.traits)
            if wid is None:
                break
            worker = self.workers[wid]
            self.assign(worker, batch, now)
            if self._has_room(worker):
                roomy.append(worker)
        while roomy and batch.has_waiting():
            worker = roomy.pop(0)
            self.assign(worker, batch, now)
            if self._has_room(worker):
                roomy.append(worker)
        if batch.has_waiting():
            self.matcher.add_ready(batch.id, batch.traits, batch.sharer, batch.priority)
        else:
            self.matcher.remove_ready(batch.id)

    @staticmethod
    def _has_room(worker: Worker) -> bool:
        return (worker.prefetch > 0 and worker.conn is not None and not worker.draining
                and worker.broken is None and worker.aborting is None
                and len(worker.held) + (worker.run is not None) < worker.prefetch)

    # ---- prefetch: runs held unstarted, revocable
    def _index_prefetched(self, run: Run, batch: Batch) -> None:
        self.prefetched.setdefault(batch.engine, {})[run.key] = None

    def _unindex_prefetched(self, run: Run) -> None:
        held = self.prefetched.get(self.batches[run.batch_id].engine)
        if held is not None:
            held.pop(run.key, None)

    def _take_back_for(self, idle: Worker, now: float) -> int | None:
        """An idle prefetching worker and no waiting run for it: take back the oldest run another
        worker holds unstarted behind a run it computes (this one can start it now).  The batch
        it went back to, or None."""
        e, g, u = idle.traits
        for key in self.prefetched.get(e, ()):
            run, batch = self.runs[key], self.batches[key[0]]
            holder = self.workers.get(run.worker_id)
            if (holder is None or holder is idle or holder.run is None or (g and g != batch.group)
                    or (u and u != batch.user)):
                continue
            log.info("run %s taken back from worker %d (busy) for idle worker %d", key, holder.id, idle.id)
            # the holder gets more when it next reports (filling it now would take this run straight back)
            self.revoke(holder, key, "taken back for an idle worker that can start it now", now)
            return self.matcher.batch_for(idle.traits)
        return None

    def revoke(self, holder: Worker, key: tuple[int, int], why: str, now: float, abort: bool = True) -> None:
        """assigned -> waiting: a run a worker holds unstarted goes back to the queue, costing
        neither an attempt nor a requeue.  The worker drops it (RunqAbortRun) without a word."""
        holder.held.pop(key, None)
        run = self.runs[key]
        self._unindex_prefetched(run)
        if abort and holder.conn is not None:
            self.send(holder.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                    attempt=run.attempt, reason=why))
        self.end_attempt(run, states.OUTCOME_REVOKED, why, now)

    def release_all(self, worker: Worker, outcome: str, why: str, now: float, abort: bool = True) -> None:
        """The worker is lost (lease, grace): its running run is taken back, its held ones revoked."""
        for key in list(worker.held):
            self.revoke(worker, key, why, now, abort=abort)
        if worker.run:
            self.take_back(worker, outcome, why, now, abort=abort)

    def assign(self, worker: Worker, batch: Batch, now: float) -> None:
        index, materialized = batch.take_next_index()
        run = self.runs.get((batch.id, index)) if materialized else None
        new = run is None
        if new:
            run = Run(batch_id=batch.id, batch_index=index)
            self.runs[run.key] = run
            batch.active.add(index)
        self.metrics.dispatched(now - (batch.start_time if run.ended is None else run.ended))
        run.attempt, run.worker_id, run.host = run.attempt + 1, worker.id, worker.host
        run.ended, run.progress, run.message = None, 0.0, None
        batch.count(states.WAITING, -1)
        batch.count(states.RUNNING, +1)   # assigned runs count as running (in flight)
        if not batch.has_waiting():
            self.matcher.remove_ready(batch.id)
        worker.state = states.BUSY
        worker.assign_seq += 1
        if worker.prefetch:   # held until it says WorkerStartedRun; revocable until then
            run.state, run.started = states.ASSIGNED, None
            worker.held[run.key] = worker.assign_seq
            self._index_prefetched(run, batch)
        else:                 # an old worker starts it at once
            run.state, run.started = states.RUNNING, now
            worker.run, worker.run_seq = run.key, worker.assign_seq
            self.arm_lease(worker, now)
            self.arm_limit(run, batch)
            self.fairshare.started(run.key, batch.sharer, now)
            self.matcher.rerank(batch.sharer)
        self.store.save_run(run.row(), new=new)
        self.store.save_batch(batch.counters())
        self.store.save_worker(worker.row())
        # built, not checked: every field is runq's own, validated when it came in (hot path)
        self.send(worker.conn, {
            "type": "RunqAssignRun", "batch_id": batch.id, "batch_index": index, "attempt": run.attempt,
            "seq": worker.assign_seq, "engine": batch.engine, "param": batch.param_of(index),
            "time_limit": batch.time_limit})

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
        elif outcome == states.OUTCOME_REVOKED:
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
            self.timers.set("retry", run.key, run.retry_at)
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
        self.timers.cancel("retry", run.key)
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


def contact_slot(when: float) -> float:
    """The end of the CONTACT_WRITE_SLOT that `when` falls in."""
    return math.ceil(when / CONTACT_WRITE_SLOT) * CONTACT_WRITE_SLOT


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
