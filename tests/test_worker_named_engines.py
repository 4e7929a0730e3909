"""Engines built from declared definitions (worker/engines/named.py, outputs.py): argv templates,
results, files, failure kinds, and the lookup a worker does at start."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from procs import eventually

from simx import catalog as catalog_mod
from simx import protocol
from worker.engines import Aborted, Fatal, ProgramUnavailable, RunContext, UnknownEngine, failure_kind
from worker.engines.base import Engine, ParamRejected, WorkerFault
from worker.engines.command import CommandEngine
from worker.engines.dummy import DummyEngine
from worker.engines.named import CheckedEngine, NamedCommandEngine, engine_for
from worker.job import Job

ROOT = Path(__file__).resolve().parent.parent


def context(attempt=1, batch_id=7, batch_index=3):
    return RunContext(batch_id=batch_id, batch_index=batch_index, attempt=attempt, worker_id=1, time_limit=None)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, message=None):
        self.calls.append((fraction, message))


def script(tmp_path: Path, code: str, name="prog.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def named(tmp_path, code, argv_tail=("{param}",), params=None, **entry):
    """A NamedCommandEngine running ``code`` with {python}; work directories under tmp_path/work."""
    prog = script(tmp_path, code)
    spec = {"kind": "command", "argv": ["{python}", str(prog), *argv_tail], **entry}
    if params is not None:
        spec["params"] = params
    c = catalog_mod.parse({"engines": {"e": spec}}, "test.yaml")
    return engine_for("e", c, root=tmp_path, work_root=tmp_path / "work")


def run(engine, param, ctx=None, abort=None):
    progress = Recorder()
    result = engine.run(param, progress, abort or threading.Event(), ctx or context())
    return result, progress.calls


ECHO_ARGS = """
    import json, sys
    print("result " + json.dumps(sys.argv[1:]))
