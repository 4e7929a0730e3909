"""simx worker: executes runs handed out by runq, one at a time, with an engine.

``worker.loop`` holds the conversation with runq (see "Worker conversation" in
docs/ARCHITECTURE.md), ``worker.job`` the engine thread of one run and
``worker.engines`` the engines themselves.  Start one with ``python -m worker``.
"""
