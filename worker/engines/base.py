"""The engine interface every engine implements, and the registry that finds engines by name.

An engine computes one run: ``run(param, progress, abort, context)`` is called in
the worker's engine thread, once per run, and

* returns the run's result data (anything JSON can encode; other values are
  reported as their ``str()``),
* calls ``progress(fraction, message=None)`` as often as it likes (the worker
  throttles what it sends to runq), with ``fraction`` in 0..1,
* checks ``abort`` (a ``threading.Event`` or its like: ``is_set()``, ``wait(timeout)``) often enough to stop promptly, and
  raises ``Aborted`` when it is set (runq cancelled the run, its time limit
  passed, or the worker is stopping),
* raises any other exception to fail the run: its message and traceback go to
  runq, and the worker carries on with the next run.

A failure has a kind (``failure_kind(exc)``): ``Fatal`` means the run can never
succeed (bad input: fail it at once, no retry), ``WorkerFault`` that this worker
cannot run the engine (program missing: requeue elsewhere without using an
attempt), anything else is ``transient`` (retried as ``max_attempts`` says).

An engine instance is created once per worker process and reused for every
run, so per-run state belongs in local variables, not on ``self``.
"""
from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, NamedTuple

from simx import records

Progress = Callable[..., None]  # progress(fraction: float, message: str | None = None)


class Aborted(Exception):
    """Raised by an engine that stopped because its abort event was set."""


FAILURE_KINDS = records.FAILURE_KINDS


class Fatal(Exception):
    """The run failed and will fail again wherever it runs: no retry."""

    kind = "run"


class ParamRejected(Fatal, ValueError):
    """The run's param does not fit its engine."""


class WorkerFault(Exception):
    """This worker cannot run the engine (program missing or not executable, bad set-up):
    the run should go to another worker without using an attempt."""

    kind = "worker"


class ProgramUnavailable(WorkerFault, OSError):
    """The engine's program could not be started here (an OSError too, as Popen raised it)."""


def failure_kind(exc: BaseException) -> str:
    """run | worker | transient: what a failed run's report should say about its cause."""
    kind = getattr(exc, "kind", None)
    return kind if kind in FAILURE_KINDS else "transient"


class UnknownEngine(LookupError):
    """No built-in engine has this name and it is not an importable ``module:Class``."""


class RunContext(NamedTuple):
    """What an engine may want to know about the run beside its param (read-only).

    A named tuple, not a frozen dataclass: made for every run, and a frozen dataclass took
    1.2 us to build, a twentieth of a zero-step run's CPU on the loop thread.
    """

    batch_id: int
    batch_index: int
    attempt: int  # 1 for the first dispatch, 2, ... after failures or requeues
    worker_id: int | None
    time_limit: float | None  # seconds; runq enforces it, the engine may use it to plan


class Engine:
    """Base class (and documentation) of engines; subclasses set ``name`` and override ``run``."""

    name = ""

    def run(self, param: dict, progress: Progress, abort: threading.Event, context: RunContext) -> Any:
        raise NotImplementedError

    def runs_inline(self, param: dict) -> bool:
        """True if this run is trivial (returns at once, never waits or blocks): the worker then
        computes it on its loop thread, saving the hand-over to the engine thread.  Say True
        only when sure; the worker does not answer runq while an inline run computes."""
        return False


# Built-ins are named by import path so that a worker imports only the engine it runs.
BUILTIN = {
    "dummy": "worker.engines.dummy:DummyEngine",
    "command": "worker.engines.command:CommandEngine",
}


def get_engine(name: str) -> Engine:
    """A new instance of the engine called ``name``: a built-in, or ``package.module:Class``."""
    path = BUILTIN.get(name, name)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownEngine(f"unknown engine {name!r} (built-ins: {', '.join(sorted(BUILTIN))}; or module:Class)")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownEngine(f"cannot load engine {name!r}: {exc}") from None
    engine = cls()
    if not callable(getattr(engine, "run", None)):
        raise UnknownEngine(f"engine {name!r} has no run() method")
    return engine


def engine_name(engine: Engine, requested: str) -> str:
    """The name a worker advertises to runq: the engine's own ``name``, else what was asked for."""
    return getattr(engine, "name", "") or requested