"""


# -- lookup ------------------------------------------------------------------------------------

class Plain(Engine):
    name = "plain"

    def run(self, param, progress, abort, context):
        return param


def test_lookup_builds_declared_engines_and_keeps_module_class(tmp_path):
    c = catalog_mod.load(ROOT / "conf" / "engines.yaml")
    aurora = engine_for("aurora", c, root=ROOT, work_root=tmp_path)
    assert isinstance(aurora, NamedCommandEngine) and aurora.name == "aurora"
    calibration = engine_for("calibration", c, root=ROOT, work_root=tmp_path)
    assert isinstance(calibration, CheckedEngine) and calibration.name == "calibration"
    dummy = engine_for("dummy", c, root=ROOT, work_root=tmp_path)
    assert dummy.name == "dummy" and isinstance(dummy.inner, DummyEngine)
    assert isinstance(engine_for(f"{__name__}:Plain", c, root=ROOT, work_root=tmp_path), Plain)


def test_raw_command_engine_only_when_allowed(tmp_path):
    c = catalog_mod.load(ROOT / "conf" / "engines.yaml")
    with pytest.raises(UnknownEngine, match="--allow-any-command .*allow_any_command: true.*declare a named engine"):
        engine_for("command", c, root=ROOT, work_root=tmp_path)
    assert isinstance(engine_for("command", c, root=ROOT, work_root=tmp_path, allow_any_command=True), CommandEngine)


def test_undeclared_engine_names_the_file(tmp_path):
    c = catalog_mod.load(ROOT / "conf" / "engines.yaml")
    with pytest.raises(UnknownEngine, match=r"'nope' is not declared in .*engines.yaml \(declared: aurora"):
        engine_for("nope", c, root=ROOT, work_root=tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--engine", "command"], "--allow-any-command"),
    (["--engine", "aurora", "--engines", "/nonexistent/engines.yaml"], "no such engines file"),
])
def test_worker_refuses_at_start_with_exit_2(tmp_path, args, message):
    env = dict(os.environ, SIMX_VAR=str(tmp_path), RUNQ_PORT="1")
    env.pop("SIMX_ENGINES", None)
    proc = subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr


def test_worker_reads_the_engines_file_named_by_simx_engines(tmp_path):
    (tmp_path / "e.yaml").write_text("engines: {mine: {kind: python, class: 'nosuchmodule:X'}}\n")
    env = dict(os.environ, SIMX_VAR=str(tmp_path), RUNQ_PORT="1", SIMX_ENGINES=str(tmp_path / "e.yaml"))
    proc = subprocess.run([sys.executable, "-m", "worker", "--engine", "mine"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "cannot load engine class 'nosuchmodule:X'" in proc.stderr


# -- argv, env, results -------------------------------------------------------------------------

def test_param_values_reach_the_program_unsplit_and_unexpanded(tmp_path):
    engine = named(tmp_path, ECHO_ARGS, argv_tail=["--name={param.name}", "{param.files}", "{param.n}"],
                   params={"name": "str", "files": {"type": "list", "items": "str"},
                           "n": {"type": "int", "default": 4}})
    nasty = "a b; touch pwned $(id) `x` *"
    data, _ = run(engine, {"name": nasty, "files": ["f 1", "-x"]})
    assert data["result"] == [f"--name={nasty}", "f 1", "-x", "4"]
    assert data["returncode"] == 0 and not (tmp_path / "pwned").exists()


def test_param_is_checked_against_the_schema_before_the_program_runs(tmp_path):
    marker = tmp_path / "ran"
    engine = named(tmp_path, f"open({str(marker)!r}, 'w')", argv_tail=["{param.n}"],
                   params={"n": {"type": "int", "required": True, "max": 5}})
    with pytest.raises(ParamRejected, match="engine 'e': param.n: value must be at most 5") as info:
        run(engine, {"n": 6})
    assert failure_kind(info.value) == "run" and not marker.exists()


def test_env_and_run_identity(tmp_path):
    code = """
        import json, os
        print("result " + json.dumps([os.environ["A"], os.environ["SIMX_BATCH_INDEX"], os.environ["SIMX_ATTEMPT"],
                                       json.loads(os.environ["SIMX_PARAM"]), os.getcwd()]))
    """
    engine = named(tmp_path, code, argv_tail=[], env={"A": "{param.x}!", "SIMX_ATTEMPT": "mine"}, cwd="sub")
    (tmp_path / "sub").mkdir()
    data, _ = run(engine, {"x": "v"}, ctx=context(attempt=2))
    assert data["result"] == ["v!", "3", "2", {"x": "v"}, str(tmp_path / "sub")]


def test_result_line_progress_regex_and_stdout_tail(tmp_path):
    code = """
        print("Iteration 1 of 4 (25%)", flush=True)
        print("progress 0.5 halfway", flush=True)
        print("plain output")
        print('result {"delay": 1.5}')
    """
    rule = {"regex": r"Iteration (?P<message>\d+ of \d+) \((?P<progress>\d+)%", "scale": 100}
    engine = named(tmp_path, code, argv_tail=[], progress=rule)
    data, calls = run(engine, {})
    assert calls == [(0.25, "1 of 4"), (0.5, "halfway")]
    assert data == {"returncode": 0, "stdout_tail": "plain output\n", "result": {"delay": 1.5}}


def test_a_result_that_is_not_json_fails_the_run_as_transient(tmp_path):
    engine = named(tmp_path, "print('result {not json')", argv_tail=[])
    with pytest.raises(RuntimeError, match="engine 'e': the stdout line 'result ...' is not JSON") as info:
        run(engine, {})
    assert failure_kind(info.value) == "transient"


# -- failure kinds --------------------------------------------------------------------------------

def test_permanent_exit_status_is_a_run_failure(tmp_path):
    engine = named(tmp_path, "import sys; sys.stderr.write('bad scenario\\n'); sys.exit(3)", argv_tail=[],
                   permanent_exit=[3])
    with pytest.raises(Fatal, match="exited with status 3; stderr: bad scenario") as info:
        run(engine, {})
    assert failure_kind(info.value) == "run"


def test_other_exit_status_is_transient(tmp_path):
    engine = named(tmp_path, "import sys; sys.exit(4)", argv_tail=[], permanent_exit=[3])
    with pytest.raises(RuntimeError, match="status 4") as info:
        run(engine, {})
    assert not isinstance(info.value, Fatal) and failure_kind(info.value) == "transient"


@pytest.mark.parametrize("program", ["/nonexistent/program", "{root}/not-executable"])
def test_missing_or_unexecutable_program_is_a_worker_failure(tmp_path, program):
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    c = catalog_mod.parse({"engines": {"e": {"kind": "command", "argv": [program]}}}, "t")
    engine = engine_for("e", c, root=tmp_path, work_root=tmp_path / "work")
    with pytest.raises(ProgramUnavailable, match="engine 'e': cannot start") as info:
        run(engine, {})
    assert isinstance(info.value, (WorkerFault, OSError)) and failure_kind(info.value) == "worker"


def test_missing_cwd_is_a_worker_failure(tmp_path):
    engine = named(tmp_path, "pass", argv_tail=[], cwd="no/such/dir")
    with pytest.raises(ProgramUnavailable) as info:
        run(engine, {})
    assert failure_kind(info.value) == "worker"


def test_raw_command_with_a_missing_program_is_the_runs_fault():
    with pytest.raises(OSError) as info:
        run(CommandEngine(), {"argv": ["/nonexistent/program"]})
    assert failure_kind(info.value) == "run"


@pytest.mark.parametrize("exc, kind", [(ValueError("x"), "transient"), (Fatal("x"), "run"),
                                       (WorkerFault("x"), "worker"), (Aborted("x"), "transient")])
def test_failure_kind_of_exceptions(exc, kind):
    assert failure_kind(exc) == kind


def test_python_engine_fatal_passes_through_the_job_as_a_failed_run():
    class Refuses(Engine):
        def run(self, param, progress, abort, context):
            raise Fatal("this param can never work")

    d = catalog_mod.parse({"engines": {"p": {"kind": "python", "class": "x:Y"}}}, "t").get("p")
    job = Job(protocol.message("RunqAssignRun", seq=1, batch_id=1, batch_index=0, attempt=1, engine="p", param={},
                               time_limit=None), CheckedEngine(d, Refuses()), 1, lambda: None)
    job.start()
    assert job.wait(5)
    mtype, fields = job.outcome()
    assert mtype == "WorkerFailedRun" and fields["message"] == "Fatal: this param can never work"


# -- files ---------------------------------------------------------------------------------------------

FILES = """
    import json, os
    out = os.environ["SIMX_OUT"]
    assert os.getcwd() == os.environ["SIMX_WORKDIR"]
    os.makedirs(os.path.join(out, "sub"))
    open(os.path.join(out, "a.csv"), "w").write("t,x\\n" * 1000)
    open(os.path.join(out, "sub", "b.bin"), "wb").write(bytes(range(256)) * 4)
    os.symlink("/etc/passwd", os.path.join(out, "leak"))
    json.dump({"from": "file"}, open(os.path.join(out, "result.json"), "w"))
    print('result {"from": "stdout"}')
