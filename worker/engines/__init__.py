"""Engines: the code that computes one run.  See ``base`` for the interface and registry."""
from .base import Aborted, Engine, RunContext, UnknownEngine, get_engine

__all__ = ["Aborted", "Engine", "RunContext", "UnknownEngine", "get_engine"]
