"""Parameter sweeps: a batch's ``sweep:`` and ``zip:`` turned into the param of each run.  Pure.

    sweep: {mode: [simulation, prediction], control.gain: [0.5, 1, 2]}   # product, last key fastest
    zip:   {seed: [1, 2, 3], label: [a, b, c]}                          # taken together: one more factor

The factors are the sweep keys in the order written, then the zip (when given) as the last and
fastest factor.  Run ``index`` (0 <= index < count) gets the batch param with one value of each
factor set; ``param_for`` computes it from the index alone, in O(number of keys), so a batch of a
million runs stores one spec, never a million params.  A dotted key sets a nested value
(``control.gain`` sets param["control"]["gain"], creating the mapping when absent).
"""
from __future__ import annotations

import copy

MAX_KEYS = 64
MAX_VALUES = 100_000  # values listed under one key
MAX_RUNS = 2**31 - 1


class SweepError(ValueError):
    """A sweep that cannot be used; ``key`` names the offending part (``sweep.a.b``, ``zip``, ``n_runs``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def _factors(spec) -> list[tuple[tuple[str, ...], tuple[list, ...]]]:
    """[(keys, their lists)] in product order: one factor per sweep key, then the zip.  Nothing is
    copied, so this costs O(number of keys)."""
    spec = spec or {}
    factors = [((key,), (values,)) for key, values in (spec.get("sweep") or {}).items()]
    zipped = spec.get("zip") or {}
    if zipped:
        factors.append((tuple(zipped), tuple(zipped.values())))
    return factors


def validate(spec, base_param=None, max_runs: int = MAX_RUNS) -> int:
    """Check a ``{sweep: .., zip: ..}`` spec (either may be absent); return its number of runs.
    With ``base_param``, a dotted key must not go through a value that is not a mapping."""
    if spec is None:
        return 1
    if not isinstance(spec, dict) or set(spec) - {"sweep", "zip"}:
        raise SweepError("sweep", "expected a mapping with keys sweep and/or zip")
    seen: list[str] = []
    for part in ("sweep", "zip"):
        table = spec.get(part)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise SweepError(part, "expected a mapping of param names to lists of values")
        for key, values in table.items():
            where = f"{part}.{key}"
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise SweepError(part, f"key {key!r}: a param name, dotted for nested keys (a.b)")
            if not isinstance(values, list) or not values:
                raise SweepError(where, "expected a non-empty list of values")
            if len(values) > MAX_VALUES:
                raise SweepError(where, f"more than {MAX_VALUES} values")
            for other in seen:
                if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                    raise SweepError(where, f"overlaps {other!r}: each param is set by one key")
            seen.append(key)
            if base_param is not None:
                _check_path(base_param, key, where)
        if len(seen) > MAX_KEYS:
            raise SweepError(part, f"more than {MAX_KEYS} keys")
        if part == "zip" and table:
            lengths = {key: len(v) for key, v in table.items()}
            if len(set(lengths.values())) > 1:
                raise SweepError("zip", "lists of different lengths: "
                                 + ", ".join(f"{k} has {n}" for k, n in lengths.items()))
    n = count(spec)
    if n > max_runs:
        raise SweepError("sweep", f"{n} runs, more than the {max_runs} allowed")
    return n


def _check_path(param, key: str, where: str) -> None:
    node = param
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise SweepError(where, f"param.{'.'.join(parts[:i])} is not a mapping")
        node = node.get(part)
        if node is None:
            return  # created when the run's param is built
    if not isinstance(node, dict):
        raise SweepError(where, f"param.{'.'.join(parts[:-1])} is not a mapping")


def count(spec) -> int:
    """The number of runs a (valid) spec makes: the product of its factors' lengths (1 for none)."""
    n = 1
    for _, lists in _factors(spec):
        n *= len(lists[0])
    return n


def check_n_runs(spec, n_runs) -> int:
    """The derived number of runs; a given ``n_runs`` must equal it."""
    n = count(spec)
    if n_runs is not None and n_runs != n:
        raise SweepError("n_runs", f"{n_runs} given, but the sweep makes {n} runs (leave n_runs out)")
    return n


def values_for(spec, index: int) -> dict:
    """{dotted key: value} of run ``index``: mixed-radix digits, last factor fastest."""
    factors = _factors(spec)
    n = count(spec)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise SweepError("index", f"{index!r} is not in 0..{n - 1}")
    digits = []
    for keys, lists in reversed(factors):
        index, digit = divmod(index, len(lists[0]))
        digits.append((keys, lists, digit))
    return {key: values[digit] for keys, lists, digit in reversed(digits) for key, values in zip(keys, lists)}


def param_for(base_param, spec, index: int) -> dict:
    """The param of run ``index``: ``base_param`` (unchanged) with this run's values set.  Only the
    mappings on the way to a set key are copied; the values themselves are copied."""
    param = dict(base_param or {})
    for key, value in values_for(spec, index).items():
        node = param
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is not None and not isinstance(child, dict):
                raise SweepError(f"sweep.{key}", f"param.{part} is not a mapping")
            node[part] = child = dict(child or {})
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return param
