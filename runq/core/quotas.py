"""Per-user quotas on what is queued (conf ``quotas``): active batches and waiting runs.

A submit over a quota is refused with 429 naming the quota, its limit and what the user has
(no Retry-After: waiting does not help until something of theirs ends; the CLI does not
retry it).  Unset means unlimited; ``users`` gives one user other limits.
"""
from __future__ import annotations

import dataclasses

from .errors import RunqError


@dataclasses.dataclass(frozen=True)
class Quotas:
    active_batches: int | None = None      # active batches per user
    waiting_runs: int | None = None        # waiting runs per user, over all their active batches
    users: dict = dataclasses.field(default_factory=dict)   # user -> {active_batches, waiting_runs}

    def limit(self, owner: str, name: str) -> int | None:
        own = self.users.get(owner) or {}
        return own[name] if name in own else getattr(self, name)

    def check_submit(self, owner: str, batches, n_runs: int) -> None:
        """Raise RunqError 429 when a new batch of `n_runs` runs would put `owner` over a quota;
        `batches`: the active batches."""
        max_active, max_waiting = self.limit(owner, "active_batches"), self.limit(owner, "waiting_runs")
        if max_active is None and max_waiting is None:
            return
        mine = [b for b in batches if b.sharer == owner]
        if max_active is not None and len(mine) >= max_active:
            raise RunqError(f"quota active_batches: {owner or 'this user'} has {len(mine)} active batches, at most "
                            f"{max_active}; wait for one to end or cancel one", 429)
        waiting = sum(b.n_waiting for b in mine)
        if max_waiting is not None and waiting + n_runs > max_waiting:
            raise RunqError(f"quota waiting_runs: {owner or 'this user'} has {waiting} waiting runs and asks for "
                            f"{n_runs} more, at most {max_waiting} in all; wait for some to run, or submit fewer", 429)
