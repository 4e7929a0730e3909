"""Engines: the code that computes one run.  See ``base`` for the interface and registry,
``catalog`` for the engines an operator declares in conf/engines.yaml."""
from .base import (Aborted, Engine, Fatal, ProgramUnavailable, RunContext, UnknownEngine, WorkerFault,
                   failure_kind, get_engine)

__all__ = ["Aborted", "Engine", "Fatal", "ProgramUnavailable", "RunContext", "UnknownEngine", "WorkerFault",
           "failure_kind", "get_engine"]
