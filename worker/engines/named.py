"""Engines built from the operator's definitions (conf/engines.yaml, see runq/engines.py), and the
lookup a worker does at start: ``engine_for(name, catalog, ...)``.

* a declared ``command`` engine fills its argv template from the run's param (checked against the
  engine's schema first) and runs the program: result from ``out/result.json`` (with ``files``) or
  a stdout line ``result <json>``; the files under ``out/`` listed beside it;
* a declared ``python`` engine is its class, with the param checked (and defaults filled) first;
* ``dummy`` is built in; ``module:Class`` still loads any engine class;
* the raw ``command`` engine (program taken from the param) only when explicitly allowed.
"""
from __future__ import annotations

import collections
import errno
import importlib
import os
import sys
from pathlib import Path

from simx import catalog as catalog_mod
from simx.catalog import Catalog, EngineDef, ParamError

from . import outputs
from .base import Engine, Fatal, ParamRejected, ProgramUnavailable, UnknownEngine, get_engine
from .command import MAX_RESULT_BYTES, BadResult, decode_result, describe_status, run_env, run_program

ANY_COMMAND_REFUSED = (
    "engine 'command' runs whatever program a batch names, so a worker offers it only when started "
    "with --allow-any-command (pool setting allow_any_command: true); declare a named engine in "
    "{source} instead")
KEEP_OUTPUTS = 8  # finished runs' work directories not yet taken by the session's upload (worker/upload.py)


def checked(definition: EngineDef, param) -> dict:
    try:
        return catalog_mod.validate_param(definition, param)
    except ParamError as exc:
        raise ParamRejected(str(exc)) from None