"""


def test_files_are_listed_with_size_and_sha256_and_result_json_wins(tmp_path):
    engine = named(tmp_path, FILES, argv_tail=["{out}"], files=True)
    data, _ = run(engine, {})
    assert data["result"] == {"from": "file"}
    names = [f["name"] for f in data["files"]]
    assert names == ["a.csv", "result.json", "sub/b.bin"]  # the symlink is not offered
    workdir = engine.take_outputs((7, 3, 1))
    for f in data["files"]:
        blob = b"".join(piece for _, piece in workdir.chunks(f["name"], size=1000))
        assert len(blob) == f["size"] and hashlib.sha256(blob).hexdigest() == f["sha256"]
    offsets = [o for o, _ in workdir.chunks("a.csv", size=1000)]
    assert offsets == [0, 1000, 2000, 3000]
    for bad in ("leak", "../prog.py", "/etc/passwd"):
        with pytest.raises(ValueError):
            list(workdir.chunks(bad))
    assert engine.take_outputs((7, 3, 1)) is None  # handed over once
    workdir.remove()
    assert not workdir.path.exists()


def test_engines_without_files_get_no_work_directory(tmp_path):
    engine = named(tmp_path, "import os; print('result', str('SIMX_OUT' in os.environ).lower())", argv_tail=[])
    data, _ = run(engine, {})
    assert data["result"] is False and "files" not in data and not (tmp_path / "work").exists()


def test_a_failed_run_leaves_no_work_directory(tmp_path):
    engine = named(tmp_path, "import sys; sys.exit(1)", argv_tail=[], files=True)
    with pytest.raises(RuntimeError):
        run(engine, {})
    assert list(engine.work_root.iterdir()) == []


def test_too_many_bytes_under_out_fail_the_run(tmp_path, monkeypatch):
    from worker.engines import outputs
    monkeypatch.setattr(outputs, "MAX_FILES_BYTES", 1000)
    monkeypatch.setattr(outputs.WorkDir.manifest, "__defaults__", (1000,))
    engine = named(tmp_path, "import os; open(os.environ['SIMX_OUT'] + '/big', 'w').write('x' * 1001)",
                   argv_tail=[], files=True)
    with pytest.raises(RuntimeError, match="pass the limit of 1000 bytes"):
        run(engine, {})


def test_abort_kills_the_program_and_removes_the_work_directory(tmp_path):
    ready = tmp_path / "ready"
    engine = named(tmp_path, f"import time; open({str(ready)!r}, 'w'); time.sleep(60)", argv_tail=[], files=True,
                   kill_after=0.5)
    abort = threading.Event()
    box = {}

    def target():
        try:
            run(engine, {}, abort=abort)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    assert eventually(ready.exists)
    abort.set()
    t.join(5)
    assert isinstance(box.get("error"), Aborted)
    assert list(engine.work_root.iterdir()) == []


def test_arguments_too_long_for_the_system_are_the_runs_fault(tmp_path):
    engine = named(tmp_path, "pass", argv_tail=["{param.s}"])
    with pytest.raises(Fatal, match="too long") as info:
        run(engine, {"s": "x" * 200_000})
    assert failure_kind(info.value) == "run"


def test_work_directories_of_dead_worker_processes_are_removed_at_start(tmp_path):
    from worker.engines.outputs import process_root
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    for pid in (dead.pid, live):
        (tmp_path / f"w{pid}" / "1-0-1-x" / "out").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    mine = process_root(tmp_path)
    assert mine == tmp_path / f"w{os.getpid()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"w{live}", "other"])


class Mutates(Engine):
    """Returns the param it got, then scribbles on it (a careless engine)."""

    name = "p"

    def run(self, param, progress, abort, context):
        seen = repr(param)
        param["n"] = -1
        param.setdefault("tags", []).append("x")
        return seen


def test_a_declared_engine_checks_a_batch_param_once_yet_each_run_gets_its_own_copy():
    d = catalog_mod.parse({"engines": {"p": {"kind": "python", "class": "x:Y", "params": {
        "n": {"type": "int", "min": 0}, "tags": {"type": "list", "default": ["a"]}}}}}, "t").get("p")
    engine = CheckedEngine(d, Mutates())
    first = engine.run({"n": 1}, lambda *a: None, threading.Event(), context())
    again = [engine.run({"n": 1}, lambda *a: None, threading.Event(), context()) for _ in range(2)]
    assert [first, *again] == [repr({"n": 1, "tags": ["a"]})] * 3   # the scribbles of one run never reach the next
    with pytest.raises(ParamRejected):
        engine.run({"n": -2}, lambda *a: None, threading.Event(), context())
    with pytest.raises(ParamRejected):
        engine.run({"n": True}, lambda *a: None, threading.Event(), context())   # == 1 in Python, not in JSON


def test_a_flat_batch_param_is_checked_once_and_each_run_gets_its_own_copy():
    d = catalog_mod.parse({"engines": {"p": {"kind": "python", "class": "x:Y", "params": {
        "n": {"type": "int", "min": 0}, "k": {"type": "int", "default": 2}}}}}, "t").get("p")
    engine = CheckedEngine(d, Mutates())
    runs = [engine.run({"n": 1}, lambda *a: None, threading.Event(), context()) for _ in range(3)]
    assert runs == [repr({"n": 1, "k": 2})] * 3   # run 1 set n = -1 and added tags: not seen by runs 2, 3
    with pytest.raises(ParamRejected):
        engine.run({"n": 1.0}, lambda *a: None, threading.Event(), context())   # == 1 in Python, not in JSON
