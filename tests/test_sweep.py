"""runq/sweep.py: a batch's sweep/zip -> each run's param, computed from the run's index."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simx import sweep
from simx.sweep import SweepError


@pytest.mark.parametrize("spec, n", [
    (None, 1),
    ({}, 1),
    ({"sweep": {"a": [1, 2, 3]}}, 3),
    ({"sweep": {"a": [1, 2], "b.c": ["x", "y", "z"]}}, 6),
    ({"zip": {"s": [1, 2, 3, 4], "t": [5, 6, 7, 8]}}, 4),
    ({"sweep": {"a": [1, 2]}, "zip": {"s": [1, 2, 3], "t": [4, 5, 6]}}, 6),
])
def test_count(spec, n):
    assert sweep.validate(spec) == n == sweep.count(spec)


def test_product_order_is_the_written_order_with_the_last_key_fastest_then_the_zip():
    spec = {"sweep": {"b": [1, 2], "a": ["x", "y"]}, "zip": {"s": [10, 20], "t": [30, 40]}}
    got = [sweep.values_for(spec, i) for i in range(sweep.count(spec))]
    assert got[:3] == [{"b": 1, "a": "x", "s": 10, "t": 30}, {"b": 1, "a": "x", "s": 20, "t": 40},
                       {"b": 1, "a": "y", "s": 10, "t": 30}]
    assert got[-1] == {"b": 2, "a": "y", "s": 20, "t": 40}
    assert list(got[0]) == ["b", "a", "s", "t"]


def test_param_for_sets_nested_keys_and_leaves_the_base_alone():
    base = {"mode": "simulation", "ctl": {"gain": 1, "on": True}, "keep": [1, 2]}
    spec = {"sweep": {"ctl.gain": [0.5, 2], "new.deep.key": ["v"]}}
    p = sweep.param_for(base, spec, 1)
    assert p == {"mode": "simulation", "ctl": {"gain": 2, "on": True}, "keep": [1, 2], "new": {"deep": {"key": "v"}}}
    assert base == {"mode": "simulation", "ctl": {"gain": 1, "on": True}, "keep": [1, 2]}
    p["new"]["deep"]["key"] = "changed"
    assert spec["sweep"]["new.deep.key"] == ["v"]


def test_values_are_copied_so_runs_do_not_share_them():
    spec = {"sweep": {"a": [{"x": [1]}]}}
    p = sweep.param_for({}, spec, 0)
    p["a"]["x"].append(2)
    assert sweep.param_for({}, spec, 0) == {"a": {"x": [1]}}


@pytest.mark.parametrize("spec, base, key, message", [
    ([1], None, "sweep", "expected a mapping with keys sweep and/or zip"),
    ({"sweeps": {}}, None, "sweep", "expected a mapping"),
    ({"sweep": [1, 2]}, None, "sweep", "expected a mapping of param names"),
    ({"sweep": {"a": []}}, None, "sweep.a", "non-empty list"),
    ({"sweep": {"a": 3}}, None, "sweep.a", "non-empty list"),
    ({"sweep": {"a..b": [1]}}, None, "sweep", "a param name, dotted"),
    ({"sweep": {"": [1]}}, None, "sweep", "a param name"),
    ({"sweep": {1: [1]}}, None, "sweep", "a param name"),
    ({"sweep": {"a": [1], "a.b": [2]}}, None, "sweep.a.b", "overlaps 'a'"),
    ({"sweep": {"a": [1]}, "zip": {"a": [2]}}, None, "zip.a", "overlaps 'a'"),
    ({"zip": {"s": [1, 2], "t": [1]}}, None, "zip", "s has 2, t has 1"),
    ({"sweep": {"a.b": [1]}}, {"a": 5}, "sweep.a.b", "param.a is not a mapping"),
    ({"sweep": {"a.b.c": [1]}}, {"a": {"b": "x"}}, "sweep.a.b.c", "param.a.b is not a mapping"),
    ({"sweep": {"a": list(range(1000)), "b": list(range(1000))}}, None, "sweep", "more than the 10000 allowed"),
])
def test_invalid_specs_name_the_key(spec, base, key, message):
    with pytest.raises(SweepError, match=message) as info:
        sweep.validate(spec, base, max_runs=10_000)
    assert info.value.key == key


def test_n_runs_given_must_equal_the_derived_number():
    spec = {"sweep": {"a": [1, 2, 3]}}
    assert sweep.check_n_runs(spec, None) == 3 == sweep.check_n_runs(spec, 3)
    with pytest.raises(SweepError, match="n_runs: 4 given, but the sweep makes 3 runs"):
        sweep.check_n_runs(spec, 4)


@pytest.mark.parametrize("index", [-1, 6, True, "1", 1.0])
def test_index_out_of_range_is_refused(index):
    with pytest.raises(SweepError, match="index"):
        sweep.param_for({}, {"sweep": {"a": [1, 2], "b": [1, 2, 3]}}, index)


def test_a_huge_sweep_is_computed_from_the_index_without_materializing():
    spec = {"sweep": {f"k{i}": list(range(10)) for i in range(12)}}  # 10**12 runs
    assert sweep.validate(spec, max_runs=10**12) == 10**12
    p = sweep.param_for({}, spec, 10**12 - 1)
    assert p == {f"k{i}": 9 for i in range(12)}
    assert sweep.param_for({}, spec, 123456789012) == {f"k{i}": int(d) for i, d in enumerate("123456789012")}


scalars = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.none())
names = st.sampled_from(["a", "b", "c.d", "c.e", "f.g.h", "i"])


@st.composite
def specs(draw):
    keys = draw(st.lists(names, min_size=0, max_size=4, unique=True))
    keys = [k for k in keys if not any(o != k and (o.startswith(k + ".") or k.startswith(o + ".")) for o in keys)]
    n_zip = draw(st.integers(0, min(2, len(keys))))
    sweep_keys, zip_keys = keys[n_zip:], keys[:n_zip]
    spec = {"sweep": {k: draw(st.lists(scalars, min_size=1, max_size=4)) for k in sweep_keys}}
    if zip_keys:
        length = draw(st.integers(1, 3))
        spec["zip"] = {k: draw(st.lists(scalars, min_size=length, max_size=length)) for k in zip_keys}
    return spec


def expected_product(spec):
    factors = [[{k: v} for v in values] for k, values in spec.get("sweep", {}).items()]
    if spec.get("zip"):
        z = spec["zip"]
        factors.append([dict(zip(z, vals)) for vals in zip(*z.values())])
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*factors)]


@settings(max_examples=300, deadline=None)
@given(specs())
def test_index_to_param_is_a_bijection_onto_the_product(spec):
    n = sweep.validate(spec, {"keep": 1})
    runs = [sweep.values_for(spec, i) for i in range(n)]
    assert runs == expected_product(spec)  # the product, in order: so every combination exactly once
    for i in range(n):
        param = sweep.param_for({"keep": 1}, spec, i)
        assert param["keep"] == 1
        for key, value in runs[i].items():
            node = param
            for part in key.split("."):
                node = node[part]
            assert node == value
