"""This host's simx programs under its supervisord: what the local fab tasks start, stop and show.

Start tasks render supervisord.conf (ops/render.py) from conf/simx.yaml,
conf/hosts.yaml and the settings (the recorded ones, overridden by the
environment: ops/settings.py), write it under the run-time directory and let
the agent apply it; stop, drain and status act on what supervisord runs now.
"""
from __future__ import annotations

import os
import sys

from simx import config as simx_config

from . import settings
from .agent import Agent
from .control import OpsError
from .hosts import Instance
from .paths import Paths
from .render import RUNQ, RUNWEB, expected_processes, render


RUNQ_ANSWERS_WITHIN = 30.0   # seconds `fab runq.start` waits for runq to answer after supervisord starts it


class Stack:
    """One instance's programs on this host."""

    def __init__(self, config: simx_config.Config, instance: Instance, env, python: str = sys.executable,
                 out=print, serves: bool | None = None, notes=()):
        self.config, self.instance, self.env, self.python, self.out = config, instance, env, python, out
        self.serves = instance.is_local if serves is None else serves
        self.paths = Paths(config.var)
        self.agent = Agent(self.paths, python, env)
        self.sup = self.agent.sup
        self.notes = list(notes)

    @property
    def pools(self) -> list[str]:
        """Programs of the configured worker pools (a pool of count 0 has none)."""
        return [p.program for p in self.instance.pools if p.count > 0]

    @property
    def servers(self) -> list[str]:
        return [RUNQ, RUNWEB] if self.serves else []

    def render(self) -> str:
        return render(self.config, self.instance, self.env, self.python, serves=self.serves)

    def write(self) -> None:
        self.paths.make()
        tmp = self.paths.conf.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold a token
        with open(fd, "w", encoding="utf-8") as f:
            f.write(self.render())
        tmp.replace(self.paths.conf)
        # the config on disk now holds these settings: later tasks reuse them (ops/settings.py)
        settings.save(self.paths.applied, {k: v for k, v in self.env.items() if k in settings.SETTINGS_ENV})

    def _flush(self) -> None:
        for note in self.notes + self.agent.notes:
            self.out(note)
        self.notes, self.agent.notes = [], []

    def _act(self, action, *args, **kw) -> None:
        try:
            action(*args, **kw)
        finally:
            self._flush()

    def up(self) -> None:
        """Write the config; start supervisord, or apply what changed; record the settings applied."""
        self.write()
        self._act(self.agent.up)

    def start(self, groups, now: bool = False) -> None:
        """Write the config, apply it and start `groups`; `now`: changed worker pools are replaced
        at once (their workers stopped), not drained."""
        self.write()
        self._act(self.agent.start, groups, now=now)
        self.show(groups)
        if RUNQ in groups:
            self.await_runq()

    def await_runq(self, timeout: float = RUNQ_ANSWERS_WITHIN) -> None:
        """supervisord says RUNNING after startsecs, which on a loaded machine can come before runq
        listens: return when runq answers Ping (or say it does not)."""
        from simx.client import RunqUnavailable
        from simx.process import wait_until
        from . import secrets as ops_secrets

        def answers() -> bool:
            client = ops_secrets.runq_client(self.config, self.env, timeout=2.0)
            try:
                return client.request("Ping").get("status") == "ok"
            finally:
                client.close()
        try:
            wait_until(answers, timeout, 0.1, "runq", retry_on=(RunqUnavailable, OSError), timed_out=TimeoutError)
        except TimeoutError:
            raise OpsError(f"runq is RUNNING but does not answer on {self.config.runq.host}:{self.config.runq.port} "
                           f"after {timeout:.0f} s; see `fab local.logs --process runq:runq`") from None
        self.out(f"runq answers on {self.config.runq.host}:{self.config.runq.port}")

    def stop(self, groups) -> None:
        self._act(self.agent.stop, groups)
        self.show(groups)

    def restart(self, groups, now: bool = False, wait: bool = False) -> None:
        self.write()
        self._act(self.agent.restart, groups, now=now, wait=wait)
        self.show(groups)

    def drain(self, groups) -> None:
        self._act(self.agent.drain, groups)
        self.show(groups)

    def worker_groups(self) -> list[str]:
        """Worker pools supervisord runs now, and those configured."""
        loaded = self.sup.worker_groups() if self.sup.running() else []
        return sorted(set(loaded) | set(self.pools))

    def status(self, groups) -> list[tuple[str, str, str]]:
        """(process, state, description) for every process the groups should have."""
        return status_rows(self.instance, groups, self.agent.status(groups) if self.sup.running() else None,
                           self.pools + self.servers, adding=self.agent.deferred)

    def show(self, groups) -> bool:
        """Print one line per expected process; True when all of them are RUNNING."""
        rows = self.status(groups)
        for name, state, description in rows:
            self.out(f"{name:<24} {state:<9} {description}")
        return all(state == "RUNNING" for _, state, _ in rows)

    def shutdown(self) -> None:
        self._act(self.agent.shutdown)


def status_rows(instance: Instance, groups, known: dict | None, configured,
                adding=()) -> list[tuple[str, str, str]]:
    """(process, state, description) for every process `groups` should have; `known` from Agent.status;
    `adding`: changed pools being replaced, whose new processes come after the old ones' runs."""
    if known is None:
        return [(n.split(":")[1], "STOPPED", "supervisord not running")
                for n in expected_processes(instance, [g for g in groups if g in configured])]
    names = expected_processes(instance, [g for g in groups if g in configured])
    names += sorted(n for n in known if n.split(":")[0] in set(groups) - set(configured))  # pools no longer configured
    rows = []
    for name in names:
        info = known.get(name)
        short = name.split(":")[1]
        if info:
            rows.append((short, info["statename"], info["description"]))
        elif name.split(":")[0] in adding:
            rows.append((short, "ADDING", f"adding {short}: starts as soon as its pool's workers have drained"))
        else:
            rows.append((short, "ABSENT", "not in the running config (start it to apply)"))
    return rows
