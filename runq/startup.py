"""What runq reads before its loop starts, and the coordinator built from it.

``read_start`` reads the model's rows and the facts the core needs from the database
(instance, highest ids, idempotency keys, the latest attempts, ended totals) and builds
the ``Start`` value (runq/core/recovery.py); ``coordinator`` builds the core from it and
commits what adopting the model wrote (every worker disconnected, orphaned runs requeued).
This is the only time the store is read on runq's loop thread.
"""
from __future__ import annotations

from simx.config import SchedConfig
from .core.coordinator import Coordinator
from .core.fairshare import FairShare
from .core.recovery import Start, recover
from .core.reports import MAX_RECENT
from .files import Files


def read_start(store, now: float, half_life: float = SchedConfig().half_life) -> Start:
    instance = store.instance()
    reads = store.startup_reader()
    batches = reads.batch_rows(states=("active",))
    runs = reads.active_run_rows([b["id"] for b in batches])
    since, width = FairShare(half_life).history_window(now)
    return recover(now, instance, reads.max_ids(), batches, runs, reads.worker_rows(), reads.batch_keys(),
                   reads.recent_attempts(MAX_RECENT), reads.ended_batch_totals(), reads.usage_history(since, width),
                   reads.login_rows())


def coordinator(store, config=None, batch_defaults=None, now: float = 0.0, files_dir=None, files=None,
                **kwargs) -> Coordinator:
    """The core over `store`, recovered from it (and the recovery committed)."""
    from simx.config import BatchDefaults, RunqConfig
    config = config if config is not None else RunqConfig()
    if files is None:
        files = Files(files_dir, config.files_max_run)
    sched = kwargs.get("sched") or SchedConfig()
    coord = Coordinator(store, read_start(store, now, sched.half_life), config,
                        batch_defaults if batch_defaults is not None else BatchDefaults(), now=now, files=files,
                        **kwargs)
    store.commit()
    if files_dir is not None:   # files of batches a purge deleted before it could remove them
        reads = store.startup_reader()
        files.purge(lambda batch_id: reads.batch_row(batch_id) is not None)
    return coord
