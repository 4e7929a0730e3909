"""The command engine: a run is one external program.

param:
  ``argv``        list of strings, the program and its arguments (required)
  ``cwd``         working directory (default: the worker's)
  ``env``         mapping added to the worker's environment
  ``kill_after``  seconds between TERM and KILL when aborting (default 5)

The program also gets SIMX_BATCH_ID, SIMX_BATCH_INDEX, SIMX_ATTEMPT and
SIMX_PARAM (the whole param as JSON).  A stdout line ``progress 0.5`` or
``progress 0.5 some message`` reports progress; other stdout lines are output.
Exit status 0 gives ``{"returncode": 0, "stdout_tail": ...}``; any other status
fails the run with the status and the tail of stderr.  The program runs in its
own process group so that aborting kills everything it started.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading

from .base import Aborted, Engine

TAIL_CHARS = 2000
POLL_INTERVAL = 0.1  # seconds between checks of the abort event while the program runs
READER_JOIN = 2.0  # a grandchild that keeps the pipes open must not hang the run


class Tail:
    """The last ``limit`` characters of a stream of lines."""

    def __init__(self, limit: int = TAIL_CHARS):
        self.limit = limit
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line)
        while len(self.lines) > 1 and self.size - len(self.lines[0]) >= self.limit:
            self.size -= len(self.lines.popleft())

    def text(self) -> str:
        return "".join(self.lines)[-self.limit:]


def parse_progress(line: str) -> tuple[float, str | None] | None:
    """(fraction, message) from a ``progress F [message]`` line, else None."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != "progress":
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    return fraction, (parts[2] if len(parts) > 2 else None)


class CommandEngine(Engine):
    name = "command"

    def run(self, param, progress, abort, context):
        argv = param.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("param argv must be a non-empty list of strings")
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (param.get("env") or {}).items()})
        env.update(
            SIMX_BATCH_ID=str(context.batch_id), SIMX_BATCH_INDEX=str(context.batch_index),
            SIMX_ATTEMPT=str(context.attempt), SIMX_PARAM=json.dumps(param),
        )
        kill_after = float(param.get("kill_after", 5.0))
        proc = subprocess.Popen(
            argv, cwd=param.get("cwd") or None, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            start_new_session=True,
        )
        out, err = Tail(), Tail()
        readers = [
            threading.Thread(target=self._read_stdout, args=(proc.stdout, out, progress), daemon=True),
            threading.Thread(target=self._read_lines, args=(proc.stderr, err), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            while proc.poll() is None:
                if abort.wait(POLL_INTERVAL):
                    self._kill_group(proc, kill_after)
                    raise Aborted(f"command {argv[0]} aborted")
        finally:
            for t in readers:
                t.join(READER_JOIN)
        if proc.returncode != 0:
            raise RuntimeError(f"command {argv[0]} {describe_status(proc.returncode)}; stderr: {err.text()}")
        return {"returncode": 0, "stdout_tail": out.text()}

    @staticmethod
    def _read_stdout(stream, tail: Tail, progress) -> None:
        for line in stream:
            parsed = parse_progress(line)
            if parsed is None:
                tail.add(line)
            else:
                progress(*parsed)

    @staticmethod
    def _read_lines(stream, tail: Tail) -> None:
        for line in stream:
            tail.add(line)

    @staticmethod
    def _kill_group(proc: subprocess.Popen, kill_after: float) -> None:
        """TERM the program's process group, then KILL whatever is left of it."""
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            pass
        # KILL also catches children the program left behind when it obeyed TERM.
        signal_group(proc, signal.SIGKILL)
        proc.wait()


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
