"""Running one external program for a run, and the raw command engine.

The raw engine takes the program from the batch's param, so a worker offers it only when started
with ``--allow-any-command`` (pool setting ``allow_any_command: true``); operators declare named
command engines in conf/engines.yaml instead (``named``).  Raw engine param:
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
import dataclasses
import json
import os
import signal
import subprocess
import threading

from simx import limits

from .base import Aborted, Engine, Fatal, ParamRejected

TAIL_CHARS = 2000
POLL_INTERVAL = 0.1  # seconds between checks of the abort event while the program runs
READER_JOIN = 2.0  # a grandchild that keeps the pipes open must not hang the run
MAX_RESULT_BYTES = limits.MAX_RESULT_BYTES  # a run's stored result [1 MiB]
LINE_CHARS = 2 * 1024 * 1024  # longest stdout line read whole (a ``result`` line must fit)


class ProgramRefused(Fatal, OSError):
    """The program a batch named cannot be started: the run's fault (raw command engine only)."""


class BadResult(ValueError):
    """A result the program wrote that is not JSON or is too large."""


def decode_result(text: str, source: str):
    if len(text.encode("utf-8", "replace")) > MAX_RESULT_BYTES:
        raise BadResult(f"{source} holds more than {MAX_RESULT_BYTES} bytes")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise BadResult(f"{source} is not JSON: {exc}") from None


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def run_env(param, context) -> dict[str, str]:
    """What every command learns about its run."""
    return {"SIMX_BATCH_ID": str(context.batch_id), "SIMX_BATCH_INDEX": str(context.batch_index),
            "SIMX_ATTEMPT": str(context.attempt), "SIMX_PARAM": json.dumps(param)}


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


@dataclasses.dataclass
class Completed:
    """What a program left: its exit status, the ends of its output, its last ``result`` line."""

    returncode: int
    stdout_tail: str
    stderr_tail: str
    result_line: str | None = None


def read_line(stream) -> str | None:
    """The next line, at most LINE_CHARS of it (the rest of an overlong line is skipped); None at EOF."""
    line = stream.readline(LINE_CHARS)
    if not line:
        return None
    if len(line) == LINE_CHARS and not line.endswith("\n"):
        while (rest := stream.readline(LINE_CHARS)) and not rest.endswith("\n"):
            pass
        return line[:TAIL_CHARS] + " [line cut]\n"
    return line


def run_program(argv: list[str], env: dict, cwd, kill_after: float, abort, progress,
                parse=parse_progress) -> Completed:
    """Run one program in its own process group until it exits or ``abort`` is set (then TERM,
    ``kill_after`` seconds, KILL: Aborted).  stdout lines that ``parse`` reads as progress go to
    ``progress``; a line ``result <json>`` is kept.  OSError when it cannot start."""
    proc = subprocess.Popen(
        argv, cwd=cwd or None, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
        start_new_session=True,
    )
    done = Completed(returncode=0, stdout_tail="", stderr_tail="")
    out, err = Tail(), Tail()
    readers = [
        threading.Thread(target=_read_stdout, args=(proc.stdout, out, progress, parse, done), daemon=True),
        threading.Thread(target=_read_lines, args=(proc.stderr, err), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        while proc.poll() is None:
            if abort.wait(POLL_INTERVAL):
                CommandEngine._kill_group(proc, kill_after)
                raise Aborted(f"command {argv[0]} aborted")
    finally:
        for t in readers:
            t.join(READER_JOIN)
    done.returncode, done.stdout_tail, done.stderr_tail = proc.returncode, out.text(), err.text()
    return done


def _read_stdout(stream, tail: Tail, progress, parse, done: Completed) -> None:
    while (line := read_line(stream)) is not None:
        parsed = parse(line)
        if parsed is not None:
            progress(*parsed)
        elif line.startswith("result ") or line.rstrip("\n") == "result":
            done.result_line = line[len("result"):].strip()
        else:
            tail.add(line)


def _read_lines(stream, tail: Tail) -> None:
    while (line := read_line(stream)) is not None:
        tail.add(line)


class CommandEngine(Engine):
    """The raw engine: the batch's param names the program.  Only for pools that allow any command."""

    name = "command"

    def run(self, param, progress, abort, context):
        argv = param.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ParamRejected("param argv must be a non-empty list of strings")
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (param.get("env") or {}).items()})
        env.update(run_env(param, context))
        kill_after = float(param.get("kill_after", 5.0))
        try:
            done = run_program(argv, env, param.get("cwd"), kill_after, abort, progress)
        except OSError as exc:
            # The batch chose the program, so a missing one is the run's fault, not the worker's.
            raise ProgramRefused(exc.errno, f"command {argv[0]} cannot start: {exc.strerror or exc}") from None
        if done.returncode != 0:
            raise RuntimeError(f"command {argv[0]} {describe_status(done.returncode)}; stderr: {done.stderr_tail}")
        data = {"returncode": 0, "stdout_tail": done.stdout_tail}
        if done.result_line is not None:
            data["result"] = decode_result(done.result_line, "the stdout line 'result ...'")
        return data

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
