"""Who the worker is to runq: Hello, runq's challenge and the proof of the secret, WorkerReady or
WorkerReconnect, the acceptance (a worker id, perhaps a new one), a new runq instance, a refusal.
Mixed into ``Session``, whose state it uses; no I/O (protocol v2: simx/auth.py, docs/SECURITY.md).
"""
from __future__ import annotations

import dataclasses
import math

from simx import auth, protocol
from simx.client import RunqRefused, check_challenge

from .job import run_name


def run_fields(key) -> dict:
    names = ("batch_id", "batch_index", "attempt")
    return dict(zip(names, key if key is not None else (None, None, None)))


class Handshake:
    """``hello`` and ``registration`` for the loop; the answers to RunqChallenge, RunqAcceptWorker, RunqError."""

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
                self._abandon_upload("runq did not keep the run after a reconnect", now)
            else:
                self.log.info("runq did not keep run %s; aborting it", run_name(job.key))
                job.request_abort("runq did not keep the run after a reconnect")
        for key in self.pending:
            self._send_report(key)
        if self.held:
            self._send_heartbeat(now)  # runq reconciles the prefetched runs now (takes back or aborts)
        if self.draining:
            self._send_draining(now)

    def _error(self, msg: dict) -> None:
        self.log.error("runq error: %s", msg["message"])
        # A refused secret (401), another protocol version (426) or traits outside the
        # secret's bounds (403 at registration) are configuration errors that retrying
        # cannot fix, so give up rather than loop forever.
        code = msg.get("code")
        if code in (401, 426) or (code == 403 and not self.online):
            self.log.error("runq refused this worker (%s); exiting", code)
            self.exit_code = 2