class NamedCommandEngine(Engine):
    def __init__(self, definition: EngineDef, root: Path, work_root: Path, python: str = sys.executable):
        self.definition = definition
        self.name = definition.name
        self.root = Path(root)
        self.work_root = outputs.process_root(work_root) if definition.files else Path(work_root)
        self.python = python
        # Finished runs' work directories, oldest first, for the upload step to take.
        self.outputs: collections.OrderedDict[tuple, outputs.WorkDir] = collections.OrderedDict()

    def run(self, param, progress, abort, context):
        d = self.definition
        param = checked(d, param)
        workdir = outputs.WorkDir(self.work_root, context.batch_id, context.batch_index, context.attempt) \
            if d.files else None
        try:
            data = self._run(param, progress, abort, context, workdir)
        except BaseException:
            if workdir is not None:
                workdir.remove()
            raise
        if workdir is not None:
            self._keep(protocol_key(context), workdir)
        return data

    def _run(self, param, progress, abort, context, workdir):
        d = self.definition
        values = {"param": param, "python": self.python, "root": str(self.root), "batch_id": context.batch_id,
                  "batch_index": context.batch_index, "attempt": context.attempt}
        if workdir is not None:
            values.update(workdir=str(workdir.path), out=str(workdir.out))
        try:
            argv = catalog_mod.fill_argv(d, values)
            env = dict(os.environ)
            env.update(catalog_mod.fill_env(d, values))
            env.update(run_env(param, context))
        except ParamError as exc:
            raise ParamRejected(f"engine {d.name!r}: {exc}") from None
        if workdir is not None:
            env.update(SIMX_WORKDIR=str(workdir.path), SIMX_OUT=str(workdir.out))
        cwd = self.root / d.cwd if d.cwd else (workdir.path if workdir is not None else None)
        try:
            done = run_program(argv, env, cwd, d.kill_after, abort, progress, parse=d.progress.parse)
        except OSError as exc:
            if exc.errno == errno.E2BIG:  # the param's values are too long for an argv: the run's fault
                raise Fatal(f"engine {d.name!r}: the arguments are too long for the system ({exc})") from None
            raise ProgramUnavailable(exc.errno, f"engine {d.name!r}: cannot start {argv[0]}"
                                                f"{f' in {cwd}' if cwd else ''}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            message = f"engine {d.name!r}: {argv[0]} {describe_status(done.returncode)}; stderr: {done.stderr_tail}"
            raise (Fatal if done.returncode in d.permanent_exit else RuntimeError)(message)
        data = {"returncode": 0, "stdout_tail": done.stdout_tail}
        try:
            result_file = workdir.out / "result.json" if workdir is not None else None
            if result_file is not None and result_file.is_file() and not result_file.is_symlink():
                with open(result_file, encoding="utf-8", errors="replace") as f:
                    data["result"] = decode_result(f.read(MAX_RESULT_BYTES + 1), "out/result.json")
            elif done.result_line is not None:
                data["result"] = decode_result(done.result_line, "the stdout line 'result ...'")
            if workdir is not None:
                data["files"] = workdir.manifest()
        except (BadResult, outputs.OutputsTooLarge) as exc:
            raise RuntimeError(f"engine {d.name!r}: {exc}") from None
        return data

    def _keep(self, key, workdir: outputs.WorkDir) -> None:
        self.outputs[key] = workdir
        while len(self.outputs) > KEEP_OUTPUTS:
            self.outputs.popitem(last=False)[1].remove()

    def take_outputs(self, key) -> outputs.WorkDir | None:
        """The work directory of a finished run (batch_id, batch_index, attempt), handed over once:
        the caller uploads its files and then calls ``remove()``."""
        return self.outputs.pop(tuple(key), None)


def protocol_key(context) -> tuple[int, int, int]:
    return (context.batch_id, context.batch_index, context.attempt)


class CheckedEngine(Engine):
    """A declared Python engine: its class, with the param checked against the schema first."""

    def __init__(self, definition: EngineDef, inner: Engine):
        self.definition = definition
        self.inner = inner
        self.name = definition.name
        self._last: tuple | None = None  # (repr of the param, checked param, flat?) of the last run, private
        self._inner_inline = getattr(inner, "runs_inline", None)

    def run(self, param, progress, abort, context):
        # The runs of a batch share one param: check it once (the schema check was the largest
        # part of a zero-step run's cost), and give each run its own copy of the checked param.
        # repr() tells JSON values apart with their types (1, 1.0 and True differ, as must
        # they here) and at C speed: a third of comparing the trees in Python.
        seen = repr(param)
        last = self._last
        if last is not None and last[0] == seen:
            good = dict(last[1]) if last[2] else copy_json(last[1])
        else:
            good = checked(self.definition, param)
            flat = type(good) is dict and not any(type(v) in (dict, list) for v in good.values())
            self._last = (seen, copy_json(good), flat)
        return self.inner.run(good, progress, abort, context)

    def runs_inline(self, param) -> bool:
        inline = self._inner_inline
        return inline is not None and inline(param)


def copy_json(value):
    """A deep copy of a JSON value (dicts and lists are the only mutable parts)."""
    if type(value) is dict:
        return {k: copy_json(v) for k, v in value.items()}
    if type(value) is list:
        return [copy_json(v) for v in value]
    return value


def load_class(path: str, root: Path, options: dict):
    module_name, _, attr = path.partition(":")
    if str(root) not in sys.path:
        sys.path.append(str(root))  # examples/ and site engines live beside the simx packages
    try:
        cls = getattr(importlib.import_module(module_name), attr)
        return cls(**options)
    except (ImportError, AttributeError, TypeError) as exc:
        raise UnknownEngine(f"cannot load engine class {path!r}: {exc}") from None


def engine_for(name: str, catalog: Catalog, *, root: Path, work_root: Path,
               allow_any_command: bool = False) -> Engine:
    """The engine a worker started with ``--engine NAME`` runs."""
    if name == "command":
        if not allow_any_command:
            raise UnknownEngine(ANY_COMMAND_REFUSED.format(source=catalog.source))
        return get_engine("command")
    definition = catalog.engines.get(name)
    if definition is None:
        if ":" in name:
            return get_engine(name)  # module:Class, as before
        raise UnknownEngine(f"engine {name!r} is not declared in {catalog.source} "
                            f"(declared: {', '.join(catalog.names())}; or module:Class)")
    if definition.kind == "command":
        return NamedCommandEngine(definition, root, work_root)
    inner = load_class(definition.cls, root, dict(definition.options))
    if not callable(getattr(inner, "run", None)):
        raise UnknownEngine(f"engine {name!r}: class {definition.cls} has no run() method")
    return CheckedEngine(definition, inner)
