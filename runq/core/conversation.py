"""The worker conversation: registration and reconnection, heartbeats (reconciling what the
worker computes with what runq gave it), progress, starts, reports and output-file chunks.

Only the connection that registered or proved a worker speaks for it.  A report names its
attempt; one that is not the run's current attempt on that worker is acked ``accepted:
false`` unless it re-sends an outcome already recorded (its ack was lost), which is acked
without being counted again (runq/core/reports.py remembers recent outcomes).
"""
from __future__ import annotations

import logging

from simx import auth, limits, protocol
from . import states
from .errors import RunqError, UploadRefused
from .model import Run, Worker

log = logging.getLogger("runq.coordinator")

REPORT_OUTCOME = {
    "WorkerFinishedRun": states.OUTCOME_FINISHED, "WorkerFailedRun": states.OUTCOME_FAILED,
    "WorkerAbortedRun": states.OUTCOME_ABORTED, "WorkerStoppedRun": states.OUTCOME_STOPPED,
}


def held_runs(msg: dict) -> set[tuple[int, int, int]]:
    """The runs a WorkerHeartbeat lists, validated: [[batch_id, batch_index, attempt], ...]."""
    runs = msg["runs"]
    if len(runs) > limits.MAX_PREFETCH:
        raise RunqError(f"WorkerHeartbeat: runs lists {len(runs)} runs; at most {limits.MAX_PREFETCH}", 400)
    out = set()
    for item in runs:
        if (not isinstance(item, list) or len(item) != 3
                or not all(type(v) is int and 0 <= v <= limits.MAX_ID for v in item)):
            raise RunqError("WorkerHeartbeat: each entry of runs must be [batch_id, batch_index, attempt]", 400)
        out.add(tuple(item))
    return out


