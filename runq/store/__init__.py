"""runq's store: the core's write port by intent, its SQL and in-memory backends, the reads.

* ``writes.py``: the port the core calls (``add_batch``, ``assign_run``, ``start_run``,
  ``save_progress``, ``end_attempt``, ``save_run``, ``register_worker``, ``update_worker``,
  ``purge``, ...), buffered until ``commit()``.
* ``sql.py``: ``SqlStore``, the only module that writes the database (any SQLAlchemy URL).
* ``read.py``: ``ReadStore``, committed rows for the reader and for start-up; never writes.
* ``memory.py``: ``MemoryStore``, the same port and reads in memory (core tests).
* ``schema.py``: tables, indexes and migrations (columns from simx/records.py).
"""
from .memory import MemoryStore
from .read import ReadStore
from .sql import SqlStore, StoreFault

__all__ = ["MemoryStore", "ReadStore", "SqlStore", "StoreFault"]
