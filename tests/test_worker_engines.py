"""Engines as pure units: the dummy engine, the command engine and the registry."""
from __future__ import annotations

import os
import sys
import textwrap
import threading
import time

import pytest

from procs import eventually

from worker.engines import Aborted, Engine, RunContext, UnknownEngine, get_engine
from worker.engines.command import CommandEngine, Tail, parse_progress
from worker.engines.dummy import DummyEngine


def context(attempt=1, batch_id=7, batch_index=3):
    return RunContext(batch_id=batch_id, batch_index=batch_index, attempt=attempt, worker_id=1, time_limit=None)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, message=None):
        self.calls.append((fraction, message))




def run_in_thread(engine, param, abort, ctx=None):
    box = {}

    def target():
        try:
            box["result"] = engine.run(param, Recorder(), abort, ctx or context())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


# -- registry -----------------------------------------------------------------------

class NamedEngine(Engine):
    name = "named"

    def run(self, param, progress, abort, context):
        return param


def test_get_engine_finds_builtins_and_module_paths():
    assert isinstance(get_engine("dummy"), DummyEngine)
    assert isinstance(get_engine("command"), CommandEngine)
    assert isinstance(get_engine(f"{__name__}:NamedEngine"), NamedEngine)


@pytest.mark.parametrize("name", ["nope", "no_such_module:Engine", f"{__name__}:Missing", ":x", "x:"])
def test_get_engine_rejects_unknown_names(name):
    with pytest.raises(UnknownEngine):
        get_engine(name)


# -- dummy ----------------------------------------------------------------------------

def test_dummy_reports_each_step_and_returns_text():
    progress = Recorder()
    result = DummyEngine().run({"step_count": 5, "step_delay": 0}, progress, threading.Event(), context())
    assert [f for f, _ in progress.calls] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert result == "dummy run 3 of batch 7: 5 steps"


def test_dummy_with_zero_steps_returns_at_once():
    progress = Recorder()
    start = time.monotonic()
    result = DummyEngine().run({"step_count": 0}, progress, threading.Event(), context())
    assert time.monotonic() - start < 0.05
    assert progress.calls == []
    assert result.endswith(": 0 steps")


def test_dummy_waits_step_delay_between_steps():
    start = time.monotonic()
    DummyEngine().run({"step_count": 3, "step_delay": 0.05}, Recorder(), threading.Event(), context())
    assert time.monotonic() - start >= 0.15


def test_dummy_defaults_are_ten_steps_of_one_second():
    abort = threading.Event()
    abort.set()  # stops before the first 1 s step: only the defaults' shape is checked
    with pytest.raises(Aborted, match="0 of 10 steps"):
        DummyEngine().run({}, Recorder(), abort, context())


def test_dummy_stops_promptly_when_aborted():
    abort = threading.Event()
    thread, box = run_in_thread(DummyEngine(), {"step_count": 10, "step_delay": 30}, abort)
    start = time.monotonic()
    abort.set()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - start < 1
    assert isinstance(box["error"], Aborted)


def test_dummy_fails_with_the_given_message():
    with pytest.raises(RuntimeError, match="simulated failure"):
        DummyEngine().run({"step_count": 2, "step_delay": 0, "fail": "simulated failure"},
                          Recorder(), threading.Event(), context())


def test_dummy_fails_only_while_attempt_is_within_fail_attempts():
    param = {"step_count": 1, "step_delay": 0, "fail": "flaky", "fail_attempts": 2}
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match="flaky"):
            DummyEngine().run(param, Recorder(), threading.Event(), context(attempt=attempt))
    assert "1 steps" in DummyEngine().run(param, Recorder(), threading.Event(), context(attempt=3))


def test_dummy_rejects_negative_steps():
    with pytest.raises(ValueError):
        DummyEngine().run({"step_count": -1}, Recorder(), threading.Event(), context())


# -- command ----------------------------------------------------------------------------

def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_parse_progress_lines():
    assert parse_progress("progress 0.5\n") == (0.5, None)
    assert parse_progress("progress 1 all done now\n") == (1.0, "all done now")
    assert parse_progress("progress half\n") is None
    assert parse_progress("hello 0.5\n") is None
    assert parse_progress("\n") is None


def test_tail_keeps_the_last_characters():
    tail = Tail(limit=10)
    for i in range(100):
        tail.add(f"line {i}\n")
    assert tail.text() == "8\nline 99\n"


def test_command_success_reports_progress_and_stdout_tail():
    progress = Recorder()
    code = """
        import sys
        print("starting")
        print("progress 0.5 halfway", flush=True)
        print("progress 1")
        print("x" * 3000)
        print("the end")
    """
    result = CommandEngine().run({"argv": py(code)}, progress, threading.Event(), context())
    assert progress.calls == [(0.5, "halfway"), (1.0, None)]
    assert result["returncode"] == 0
    assert len(result["stdout_tail"]) == 2000
    assert result["stdout_tail"].endswith("the end\n")
    assert "progress" not in result["stdout_tail"]


def test_command_failure_names_status_and_stderr():
    code = """
        import sys
        sys.stderr.write("something broke\\n")
        sys.exit(3)
    """
    with pytest.raises(RuntimeError) as info:
        CommandEngine().run({"argv": py(code)}, Recorder(), threading.Event(), context())
    assert "status 3" in str(info.value) and "something broke" in str(info.value)


def test_command_gets_cwd_env_and_run_identity(tmp_path):
    code = """
        import json, os
        print(os.getcwd())
        print(os.environ["GREETING"], os.environ["SIMX_BATCH_ID"], os.environ["SIMX_BATCH_INDEX"],
              os.environ["SIMX_ATTEMPT"], json.loads(os.environ["SIMX_PARAM"])["extra"])
    """
    param = {"argv": py(code), "cwd": str(tmp_path), "env": {"GREETING": "hello"}, "extra": 42}
    result = CommandEngine().run(param, Recorder(), threading.Event(), context(attempt=2))
    assert result["stdout_tail"] == f"{tmp_path}\nhello 7 3 2 42\n"


def test_command_that_cannot_start_fails():
    with pytest.raises(OSError):
        CommandEngine().run({"argv": ["/nonexistent/program"]}, Recorder(), threading.Event(), context())


@pytest.mark.parametrize("argv", [None, [], "echo hi", [1, 2]])
def test_command_rejects_bad_argv(argv):
    with pytest.raises(ValueError):
        CommandEngine().run({"argv": argv}, Recorder(), threading.Event(), context())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; its parent (init or the shell) reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_command_abort_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("progress 0.1 started", flush=True)
        time.sleep(60)
    """
    abort = threading.Event()
    thread, box = run_in_thread(CommandEngine(), {"argv": py(code)}, abort)
    assert eventually(lambda: pidfile.exists() and pidfile.read_text())
    child = int(pidfile.read_text())
    start = time.monotonic()
    abort.set()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - start < 3
    assert isinstance(box["error"], Aborted)
    assert eventually(lambda: not pid_alive(child), timeout=3)


def test_command_abort_kills_a_program_that_ignores_term(tmp_path):
    ready = tmp_path / "ready"
    code = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """
    abort = threading.Event()
    thread, box = run_in_thread(CommandEngine(), {"argv": py(code), "kill_after": 0.3}, abort)
    assert eventually(ready.exists)
    abort.set()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(box["error"], Aborted)
