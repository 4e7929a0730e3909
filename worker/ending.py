"""How a worker ends: stop (give every run back to runq), drain (finish the run, take no other) and
the moment it may exit.  Mixed into ``Session``, whose state it uses; no I/O (the loop asks
``check_exit`` after each turn and exits with its status).
"""
from __future__ import annotations

from simx import protocol

from .job import run_name


class Ending:
    """``stop`` and ``drain`` (from signals or runq's RunqDrain), ``check_exit``."""

    def stop(self, now: float) -> None:
        """Give the run and the held ones back to runq (WorkerStoppedRun) and wait a little for the acks."""
        self._collect_outcome(now)  # a run that just finished keeps its result
        self.stopping = True
        self._hand_back_held("stopping")
        self.stop_deadline = now + self.stop_timeout
        job = self.job
        if job is not None and job.report is None:
            self.log.info("stopping: giving run %s back to runq", run_name(job.key))
            self._drop_upload()
            job.request_abort("worker stopping")
            self._ended(job, "WorkerStoppedRun", {}, now)
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

    def _send_draining(self, now: float) -> None:
        self.drain_sent_at = now
        self.send(protocol.message("WorkerDraining", worker_id=self.worker_id))
