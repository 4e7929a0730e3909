"""Run, batch and worker states as tables: the legal run edges, how an attempt's end moves
its run, a worker's state from what it holds.  States are lowercase strings, stored as they
are; their names are shared vocabulary (simx/records.py)."""
import itertools

from simx import records

WAITING, RUNNING, FINISHED, FAILED, CANCELLED = records.RUN_STATES   # each has a batch counter n_<state>
RUN_STATES = records.RUN_STATES
TERMINAL = frozenset(records.RUN_ENDED)
# Prefetch: held by a worker that announced `prefetch`, not started yet.  Counted in the batch's
# n_running (in flight); revocable until the worker says WorkerStartedRun.
ASSIGNED = records.ASSIGNED

# (from, to): why the edge exists
RUN_TRANSITIONS = {
    (WAITING, RUNNING): "dispatched to a matching idle worker (a new attempt)",
    (WAITING, CANCELLED): "the run or its batch was cancelled before it started",
    (RUNNING, FINISHED): "the worker reported the current attempt finished",
    (RUNNING, FAILED): "the engine failed max_attempts times, or once with a failure of kind 'run' "
                       "(Fatal, a permanent exit status), or the run was lost max_requeues times",
    (RUNNING, WAITING): "the attempt ended without a verdict (lost lease, disconnect past grace, "
                        "worker stopped, the worker cannot run the engine: no attempt used), or a "
                        "transient engine failure with attempts left (dispatched again after a backoff)",
    (RUNNING, CANCELLED): "cancelled while running: aborted on its worker",
    (WAITING, ASSIGNED): "handed to a prefetching worker (a new attempt), which holds it until it starts it",
    (ASSIGNED, RUNNING): "the worker said WorkerStartedRun: its time limit starts now",
    (ASSIGNED, WAITING): "taken back before it started (an idle worker could start it sooner, its worker "
                         "was lost, or did not list it): dispatch again, no attempt or requeue used",
    (ASSIGNED, CANCELLED): "the run or its batch was cancelled while a worker held it",
}


class IllegalTransition(Exception):
    pass


def check_transition(old: str, new: str) -> None:
    if (old, new) not in RUN_TRANSITIONS:
        raise IllegalTransition(f"run cannot go from {old} to {new}")


# Attempt outcomes (attempts table), and which of them use up one of max_attempts.
OUTCOME_FINISHED, OUTCOME_FAILED, OUTCOME_TIMEOUT = "finished", "failed", "timeout"
OUTCOME_LOST, OUTCOME_STOPPED, OUTCOME_ABORTED, OUTCOME_CANCELLED = "lost", "stopped", "aborted", "cancelled"
OUTCOME_REVOKED = "revoked"   # an assigned (prefetched) run taken back before it started: costs nothing
# What a WorkerFailedRun says about its cause (worker/engines/base.py failure_kind); absent = transient
KIND_RUN, KIND_WORKER, KIND_TRANSIENT = FAILURE_KINDS = records.FAILURE_KINDS

# How an attempt's end moves its run (runq/core/lifecycle.py end_attempt):
#   outcome -> (the budget it uses, the state it puts the run in at once)
# budget "attempt": one of max_attempts (a failure; after the last one the run fails),
# "requeue": one of max_requeues (lost without a verdict; after the last one it fails),
# None: free.  A state of None: waiting again while the budget lasts, else failed.
ATTEMPT_END = {
    OUTCOME_FINISHED: (None, FINISHED),       # the worker reported the attempt finished
    OUTCOME_CANCELLED: (None, CANCELLED),     # the run or its batch was cancelled
    OUTCOME_REVOKED: (None, WAITING),         # held unstarted by a prefetching worker, taken back
    OUTCOME_FAILED: ("attempt", None),        # the engine failed: retried after a backoff
    OUTCOME_TIMEOUT: ("attempt", None),       # over the batch's time_limit: retried at once
    OUTCOME_LOST: ("requeue", None),          # lease lost, disconnected past grace, runq restarted
    OUTCOME_STOPPED: ("requeue", None),       # the worker process was stopped (TERM)
    OUTCOME_ABORTED: ("requeue", None),       # the worker aborted it on its own
}
# A failure's kind overrides its budget: "fatal" fails the run at once (an engine's Fatal, a
# permanent exit status); None requeues it free (the worker cannot run the engine: its fault).
KIND_BUDGET = {KIND_RUN: "fatal", KIND_WORKER: None, KIND_TRANSIENT: "attempt"}

# Batch states.  A batch ends in one of three, chosen in this order: cancelled (someone cancelled
# it), failed (at least one run failed), done (every run finished or was cancelled alone).
# Databases written before `failed` existed hold `done` for those; the store migrates them.
ACTIVE, DONE, BATCH_FAILED, BATCH_CANCELLED = records.BATCH_STATES


def batch_end_state(state: str, n_failed: int) -> str:
    """The state a batch ends in: cancelled > failed > done."""
    if state == BATCH_CANCELLED:
        return BATCH_CANCELLED
    return BATCH_FAILED if n_failed > 0 else DONE

# Worker states
IDLE, BUSY, DRAINING, DISCONNECTED, GONE = "idle", "busy", "draining", "disconnected", "gone"
# connected but off its engine: it reported that it cannot run it (program missing); no runs
# until the worker process restarts (a new WorkerReady)
BROKEN = "broken"
# busy with a run runq has taken back (abort sent), until the worker says it stopped
ABORTING = "aborting"

# A connected worker's state from what it holds and has been told; the first row that matches
# wins.  (holds: a run it computes or runs it holds unstarted; aborting: a run taken back that
# it has not let go of yet.)  None in a column: either way.
WORKER_STATES = (
    # holds  aborting draining broken
    ((True,  None,  True,  None), DRAINING),   # finishes what it computes, takes nothing new
    ((True,  None,  False, None), BUSY),
    ((False, True,  True,  None), DRAINING),
    ((False, True,  False, None), ABORTING),   # until it says it stopped the run taken back
    ((False, False, True,  None), DRAINING),
    ((False, False, False, True), BROKEN),     # cannot run its engine: no runs until it restarts
    ((False, False, False, False), IDLE),      # ready for a run
)


def _first_match(facts: tuple) -> str:
    for pattern, state in WORKER_STATES:
        if all(p is None or p == v for p, v in zip(pattern, facts)):
            return state
    raise AssertionError(f"WORKER_STATES covers every case, not {facts}")


# the table resolved for each of the 16 cases once (it is asked on every report and dispatch)
_WORKER_STATE = {facts: _first_match(facts) for facts in itertools.product((False, True), repeat=4)}


def worker_state(holds: bool, aborting: bool, draining: bool, broken: bool) -> str:
    return _WORKER_STATE[bool(holds), bool(aborting), bool(draining), bool(broken)]
