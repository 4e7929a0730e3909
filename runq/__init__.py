"""runq: the simx coordinator (queue of runs, set of workers, matching, dispatch)."""
__version__ = "0.1.0"
