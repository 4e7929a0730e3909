"""The store's write port, by intent: what the core calls, buffered until ``commit()``.

Each verb says what happened and writes only the columns it changes; several verbs on one
row in a turn merge into one write.  ``commit()`` (each backend's) writes the buffer in one
transaction; the shell calls it once per loop turn, before it sends what depends on it.
``purge(before)`` is written with the commit too; the batches it removed are then
``take_purged()``.
"""
from __future__ import annotations

RUNNING = "running"


class Writes:
    commits = 0          # transactions written by commit() (tests count them)

    def _reset_buffer(self) -> None:
        # table -> key -> (row, is_new); a row keeps the latest value per column
        self._dirty: dict[str, dict] = {"batches": {}, "runs": {}, "workers": {}}
        self._attempts: list[dict] = []
        self._purge_before: float | None = None
        self._logins: dict[str, list | None] = {}

    def _mark(self, name: str, key, row: dict, new: bool) -> None:
        old = self._dirty[name].get(key)
        if old is not None:   # a later, possibly partial, snapshot of the same row
            row, new = {**old[0], **row}, new or old[1]
        self._dirty[name][key] = (row, new)

    # ---- batches
    def add_batch(self, row: dict) -> None:
        """A batch was submitted: its whole row (runs are implicit until dispatched)."""
        self._mark("batches", row["id"], row, True)

    def update_batch(self, row: dict) -> None:
        """A batch's counters or state changed: ``row`` holds its id and those columns."""
        self._mark("batches", row["id"], row, False)

    # ---- runs and attempts
    def assign_run(self, row: dict, new: bool) -> None:
        """A new attempt of a run was handed to a worker: the run's whole row (new: first dispatch)."""
        self._mark("runs", (row["batch_id"], row["batch_index"]), row, new)

    def start_run(self, batch_id: int, batch_index: int, started: float) -> None:
        """A prefetching worker started a run it held."""
        self._mark("runs", (batch_id, batch_index), {"batch_id": batch_id, "batch_index": batch_index,
                                                     "state": RUNNING, "started": started}, False)

    def save_progress(self, batch_id: int, batch_index: int, progress: float, message: str | None) -> None:
        self._mark("runs", (batch_id, batch_index), {"batch_id": batch_id, "batch_index": batch_index,
                                                     "progress": progress, "message": message}, False)

    def end_attempt(self, row: dict) -> None:
        """An attempt ended: its attempts row (the run's move follows with save_run)."""
        self._attempts.append(row)

    def save_run(self, row: dict) -> None:
        """A run moved to another state: its whole row."""
        self._mark("runs", (row["batch_id"], row["batch_index"]), row, False)

    def cancel_unstarted(self, row: dict) -> None:
        """A run never dispatched was cancelled alone: its first row."""
        self._mark("runs", (row["batch_id"], row["batch_index"]), row, True)

    # ---- workers
    def register_worker(self, row: dict) -> None:
        self._mark("workers", row["id"], row, True)

    def update_worker(self, row: dict) -> None:
        """A worker's state or connection changed: ``row`` holds its id and those columns."""
        self._mark("workers", row["id"], row, False)

    def save_contact(self, worker_id: int, last_contact: float) -> None:
        self._mark("workers", worker_id, {"id": worker_id, "last_contact": last_contact}, False)

    # ---- failed logins
    def save_logins(self, changes: dict) -> None:
        """Failed-login counts that changed: key -> failure times (None: the key is gone)."""
        self._logins.update(changes)

    # ---- retention
    def purge(self, before: float) -> None:
        """With the next commit: delete batches that ended before `before` (their runs and
        attempts too) and workers last heard from before it that hold no run."""
        self._purge_before = before

    def take_purged(self) -> list[int]:
        """The ids of the batches the last commits purged (each once)."""
        out, self._purged = getattr(self, "_purged", []), []
        return out

    def pending(self) -> bool:
        return bool(self._attempts or any(self._dirty.values()) or self._purge_before is not None or self._logins)
