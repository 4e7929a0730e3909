"""The engines an operator declares in conf/engines.yaml: loading and checking the file, a param
checked against its engine's schema, an argv template filled from a param, progress lines.

Pure apart from ``load()`` reading one file: runq and runweb call ``Catalog.validate_param`` at
submit; the worker builds its engine from an ``EngineDef``.  See docs/ENGINES.md for the format::

    engines:
      aurora:
        kind: command                     # or python (with class: module:Class)
        argv: ["{python}", "{root}/examples/aurora/ctm.py", --duration, "{param.duration}"]
        env: {OMP_NUM_THREADS: "1"}
        cwd: ""                           # default: the run's work directory (files: true), else the worker's
        kill_after: 5                     # seconds from TERM to KILL when a run is aborted
        files: true                       # a work directory per run; files under out/ are the run's files
        permanent_exit: [2]               # exit statuses that fail the run at once (no retry)
        progress: {regex: 'step (?P<progress>\\d+)%', scale: 100}   # default: "progress F [message]" lines
        params: {duration: {type: float, required: true, min: 0}}   # see runq/paramschema.py
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from . import paramschema, sweep
from .paramschema import ParamError, SchemaError

__all__ = ["Catalog", "EngineDef", "ParamError", "ProgressRule", "SchemaError", "UnknownEngine",
           "fill_argv", "fill_env", "load", "locate", "parse", "validate_param", "validate_sweep"]

KINDS = ("command", "python")
ENGINE_KEYS = {"kind", "argv", "env", "cwd", "kill_after", "class", "options", "params", "extra_params",
               "progress", "files", "permanent_exit", "description"}
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# {{ and }} are literal braces; {name} or {param.a.b} a placeholder.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}|[{}]")
PROGRAM_NAMES = {"python", "root"}  # what argv[0] may contain: never anything from the param
RUN_NAMES = PROGRAM_NAMES | {"param", "workdir", "out", "batch_id", "batch_index", "attempt"}
MAX_KILL_AFTER = 3600.0


class UnknownEngine(LookupError):
    """A batch or a worker names an engine that is not declared."""


@dataclasses.dataclass(frozen=True)
class ProgressRule:
    """How a command engine's stdout lines report progress: always ``progress F [message]``, and
    optionally a regex with a named group ``progress`` (and ``message``) divided by ``scale``."""

    regex: re.Pattern | None = None
    scale: float = 1.0

    def parse(self, line: str) -> tuple[float, str | None] | None:
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[0] == "progress":
            try:
                value = float(parts[1])
            except ValueError:
                value = None
            if value is not None and math.isfinite(value):
                return value, (parts[2] if len(parts) > 2 else None)
        if self.regex is None:
            return None
        m = self.regex.search(line)
        if m is None:
            return None
        try:
            value = float(m.group("progress")) / self.scale
        except (TypeError, ValueError):
            return None
        message = m.groupdict().get("message")
        return (value, message) if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class EngineDef:
    name: str
    kind: str  # command | python
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    kill_after: float = 5.0
    cls: str = ""  # module:Class for kind python
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments of the Python class
    params: paramschema.Field | None = None  # None: any mapping
    progress: ProgressRule = ProgressRule()
    files: bool = False
    permanent_exit: frozenset[int] = frozenset()
    description: str = ""

    def validate_param(self, param) -> dict:
        return validate_param(self, param)


def validate_param(engine: EngineDef, param) -> dict:
    """``param`` checked against the engine's schema, with defaults filled in.  ParamError's message
    names the engine and the field (``engine 'aurora': param.duration: required``)."""
    try:
        if not isinstance(param, dict):
            raise ParamError("param", f"must be a mapping, not {type(param).__name__}")
        if engine.params is None:
            return paramschema.validate(paramschema.Field(types=("map",)), param)
        return paramschema.validate(engine.params, param)
    except ParamError as exc:
        raise ParamError(exc.field, exc.reason, prefix=f"engine {engine.name!r}: ") from None


def validate_sweep(engine: EngineDef, param, spec) -> int:
    """Check a batch's param with its ``sweep``/``zip`` against the engine; return the number of runs.

    O(number of values listed), never O(runs): every listed value is checked against the field its
    key names, and the first run's whole param once (fields of a schema are independent, so every
    combination then fits).  SweepError or ParamError, naming the engine and the key."""
    if not isinstance(param, dict):
        validate_param(engine, param)  # raises, naming param
    try:
        n = sweep.validate(spec, param)
    except sweep.SweepError as exc:
        raise sweep.SweepError(exc.key, f"engine {engine.name!r}: {str(exc)[len(exc.key) + 2:]}") from None
    for part in ("sweep", "zip") if engine.params is not None and spec else ():
        for key, values in (spec.get(part) or {}).items():
            field = paramschema.field_at(engine.params, key)
            if field is None:
                raise ParamError(f"{part}.{key}", "names no field of the engine's params",
                                 prefix=f"engine {engine.name!r}: ")
            if field is True:
                continue  # a part of the param the schema leaves open
            for i, value in enumerate(values):
                try:
                    paramschema.validate(field, value, f"{part}.{key}[{i}]")
                except ParamError as exc:
                    raise ParamError(exc.field, exc.reason, prefix=f"engine {engine.name!r}: ") from None
    validate_param(engine, sweep.param_for(param, spec, 0) if n else param)
    return n


DUMMY = EngineDef(
    name="dummy", kind="python", cls="worker.engines.dummy:DummyEngine",
    description="counts step_count steps of step_delay seconds",
    params=paramschema.compile_params({
        "step_count": {"type": "int", "min": 0}, "step_delay": {"type": "float", "min": 0},
        "fail": "str", "fail_attempts": {"type": "int", "min": 0},
    }, "engine 'dummy': params", extra=True),
)
BUILTIN = {"dummy": DUMMY}


@dataclasses.dataclass(frozen=True)
class Catalog:
    engines: dict[str, EngineDef]
    source: str = "conf/engines.yaml"

    def get(self, name: str) -> EngineDef:
        engine = self.engines.get(name) if isinstance(name, str) else None
        if engine is None:
            raise UnknownEngine(f"engine {name!r} is not declared in {self.source} "
                                f"(declared: {', '.join(sorted(self.engines))})")
        return engine

    def names(self) -> list[str]:
        return sorted(self.engines)

    def validate_param(self, name: str, param) -> dict:
        """What runq and runweb call at submit: UnknownEngine or ParamError, else param with defaults."""
        return validate_param(self.get(name), param)

    def validate_sweep(self, name: str, param, spec) -> int:
        """At submit of a batch with ``sweep``/``zip``: the number of runs, or an error naming the key."""
        return validate_sweep(self.get(name), param, spec)


def locate(root: Path, override: str | None = None) -> tuple[Path, bool]:
    """(path, required) of the engines file: ``override`` (SIMX_ENGINES or a flag; relative to the
    simx root) must exist; the default conf/engines.yaml may be absent (built-ins only)."""
    if override:
        path = Path(override)
        return (path if path.is_absolute() else Path(root) / path), True
    return Path(root) / "conf" / "engines.yaml", False


def load(path: str | Path, required: bool = False) -> Catalog:
    """The catalog of a file (the built-ins alone when it is absent and not ``required``)."""
    path = Path(path)
    if not path.exists():
        if required:
            raise SchemaError(f"{path}: no such engines file")
        return Catalog(dict(BUILTIN), str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SchemaError(f"{path}: cannot read: {exc}") from None
    return parse(doc, str(path))


def parse(doc, source: str = "conf/engines.yaml") -> Catalog:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or set(doc) - {"engines"}:
        raise SchemaError(f"{source}: expected a mapping with the one key 'engines'")
    entries = doc.get("engines") or {}
    if not isinstance(entries, dict):
        raise SchemaError(f"{source}: engines: expected a mapping of engine names")
    engines = dict(BUILTIN)
    for name, entry in entries.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise SchemaError(f"{source}: engine name {name!r}: letters, digits, _ . - (at most 64)")
        if name in BUILTIN or name == "command" or ":" in name:
            raise SchemaError(f"{source}: engine {name!r}: the name is reserved for a built-in")
        engines[name] = _definition(name, entry, f"{source}: engine {name!r}")
    return Catalog(engines, source)


def _definition(name: str, entry, where: str) -> EngineDef:
    if not isinstance(entry, dict):
        raise SchemaError(f"{where}: expected a mapping")
    unknown = sorted(set(map(str, entry)) - ENGINE_KEYS)
    if unknown:
        raise SchemaError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(sorted(ENGINE_KEYS))})")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise SchemaError(f"{where}: kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    kw: dict[str, Any] = {"name": name, "kind": kind, "description": str(entry.get("description") or "")}
    if "params" in entry and entry["params"] is not None:
        extra = entry.get("extra_params", False)
        if not isinstance(extra, bool):
            raise SchemaError(f"{where}: extra_params: must be true or false")
        kw["params"] = paramschema.compile_params(entry["params"], f"{where}: params", extra=extra)
    if "options" in entry:
        if not isinstance(entry["options"], dict) or kind != "python":
            raise SchemaError(f"{where}: options: a mapping, for kind python only")
        kw["options"] = tuple(entry["options"].items())
    if kind == "python":
        for key in ("argv", "env", "cwd", "kill_after", "progress", "permanent_exit"):
            if key in entry:
                raise SchemaError(f"{where}: {key}: only for kind command")
        cls = entry.get("class")
        if not isinstance(cls, str) or cls.count(":") != 1 or not all(cls.split(":")):
            raise SchemaError(f"{where}: class: must be 'package.module:Class', not {cls!r}")
        kw["cls"] = cls
    else:
        if "class" in entry:
            raise SchemaError(f"{where}: class: only for kind python")
        kw.update(_command_keys(entry, where, kw.get("params")))
    files = entry.get("files", False)
    if not isinstance(files, bool):
        raise SchemaError(f"{where}: files: must be true or false")
    kw["files"] = files
    if not files:
        templates = [*kw.get("argv", ()), *(v for _, v in kw.get("env", ()))]
        if any(ref.split(".")[0] in ("workdir", "out") for t in templates for ref in _references(t, where)):
            raise SchemaError(f"{where}: {{workdir}} and {{out}} exist only with files: true")
    return EngineDef(**kw)


def _command_keys(entry: dict, where: str, params) -> dict:
    argv = entry.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise SchemaError(f"{where}: argv: must be a non-empty list of non-empty strings")
    for i, item in enumerate(argv):
        allowed = PROGRAM_NAMES if i == 0 else RUN_NAMES
        for ref in _references(item, f"{where}: argv[{i}]"):
            head = ref.split(".")[0]
            if head not in allowed:
                what = "the program (argv[0]) may use only {python} and {root}" if i == 0 else \
                    f"unknown placeholder {{{ref}}} (known: {', '.join(sorted(RUN_NAMES))}, param.KEY)"
                raise SchemaError(f"{where}: argv[{i}]: {what}")
            if head == "param" and ref != "param" and params is not None \
                    and paramschema.field_at(params, ref[len("param."):]) is None:
                raise SchemaError(f"{where}: argv[{i}]: {{{ref}}} names no field of params")
    env = entry.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and "=" not in k for k in env):
        raise SchemaError(f"{where}: env: must be a mapping of variable names to values")
    for key, value in env.items():
        if not isinstance(value, (str, int, float, bool)):
            raise SchemaError(f"{where}: env.{key}: must be a string")
        for ref in _references(str(value), f"{where}: env.{key}"):
            if ref.split(".")[0] not in RUN_NAMES:
                raise SchemaError(f"{where}: env.{key}: unknown placeholder {{{ref}}}")
    cwd = entry.get("cwd") or ""
    if not isinstance(cwd, str):
        raise SchemaError(f"{where}: cwd: must be a path")
    kill_after = entry.get("kill_after", 5.0)
    if isinstance(kill_after, bool) or not isinstance(kill_after, (int, float)) \
            or not 0 <= kill_after <= MAX_KILL_AFTER:
        raise SchemaError(f"{where}: kill_after: must be seconds between 0 and {MAX_KILL_AFTER:g}")
    codes = entry.get("permanent_exit") or []
    if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool)
                                              and 1 <= c <= 255 for c in codes):
        raise SchemaError(f"{where}: permanent_exit: must be a list of exit statuses 1..255")
    return {"argv": tuple(argv), "env": tuple((k, str(v) if not isinstance(v, bool) else str(v).lower())
                                              for k, v in env.items()),
            "cwd": cwd, "kill_after": float(kill_after), "permanent_exit": frozenset(codes),
            "progress": _progress_rule(entry.get("progress"), where)}


def _progress_rule(spec, where: str) -> ProgressRule:
    if spec in (None, "line"):
        return ProgressRule()
    if not isinstance(spec, dict) or set(spec) - {"regex", "scale"} or not isinstance(spec.get("regex"), str):
        raise SchemaError(f"{where}: progress: 'line' or a mapping {{regex: ..., scale: ...}}")
    try:
        regex = re.compile(spec["regex"])
    except re.error as exc:
        raise SchemaError(f"{where}: progress.regex: {exc}") from None
    if "progress" not in regex.groupindex:
        raise SchemaError(f"{where}: progress.regex: needs a named group (?P<progress>...)")
    scale = spec.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise SchemaError(f"{where}: progress.scale: must be a positive number")
    return ProgressRule(regex, float(scale))


def _references(template: str, where: str) -> list[str]:
    refs = []
    for m in PLACEHOLDER.finditer(template):
        if m.group(0) in ("{", "}"):
            raise SchemaError(f"{where}: a lone {m.group(0)!r} (write {{{{ or }}}} for a brace)")
        if m.group(1):
            refs.append(m.group(1))
    return refs


# -- filling templates at run time -------------------------------------------------------

def _lookup(values: dict, ref: str):
    head, _, rest = ref.partition(".")
    if head not in values:
        raise ParamError(head, "no value for this placeholder here")
    value = values[head]
    path = head
    for part in rest.split(".") if rest else ():
        path += "." + part
        if not isinstance(value, dict) or part not in value:
            raise ParamError(path, "absent, and the engine's argv needs it")
        value = value[part]
    if value is None:
        raise ParamError(path, "null, and the engine's argv needs a value")
    return value


def _text(value, ref: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    raise ParamError(ref, f"a {type(value).__name__} cannot be part of an argument")


def _fill(template: str, values: dict) -> str:
    def one(m):
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        return _text(_lookup(values, m.group(1)), m.group(1))
    return PLACEHOLDER.sub(one, template)


def fill_argv(engine: EngineDef, values: dict) -> list[str]:
    """The argv of one run.  ``values``: param (the run's param), python, root, workdir, out,
    batch_id, batch_index, attempt.  An item that is one placeholder naming a list becomes one
    argument per element; a value is never split or given to a shell.  ParamError names the key."""
    argv: list[str] = []
    for item in engine.argv:
        m = PLACEHOLDER.fullmatch(item)
        if m and m.group(1):
            value = _lookup(values, m.group(1))
            if isinstance(value, list):
                argv.extend(_text(v, f"{m.group(1)}[{i}]") for i, v in enumerate(value))
                continue
            argv.append(_text(value, m.group(1)))
        else:
            argv.append(_fill(item, values))
    return argv


def fill_env(engine: EngineDef, values: dict) -> dict[str, str]:
    return {key: _fill(value, values) for key, value in engine.env}