class Conversation:
    def __init__(self, coord):
        self.c = coord
        self.runs, self.workers, self.store = coord.runs, coord.workers, coord.store
        self.handlers = {
            "WorkerHeartbeat": self.heartbeat, "WorkerUpdate": self.update, "WorkerDraining": self.draining,
            "WorkerFileChunk": self.file_chunk, "WorkerStartedRun": self.started,
            **{mtype: self.report for mtype in REPORT_OUTCOME},
        }

    def handle(self, conn, msg: dict, now: float) -> None:
        mtype = msg["type"]
        if mtype in ("WorkerReady", "WorkerReconnect"):
            self.hello(conn, msg, now)
            return
        wid = self.c.conns.get(conn)
        if wid is None or msg["worker_id"] != wid:
            raise RunqError(f"{mtype} for worker {msg['worker_id']}: this connection speaks for "
                            f"{'worker %d' % wid if wid is not None else 'no worker (send WorkerReady first)'}", 403)
        worker = self.workers[wid]
        self.c.deadlines.heard_from(worker, now)
        self.handlers[mtype](worker, msg, now)

    # ---- registration
    def proven(self, state: auth.PeerState, msg: dict) -> tuple[Worker | None, str]:
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

    def hello(self, conn, msg: dict, now: float) -> None:
        c = self.c
        if conn in c.conns:
            raise RunqError(f"{msg['type']}: this connection already speaks for worker {c.conns[conn]}", 409)
        gate = c.peers.gate
        state = gate.states[conn]
        try:
            state.bounds.check(msg)
        except auth.AuthError as exc:
            raise RunqError(f"{msg['type']}: {exc}", exc.code) from None
        claimed = protocol.run_key(msg)   # ProtocolError for a half claim: before anything changes
        prefetch = msg.get("prefetch", 0)   # the protocol bounds it (1 to limits.MAX_PREFETCH)
        worker, why = self.proven(state, msg) if msg["type"] == "WorkerReconnect" else (None, "")
        address = c.peers.address(conn)
        sent_key = None
        new = worker is None
        if new:
            if why:
                log.warning("worker from %s not recognized: %s; registering it as new", address, why)
            # A fresh id, never one the peer chose: ids stay dense and in range.
            wid = c.last_worker_id = c.last_worker_id + 1
            key, send_key = gate.new_worker_key(state)
            sent_key = key if send_key else None
            worker = Worker(id=wid, host=msg["host"], ipaddr=address, pid=msg["pid"],
                            group=msg["group"], user=msg["user"], engine=msg["engine"], cost=msg["cost"],
                            speed=msg["speed"], priority=msg["priority"], started=now, key=key)
            self.workers[wid] = worker
            log.info("worker %d ready: %s pid %d engine=%s group=%r user=%r", wid, worker.host, worker.pid,
                     worker.engine, worker.group, worker.user)
        else:
            wid = worker.id
            if worker.conn is not None and worker.conn != conn:
                c.conns.pop(worker.conn, None)
                c.send(worker.conn, None)  # a half-open old connection: drop it
            log.info("worker %d reconnected", wid)
        c.conns[conn] = wid
        worker.conn, worker.last_contact, worker.disconnected_at, worker.cut_off = conn, now, None, False
        worker.ipaddr = address or worker.ipaddr
        worker.prefetch = prefetch
        for key in list(worker.held):   # what it held unstarted went with the old session
            c.lifecycle.revoke(worker, key, "worker reconnected", now, abort=False)
        keep = False
        if claimed is not None and not new:
            run = self.runs.get(claimed[:2])
            keep = (run is not None and run.state == states.RUNNING and run.worker_id == wid
                    and run.attempt == claimed[2])
        # The answer goes first, and the worker is marked busy with a run it still holds
        # before anything can settle it: otherwise it could be handed a new run ahead of
        # RunqAcceptWorker, or while it is still computing one it will not give up at once.
        c.send(conn, protocol.message("RunqAcceptWorker", worker_id=wid, key=sent_key,
                                      heartbeat_interval=c.config.heartbeat_interval, keep_run=keep))
        if keep:
            worker.aborting = None
            c.deadlines.arm_lease(worker, now)
        else:
            worker.aborting = claimed   # None when it holds nothing
            if claimed is not None:
                c.send(conn, protocol.message("RunqAbortRun", batch_id=claimed[0], batch_index=claimed[1],
                                              attempt=claimed[2], reason="this run is no longer yours"))
            if worker.run:
                # runq gave this worker a run it does not have (the assignment was lost with the
                # connection, or runq restarted): the run goes back to the queue.
                c.lifecycle.take_back(worker, states.OUTCOME_LOST, "worker came back without its run", now,
                                      abort=False)
        c.dispatch.note_presence(worker)
        c.dispatch.dispatch_worker(worker, now)
        worker.saved_contact = worker.last_contact
        if new:
            self.store.register_worker(worker.row())
        else:
            self.store.update_worker({**worker.state_row(), "ipaddr": worker.ipaddr,
                                      "last_contact": worker.last_contact})

    # ---- while it runs
    def heartbeat(self, worker: Worker, msg: dict, now: float) -> None:
        """Reconcile what the worker computes with what runq gave it.

        A run assigned at a seq the worker has seen (seq <= the heartbeat's) that it does not
        list was lost on the way or dropped: it goes back to the queue.  One assigned later is
        still in flight.
        """
        held = held_runs(msg)
        has_room = worker.aborting is not None and worker.aborting not in held
        if has_room:
            worker.aborting = None           # it let go of the run we took back
        run = self.runs.get(worker.run) if worker.run else None
        current = (run.batch_id, run.batch_index, run.attempt) if run is not None else None
        if current is not None and current not in held and worker.run_seq <= msg["seq"]:
            log.warning("worker %d does not hold run %s (assignment %d lost or dropped): requeueing it",
                        worker.id, worker.run, worker.run_seq)
            self.c.lifecycle.take_back(worker, states.OUTCOME_LOST, "the worker did not hold the run it was "
                                       "assigned", now, abort=False)
            current = None
        mine = {current}
        for key, seq in list(worker.held.items()):   # prefetched, not started
            run3 = (key[0], key[1], self.runs[key].attempt)
            if run3 in held:
                mine.add(run3)
            elif seq <= msg["seq"]:
                log.warning("worker %d does not hold run %s it was assigned (seq %d): requeueing it",
                            worker.id, key, seq)
                self.c.lifecycle.revoke(worker, key, "the worker did not hold the run it was assigned", now,
                                        abort=False)
                has_room = True
        for key in held:
            if key not in mine and key != worker.aborting:
                self.c.send(worker.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                          attempt=key[2], reason="this run is no longer yours"))
        if has_room:
            self.c.dispatch.dispatch_worker(worker, now)

    def update(self, worker: Worker, msg: dict, now: float) -> None:
        run = self.current_run(worker, msg)
        if run is not None:
            run.progress = max(0.0, min(1.0, float(msg["progress"])))
            run.message = msg.get("message")
            self.store.save_progress(run.batch_id, run.batch_index, run.progress, run.message)

    def draining(self, worker: Worker, msg: dict, now: float) -> None:
        self.c.dispatch.set_draining(worker)

    def current_run(self, worker: Worker, msg: dict, now: float | None = None) -> Run | None:
        """The run a message names if it is that worker's current attempt.  With `now`, a run the
        worker holds unstarted (prefetch) counts as started by this message."""
        run = self.runs.get((msg["batch_id"], msg["batch_index"]))
        if run is None or run.worker_id != worker.id or run.attempt != msg["attempt"]:
            return None
        if run.state == states.ASSIGNED and now is not None and run.key in worker.held and worker.run is None:
            self.c.lifecycle.start_run(worker, run, now)
        return run if run.state == states.RUNNING else None

    def started(self, worker: Worker, msg: dict, now: float) -> None:
        """WorkerStartedRun: a prefetching worker starts a run it holds."""
        run = self.runs.get((msg["batch_id"], msg["batch_index"]))
        if (run is None or run.state != states.ASSIGNED or run.worker_id != worker.id
                or run.attempt != msg["attempt"] or run.key not in worker.held):
            log.debug("worker %d started run %s attempt %d, which is not its to start (taken back): ignored",
                      worker.id, (msg["batch_id"], msg["batch_index"]), msg["attempt"])
            return   # taken back meanwhile: the RunqAbortRun sent then stops it
        if worker.run is not None:
            raise RunqError(f"WorkerStartedRun {run.key}: worker {worker.id} is still running {worker.run} "
                            "(report it first)", 409)
        self.c.lifecycle.start_run(worker, run, now)

    # ---- reports
    def report(self, worker: Worker, msg: dict, now: float) -> None:
        c, life = self.c, self.c.lifecycle
        mtype, key = msg["type"], protocol.run_key(msg)
        if msg.get("kind") not in (None, *states.FAILURE_KINDS):
            raise RunqError(f"{mtype}: field 'kind' must be one of {', '.join(states.FAILURE_KINDS)}", 400)
        run = self.current_run(worker, msg, now)
        ack = dict(batch_id=key[0], batch_index=key[1], attempt=key[2])
        if run is None:
            accepted = self.already_recorded(worker, msg)
            if not accepted:
                log.warning("rejected %s from worker %d for run %s attempt %d: not its current attempt",
                            mtype, worker.id, key[:2], key[2])
            if worker.aborting == key:
                worker.aborting = None
            if mtype == "WorkerStoppedRun":
                c.dispatch.set_draining(worker)
            c.send(worker.conn, protocol.message("RunqAck", accepted=accepted, **ack,
                                                 message=None if accepted else "stale attempt"))
            c.dispatch.dispatch_worker(worker, now)
            return
        files = c.files
        if mtype != "WorkerFinishedRun" and files is not None and key in files.incoming:
            files.discard(key)   # the run ended otherwise: its partial upload goes
        data = msg.get("data")
        small = data is None or isinstance(data, (bool, int, float)) or (isinstance(data, str) and len(data) < 1024)
        size = mtype == "WorkerFinishedRun" and not small and protocol.json_size(data)
        if size > limits.MAX_RESULT_BYTES:  # never stored: it would break every listing that shows it
            if files is not None:
                files.discard(key)
            run.failures = max(run.failures, c.batches[run.batch_id].max_attempts - 1)  # no retry
            life.end_attempt(run, states.OUTCOME_FAILED, f"result of {size} bytes refused: over the "
                             f"{limits.MAX_RESULT_BYTES}-byte limit for a stored result", now)
        elif mtype == "WorkerFinishedRun":
            problem = self.files_problem(key, c.batches[run.batch_id].engine, msg["data"])
            if problem is None:
                life.end_attempt(run, states.OUTCOME_FINISHED, None, now, result=msg["data"])
            else:
                log.warning("run %s of worker %d: %s", key, worker.id, problem)
                life.end_attempt(run, states.OUTCOME_FAILED, problem, now)
        elif mtype == "WorkerFailedRun":
            kind = msg.get("kind") or states.KIND_TRANSIENT
            life.end_attempt(run, states.OUTCOME_FAILED, msg["message"], now, traceback=msg.get("traceback"),
                             kind=kind)
            if kind == states.KIND_WORKER:
                c.dispatch.set_broken(worker, msg["message"])
                for held in list(worker.held):   # what it holds unstarted would fail the same way
                    life.revoke(worker, held, "the worker cannot run its engine", now)
        elif mtype == "WorkerAbortedRun":
            life.end_attempt(run, states.OUTCOME_ABORTED, msg.get("message") or "aborted by the worker", now)
        else:  # WorkerStoppedRun: the worker process is stopping; its run goes back at once
            c.dispatch.set_draining(worker)
            life.end_attempt(run, states.OUTCOME_STOPPED, "worker stopped", now)
            for held in list(worker.held):   # and what it held unstarted (prefetch)
                life.revoke(worker, held, "worker stopped", now, abort=False)
        worker.run = None
        worker.last_report = (key, REPORT_OUTCOME[mtype])
        c.send(worker.conn, protocol.message("RunqAck", **ack, accepted=True))
        c.dispatch.dispatch_worker(worker, now)

    def already_recorded(self, worker: Worker, msg: dict) -> bool:
        """A re-sent report whose outcome is already recorded (its ack was lost, or runq died
        before sending it): the worker's last accepted report, or a recent attempt's outcome."""
        outcome = REPORT_OUTCOME[msg["type"]]
        key = protocol.run_key(msg)
        if worker.last_report is not None and worker.last_report[0] == key:
            return worker.last_report[1] == outcome
        return self.c.recent.get(key) == (worker.id, outcome)

    # ---- output files
    def file_chunk(self, worker: Worker, msg: dict, now: float) -> None:
        """A piece of a finished run's output file, before its WorkerFinishedRun: written at once.
        A chunk of another attempt is refused (RunqAbortRun); a chunk runq cannot take (no space,
        over the per-run limit, bad name) fails the attempt, and the run is retried."""
        key = protocol.run_key(msg)
        run = self.current_run(worker, msg, now)
        if run is None:
            log.warning("worker %d sent a file of run %s, not its current attempt: refused", worker.id, key)
            self.c.send(worker.conn, protocol.message("RunqAbortRun", batch_id=key[0], batch_index=key[1],
                                                      attempt=key[2], reason="files of a stale attempt are refused"))
            return
        catalog, files = self.c.catalog, self.c.files
        definition = catalog.engines.get(self.c.batches[run.batch_id].engine) if catalog else None
        try:
            if files is None:
                raise UploadRefused("this runq keeps no output files")
            if definition is not None and not definition.files:
                raise UploadRefused(f"engine {definition.name!r} does not declare files: true")
            files.write(key, msg)
        except UploadRefused as exc:
            log.warning("upload of run %s from worker %d refused: %s", key, worker.id, exc)
            if files is not None:
                files.discard(key)
            self.c.lifecycle.take_back(worker, states.OUTCOME_FAILED, f"upload of the run's files failed: {exc}",
                                       now)

    def files_problem(self, key, engine: str, data) -> str | None:
        """Why a finished run's files do not match its manifest (``data.files``), or None.  Only for
        engines that declare files, or when files were uploaded."""
        catalog, files = self.c.catalog, self.c.files
        definition = catalog.engines.get(engine) if catalog is not None else None
        if not getattr(definition, "files", False) and (files is None or key not in files.incoming):
            return None
        if files is None:
            return "the run's output files: this runq keeps no output files"
        manifest = data.get("files", []) if isinstance(data, dict) else []
        try:
            files.complete(key, manifest)
        except UploadRefused as exc:
            return f"the run's output files: {exc}"
        return None
