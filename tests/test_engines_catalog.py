"""runq/engines.py and runq/paramschema.py as pure units: the operator's engines file, param
schemas, argv templates and progress rules."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simx import catalog as engines, paramschema
from simx.catalog import ParamError, SchemaError, UnknownEngine

ROOT = Path(__file__).resolve().parent.parent


def catalog(entries: dict) -> engines.Catalog:
    return engines.parse({"engines": entries}, "test.yaml")


def cmd(**kw) -> dict:
    return {"kind": "command", "argv": ["/bin/echo", "{param.x}"], **kw}


# -- the shipped file ----------------------------------------------------------------------

def test_shipped_engines_file_loads_with_the_builtin_dummy():
    c = engines.load(ROOT / "conf" / "engines.yaml", required=True)
    assert {"aurora", "calibration", "dummy"} <= set(c.names())
    assert c.get("aurora").files and c.get("aurora").permanent_exit == {3}


def test_the_original_aurora_batch_request_is_accepted_unchanged():
    batch = yaml.safe_load((ROOT / "examples" / "aurora" / "batch-req.yaml").read_text())
    original = {"mode": "simulation", "b_time": 0.0, "duration": 100.0, "control": False, "qcontrol": False,
                "events": False, "scenario": 123}
    assert batch["engine"] == "aurora" and batch["param"] == original
    c = engines.load(ROOT / "conf" / "engines.yaml")
    assert c.validate_param("aurora", batch["param"]) == original


def test_missing_file_gives_the_builtins_unless_required(tmp_path):
    assert engines.load(tmp_path / "none.yaml").names() == ["dummy"]
    with pytest.raises(SchemaError, match="no such engines file"):
        engines.load(tmp_path / "none.yaml", required=True)


def test_unknown_engine_names_the_declared_ones():
    with pytest.raises(UnknownEngine, match=r"'nope' is not declared in test.yaml \(declared: dummy, e\)"):
        catalog({"e": cmd()}).validate_param("nope", {})


# -- errors in the file name the engine and the key ---------------------------------------------

@pytest.mark.parametrize("entry, message", [
    ({"kind": "shell", "argv": ["x"]}, "engine 'e': kind: must be one of command, python"),
    (cmd(argv="echo hi"), "engine 'e': argv: must be a non-empty list"),
    (cmd(argv=[]), "engine 'e': argv: must be a non-empty list"),
    (cmd(argv=["{param.prog}", "x"]), r"argv\[0\]: the program \(argv\[0\]\) may use only"),
    (cmd(argv=["/bin/{param.x}"]), r"argv\[0\]: the program"),
    (cmd(argv=["/bin/echo", "{nope}"]), r"argv\[1\]: unknown placeholder \{nope\}"),
    (cmd(argv=["/bin/echo", "{param.x"]), r"argv\[1\]: a lone '\{'"),
    (cmd(argv=["/bin/echo", "{out}"]), r"\{workdir\} and \{out\} exist only with files: true"),
    (cmd(params={"y": "int"}), r"argv\[1\]: \{param.x\} names no field of params"),
    (cmd(env={"A": [1]}), "engine 'e': env.A: must be a string"),
    (cmd(env={"A": "{secret}"}), r"env.A: unknown placeholder \{secret\}"),
    (cmd(kill_after=-1), "engine 'e': kill_after: must be seconds"),
    (cmd(permanent_exit=[0]), "engine 'e': permanent_exit: must be a list of exit statuses 1..255"),
    (cmd(permanent_exit="3"), "permanent_exit"),
    (cmd(progress={"regex": "("}), "engine 'e': progress.regex:"),
    (cmd(progress={"regex": "step (\\d+)"}), r"needs a named group \(\?P<progress>"),
    (cmd(progress={"regex": "(?P<progress>\\d+)", "scale": 0}), "progress.scale: must be a positive"),
    (cmd(files="yes"), "engine 'e': files: must be true or false"),
    (cmd(bogus=1), "engine 'e': bogus: unknown key"),
    (cmd(**{"class": "a:B"}), "engine 'e': class: only for kind python"),
    ({"kind": "python", "class": "nocolon"}, "engine 'e': class: must be 'package.module:Class'"),
    ({"kind": "python", "class": "a:B", "argv": ["x"]}, "engine 'e': argv: only for kind command"),
    (cmd(params={"x": {"type": "integer"}}), r"engine 'e': params.x.type: unknown type 'integer'"),
    (cmd(params={"x": {"type": "int", "default": "a"}}), r"params.x.default: must be int, not str"),
    (cmd(params={"x": {"type": "int", "min": 5, "max": 1}}), r"params.x: min 5 is above max 1"),
    (cmd(params={"x": {"type": "enum"}}), r"params.x.values: type enum needs"),
    (cmd(params={"x": {"type": "str", "items": "int"}}), r"params.x.items: only for type list"),
    (cmd(params={"x": {"type": "int", "required": True, "default": 1}}), "a required field has no use"),
    (cmd(params={"x": {"type": "map", "fields": {"a": {"type": "int", "lo": 1}}}}), r"params.x.a.lo: unknown key"),
    (cmd(params={"x": {"type": "int", "max": float("nan")}}), r"params.x.max: must be a finite number"),
])
def test_bad_definitions_are_refused_naming_engine_and_key(entry, message):
    with pytest.raises(SchemaError, match=message):
        catalog({"e": entry})


@pytest.mark.parametrize("doc, message", [
    ({"engines": {"dummy": cmd()}}, "'dummy': the name is reserved"),
    ({"engines": {"command": cmd()}}, "'command': the name is reserved"),
    ({"engines": {"a b": cmd()}}, "engine name 'a b'"),
    ({"engines": [1]}, "engines: expected a mapping"),
    ({"engine": {}}, "expected a mapping with the one key 'engines'"),
    ([], "expected a mapping"),
])
def test_bad_files_are_refused(doc, message):
    with pytest.raises(SchemaError, match=message):
        engines.parse(doc, "test.yaml")


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "engines.yaml"
    path.write_text("engines: {a: [")
    with pytest.raises(SchemaError, match=f"{path}: cannot read"):
        engines.load(path)


# -- param schemas -----------------------------------------------------------------------------------

SCHEMA = paramschema.compile_params({
    "n": {"type": "int", "min": 1, "max": 10, "default": 3},
    "x": {"type": "float", "required": True, "min": 0},
    "name": {"type": "str", "max": 5},
    "on": "bool",
    "mode": {"type": "enum", "values": ["a", "b", 1]},
    "ids": {"type": "list", "items": {"type": "int", "min": 0}, "max": 3},
    "id": {"type": ["int", "str"]},
    "opts": {"type": "map", "fields": {"k": {"type": "int", "default": 7}, "j": "str"}},
    "free": "map",
    "blob": "any",
}, "params")


@pytest.mark.parametrize("param, expected", [
    ({"x": 1}, {"x": 1.0, "n": 3}),
    ({"x": 0.5, "n": 10, "name": "abcde", "on": True, "mode": 1}, {"x": 0.5, "n": 10, "name": "abcde", "on": True,
                                                                 "mode": 1}),
    ({"x": 2, "ids": [0, 5], "id": "abc"}, {"x": 2.0, "n": 3, "ids": [0, 5], "id": "abc"}),
    ({"x": 2, "id": 7}, {"x": 2.0, "n": 3, "id": 7}),
    ({"x": 2, "opts": {}}, {"x": 2.0, "n": 3, "opts": {"k": 7}}),
    ({"x": 2, "free": {"a": [1]}, "blob": [None, {"b": 1}]}, {"x": 2.0, "n": 3, "free": {"a": [1]},
                                                              "blob": [None, {"b": 1}]}),
])
def test_valid_params_come_back_with_defaults(param, expected):
    assert paramschema.validate(SCHEMA, param) == expected


@pytest.mark.parametrize("param, field, message", [
    ({}, "param.x", "required"),
    ({"x": "1"}, "param.x", "must be float, not str"),
    ({"x": True}, "param.x", "must be float, not bool"),
    ({"x": -1}, "param.x", "at least 0"),
    ({"x": 1, "n": 1.0}, "param.n", "must be int, not float"),
    ({"x": 1, "n": 11}, "param.n", "at most 10"),
    ({"x": 1, "name": "abcdef"}, "param.name", "length must be at most 5"),
    ({"x": 1, "name": "a\x00"}, "param.name", "NUL"),
    ({"x": 1, "on": 1}, "param.on", "must be bool, not int"),
    ({"x": 1, "mode": "c"}, "param.mode", "must be one of 'a', 'b', 1"),
    ({"x": 1, "mode": True}, "param.mode", "must be one of"),
    ({"x": 1, "ids": [1, -1]}, "param.ids[1]", "at least 0"),
    ({"x": 1, "ids": [1, 2, 3, 4]}, "param.ids", "length must be at most 3"),
    ({"x": 1, "id": 1.5}, "param.id", "must be int or str, not float"),
    ({"x": 1, "opts": {"k": "a"}}, "param.opts.k", "must be int"),
    ({"x": 1, "opts": {"z": 1}}, "param.opts.z", "unknown field"),
    ({"x": 1, "typo": 1}, "param.typo", "unknown field"),
    ({"x": 1, "free": []}, "param.free", "must be map, not list"),
    ({"x": None}, "param.x", "must be float, not null"),
    ({"x": 10**400}, "param.x", "beyond the signed 64-bit range"),
    ({"x": 1, "n": 2**63}, "param.n", "beyond the signed 64-bit range"),
    ({"x": 1, "id": -2**63 - 1}, "param.id", "beyond the signed 64-bit range"),
])
def test_invalid_params_name_the_field(param, field, message):
    with pytest.raises(ParamError, match=message) as info:
        paramschema.validate(SCHEMA, param)
    assert info.value.field == field and str(info.value).startswith(field)


def test_validate_does_not_change_its_input_or_share_defaults():
    param = {"x": 1, "opts": {}}
    out = paramschema.validate(SCHEMA, param)
    out["opts"]["k"] = 99
    assert param == {"x": 1, "opts": {}}
    assert paramschema.validate(SCHEMA, {"x": 1, "opts": {}})["opts"]["k"] == 7


def test_engine_errors_name_the_engine():
    c = catalog({"e": cmd(params={"x": {"type": "int", "required": True}})})
    with pytest.raises(ParamError, match=r"^engine 'e': param.x: required$"):
        c.validate_param("e", {})
    with pytest.raises(ParamError, match="engine 'e': param: must be a mapping"):
        c.validate_param("e", [1])


def test_engine_without_schema_takes_any_mapping_and_extra_params_allow_more():
    c = catalog({"e": cmd(), "f": cmd(params={"x": "int"}, extra_params=True)})
    assert c.validate_param("e", {"anything": [1]}) == {"anything": [1]}
    assert c.validate_param("f", {"x": 1, "y": 2}) == {"x": 1, "y": 2}
    with pytest.raises(ParamError, match="param.x"):
        c.validate_param("f", {"x": "1"})


def test_dummy_schema_checks_its_fields_and_lets_others_through():
    c = engines.parse({}, "t")
    assert c.validate_param("dummy", {"step_count": 5, "step_delay": 1, "note": "x"}) == \
        {"step_count": 5, "step_delay": 1.0, "note": "x"}
    with pytest.raises(ParamError, match="param.step_count: value must be at least 0"):
        c.validate_param("dummy", {"step_count": -1})


# -- argv templates ----------------------------------------------------------------------------------

def fill(argv, param, **values):
    d = catalog({"e": {"kind": "command", "argv": argv, "files": True}}).get("e")
    return engines.fill_argv(d, {"param": param, "python": "/py", "root": "/simx", "workdir": "/w", "out": "/w/out",
                                 "batch_id": 4, "batch_index": 2, "attempt": 1, **values})


@pytest.mark.parametrize("argv, param, expected", [
    (["{python}", "{root}/x.py", "{param.a}"], {"a": "two words; rm -rf /"},
     ["/py", "/simx/x.py", "two words; rm -rf /"]),
    (["p", "--n={param.n}", "{param.f}", "{param.b}"], {"n": 3, "f": 0.5, "b": False}, ["p", "--n=3", "0.5", "false"]),
    (["p", "{param.files}", "end"], {"files": ["a b", "c", 1]}, ["p", "a b", "c", "1", "end"]),
    (["p", "{param.files}"], {"files": []}, ["p"]),
    (["p", "{param.m.k}"], {"m": {"k": "v"}}, ["p", "v"]),
    (["p", "{param.m}"], {"m": {"k": 1}}, ["p", '{"k": 1}']),
    (["p", "{param}"], {"a": 1}, ["p", '{"a": 1}']),
    (["p", "{{literal}}", "{out}/r", "{batch_id}-{batch_index}-{attempt}"], {},
     ["p", "{literal}", "/w/out/r", "4-2-1"]),
    (["p", "$HOME", "`id`", "*"], {}, ["p", "$HOME", "`id`", "*"]),
])
def test_fill_argv_sets_values_never_splitting_them(argv, param, expected):
    assert fill(argv, param) == expected


@pytest.mark.parametrize("argv, param, message", [
    (["p", "{param.a}"], {}, "param.a: absent"),
    (["p", "{param.a.b}"], {"a": 1}, "param.a.b: absent"),
    (["p", "{param.a}"], {"a": None}, "param.a: null"),
    (["p", "x{param.l}"], {"l": [1]}, "param.l: a list cannot be part of an argument"),
    (["p", "{param.l}"], {"l": [[1]]}, r"param.l\[0\]: a list cannot"),
])
def test_fill_argv_errors_name_the_key(argv, param, message):
    with pytest.raises(ParamError, match=message):
        fill(argv, param)


def test_fill_env_fills_templates():
    d = catalog({"e": cmd(env={"A": "{param.x}-{attempt}", "B": 1, "C": True})}).get("e")
    assert engines.fill_env(d, {"param": {"x": "v"}, "attempt": 2}) == {"A": "v-2", "B": "1", "C": "true"}


# -- progress rules -----------------------------------------------------------------------------------

def test_progress_line_rule():
    rule = engines.ProgressRule()
    assert rule.parse("progress 0.5\n") == (0.5, None)
    assert rule.parse("progress 1 all done\n") == (1.0, "all done")
    assert rule.parse("progress nan\n") is None
    assert rule.parse("progress half\n") is None
    assert rule.parse("step 50%\n") is None


def test_progress_regex_rule_with_scale_and_message():
    rule = {"regex": r"^(?P<message>step \d+) .*?(?P<progress>[\d.]+)%", "scale": 100}
    d = catalog({"e": cmd(progress=rule)}).get("e")
    assert d.progress.parse("step 3 done 42.5%\n") == (pytest.approx(0.425), "step 3")
    assert d.progress.parse("progress 0.2 classic\n") == (0.2, "classic")  # the line form always works
    assert d.progress.parse("nothing here\n") is None
    d2 = catalog({"e": cmd(progress={"regex": r"(?P<progress>\S+)%"})}).get("e")
    assert d2.progress.parse("x%\n") is None and not math.isnan(d2.progress.parse("5%")[0])


# -- a batch's sweep against its engine -----------------------------------------------------------------

def test_the_shipped_sweep_batches_fit_their_engines():
    c = engines.load(ROOT / "conf" / "engines.yaml")
    for path, n in (("examples/aurora/batch-sweep.yaml", 8), ("examples/montecarlo/batch-sweep.yaml", 20)):
        request = yaml.safe_load((ROOT / path).read_text())
        spec = {k: request[k] for k in ("sweep", "zip") if k in request}
        assert c.validate_sweep(request["engine"], request["param"], spec) == n


@pytest.mark.parametrize("param, spec, field, message", [
    ({"x": 1.0}, {"sweep": {"n": [1, 2, 20]}}, "sweep.n[2]", "value must be at most 10"),
    ({"x": 1.0}, {"zip": {"n": [1, 2], "name": ["a", 5]}}, "zip.name[1]", "must be str, not int"),
    ({"x": 1.0}, {"sweep": {"opts.k": ["a"]}}, "sweep.opts.k[0]", "must be int"),
    ({"x": 1.0}, {"sweep": {"nope": [1]}}, "sweep.nope", "names no field"),
    ({}, {"sweep": {"n": [1]}}, "param.x", "required"),
])
def test_sweep_values_are_checked_against_their_fields(param, spec, field, message):
    d = engines.EngineDef(name="e", kind="command", argv=("p",), params=SCHEMA)
    with pytest.raises(ParamError, match=message) as info:
        engines.validate_sweep(d, param, spec)
    assert info.value.field == field and str(info.value).startswith("engine 'e': ")


def test_a_sweep_may_supply_a_required_field_and_open_parts_are_not_checked():
    d = engines.EngineDef(name="e", kind="command", argv=("p",), params=SCHEMA)
    assert engines.validate_sweep(d, {}, {"sweep": {"x": [1, 2.5], "free.anything": [[1], "z"]}}) == 4
    with pytest.raises(engines.sweep.SweepError, match="engine 'e': expected a non-empty list"):
        engines.validate_sweep(d, {"x": 1}, {"sweep": {"n": []}})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)
param_like = st.dictionaries(st.sampled_from(["x", "n", "name", "on", "mode", "ids", "id", "opts", "free", "blob",
                                              "duration", "scenario", "zz"]), json_values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(param_like)
def test_any_json_param_is_accepted_or_refused_with_a_named_field(param):
    c = engines.load(ROOT / "conf" / "engines.yaml")
    for check in (lambda p: paramschema.validate(SCHEMA, p), lambda p: c.validate_param("aurora", p)):
        try:
            out = check(param)
        except ParamError as exc:
            assert exc.field.startswith("param")
        else:
            assert isinstance(out, dict) and set(param) <= set(out)


def test_deeply_nested_open_values_cost_no_recursion():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert paramschema.validate(SCHEMA, {"x": 1, "blob": deep, "free": {"a": deep}})["blob"] is deep
