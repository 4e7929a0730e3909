"""runq's core: one message at a time at time `now`, an ``Output`` back.  No I/O.

The shell (runq/server.py) calls ``connected``, ``handle``, ``disconnected``, ``bad_frame``,
``tick`` and ``committed``; each returns an ``Output`` (runq/core/output.py): what to send
after the turn's commit, what may leave without it, what the reader answers.  The core
never touches a socket, the database, a file or the clock: its ports are the store it
buffers writes in (``add_batch``, ``assign_run``, ... by intent, runq/store/) and the output
files (runq/files.py); what it needs from the database at start comes in ``Start``
(runq/core/recovery.py), read by the shell before the loop.

This module is the router and the one owner of the in-memory model (active batches, the
runs in flight, workers and their connections); the concerns are modules of their own:
``peers`` (who is talking; the one place an error becomes a reply), ``conversation`` (worker
messages), ``dispatch`` (who gets which run, prefetch), ``lifecycle`` (how an attempt ends,
the state tables of runq/core/states.py), ``deadlines`` (timers), ``commands`` (clients).
"""
from __future__ import annotations

import logging

from simx import auth
from simx.config import BatchDefaults, RunqConfig, SchedConfig
from .commands import Commands
from .conversation import Conversation
from .deadlines import Deadlines
from .dispatch import Dispatch
from .fairshare import FairShare
from .lifecycle import Lifecycle
from .matching import Matcher, Presence
from .metrics import Metrics
from .model import Batch, Run, Worker
from .output import Output
from .peers import Peers
from .quotas import Quotas
from .recovery import Start
from .reports import RecentReports
from .retry import Backoff
from .timers import Timers

log = logging.getLogger("runq.coordinator")


class Coordinator:
    def __init__(self, store, start: Start, config: RunqConfig = RunqConfig(),
                 batch_defaults: BatchDefaults = BatchDefaults(), now: float = 0.0,
                 secrets: auth.Secrets = auth.Secrets(), sched: SchedConfig = SchedConfig(), catalog=None,
                 files=None, quotas: Quotas = Quotas()):
        self.store, self.config, self.batch_defaults = store, config, batch_defaults
        self.catalog = catalog   # simx.catalog.Catalog checked at submit; None: any engine, unchecked
        self.quotas = quotas     # per-user limits on what is queued
        self.files = files       # runs' output files (runq/files.py Files, or MemoryFiles); None: refused
        self.instance = start.instance
        self.started = now
        # the model: what is active, and the indexes over it
        self.batches: dict[int, Batch] = {}          # active batches (runs left)
        self.runs: dict[tuple[int, int], Run] = {}   # materialized non-terminal runs
        self.workers: dict[int, Worker] = {}
        self.conns: dict[object, int] = {}           # conn -> the worker id it speaks for
        self.keys: dict[str, tuple[int, str]] = dict(start.keys)   # idempotency key -> (batch id, owner)
        self.recent = RecentReports(start.recent)    # outcomes of recent attempts: re-sent reports
        self.last_batch_id, self.last_worker_id = start.last_batch_id, start.last_worker_id
        self.fairshare = FairShare(sched.half_life, sched.shares, now)
        self.fairshare.restore(start.usage)   # usage as it decayed to now: a restart changes no share
        self.matcher = Matcher(self.fairshare.rank)
        self.presence = Presence()                   # connected, non-draining, unbroken workers by traits
        self.backoff = Backoff(sched.backoff_base, sched.backoff_max)
        self.timers = Timers()
        self.metrics = Metrics(now)
        self.metrics.load_ended(start.ended_totals)
        self.out = Output()
        # the concerns, each given this coordinator (they share the model above)
        self.peers = Peers(self, secrets)
        self.lifecycle = Lifecycle(self)
        self.dispatch = Dispatch(self)
        self.deadlines = Deadlines(self)
        self.conversation = Conversation(self)
        self.commands = Commands(self)
        self.commands.logins.load(start.logins, now)
        self.adopt(start, now)

    def adopt(self, start: Start, now: float) -> None:
        """Take over the model read back at start-up: requeue orphaned runs, arm the timers
        (grace for every worker, time limits of running runs), index batches with waiting runs."""
        self.batches.update(start.batches)
        self.runs.update(start.runs)
        self.workers.update(start.workers)
        life = self.lifecycle
        for run in start.orphans:
            if run.state == "assigned":   # held unstarted: its worker's session is gone
                life.end_attempt(run, "revoked", "runq restarted before the run started", now)
                continue
            log.warning("run %s had no worker holding it: requeued", run.key)
            life.end_attempt(run, "lost", "runq restarted; no worker held the run", now)
        for worker in self.workers.values():
            self.store.update_worker(worker.row())   # rows say what reads show: disconnected now
            if worker.state != "gone":
                self.timers.set("grace", worker.id, now + self.config.grace)
        for run in self.runs.values():
            if run.state == "running":
                batch = self.batches[run.batch_id]
                self.deadlines.arm_limit(run, batch)
                if run.started is not None:   # its usage so far counts, as it did before
                    self.fairshare.started(run.key, batch.sharer, run.started)
            elif run.retry_at is not None:   # a backoff survives the restart: it waits it out
                self.timers.set("retry", run.key, run.retry_at)
        for batch in list(self.batches.values()):
            life.finish_batch_if_done(batch, now)
            if batch.id in self.batches:
                self.dispatch.dispatch_batch(batch, now)
        self.deadlines.start(now)
        log.info("recovered %d active batches, %d runs in flight, %d known workers",
                 len(self.batches), len(self.runs), len(self.workers))

    # ---- entry points the shell calls
    def connected(self, conn, peer: str, now: float) -> Output:
        self.peers.connected(conn, peer)   # the peer speaks first (Hello)
        return self.take_output()

    def role_of(self, conn) -> str | None:
        """"worker" or "client" once the connection has authenticated; None before."""
        return self.peers.role_of(conn)

    def handle(self, conn, msg: dict, now: float) -> Output:
        self.peers.handle(conn, msg, now)
        return self.take_output()

    def bad_frame(self, conn, problem: str) -> Output:
        """A frame that does not follow the protocol: an error in the peer's terms, then close."""
        self.peers.bad_frame(conn, problem)
        return self.take_output()

    def unsendable(self, conn, msg: dict, problem: str) -> Output:
        """A message of ours the protocol refuses (too large): what to send instead."""
        self.peers.unsendable(conn, msg, problem)
        return self.take_output()

    def disconnected(self, conn, now: float, silent: bool = False) -> Output:
        """`silent`: the shell closed it because the worker said nothing for worker_idle_factor
        heartbeats (a cut network looks like that): its lease keeps running, as for any silence."""
        self.peers.forget(conn)
        self.dispatch.disconnected(conn, now, silent)
        return self.take_output()

    def tick(self, now: float) -> Output:
        """Fire the timers that are due (runq/core/deadlines.py): O(due), not O(fleet)."""
        self.deadlines.tick(now)
        return self.take_output()

    def next_deadline(self) -> float:
        """When tick() next has something to do (math.inf: nothing until a message comes)."""
        return self.deadlines.next_deadline()

    def committed(self, seconds: float, purged: list[int] = ()) -> None:
        """The shell committed the turn in `seconds`; `purged`: ended batches the store deleted."""
        self.metrics.committed(seconds)
        if purged:
            if self.files is not None:
                self.files.purge_batches(purged)   # after the commit: the batches are gone
            gone = set(purged)
            for key in [k for k, (b, _) in self.keys.items() if b in gone]:
                del self.keys[key]

    def store_fault(self, fault) -> None:
        """The database refuses commits (a ``StoreFault``: kind, code, describe()), or takes them
        again (None).  Meanwhile commands that would change something are refused with the reason."""
        self.commands.fault = fault

    # ---- output
    def send(self, conn, msg: dict | None, free: bool = False) -> None:
        self.out.send(conn, msg, free)

    def take_output(self) -> Output:
        out, self.out = self.out, Output()
        return out
