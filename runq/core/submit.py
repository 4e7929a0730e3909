"""What a StartBatch is checked against before runq takes it: the engines catalog and the sweep.

Pure.  ``check(catalog, msg)`` returns the batch's number of runs and its sweep spec (or None), or
raises BadRequest naming the engine or the field, so a batch that can never run is refused at
submit (400), never three failures later.  O(number of sweep values), never O(runs).

* engine: declared in the catalog (conf/engines.yaml, or SIMX_ENGINES), or a built-in.  ``command``
  (the raw engine) is taken unchecked: only a worker started with ``--allow-any-command`` runs it.
  A ``module:Class`` name is taken only when a declared ``kind: python`` engine has that class,
  or runq allows undeclared engines (``runq.allow_undeclared_engines``): otherwise anyone could
  invent names (batches no worker serves; a metric series per name).
* param: fits the engine's schema.  It is stored as given; defaults are filled in by the worker
  when it checks the param again, so the stored request stays the user's own.
* sweep/zip (runq/sweep.py): every value fits the field its key names; ``n_runs`` is derived,
  and a given ``n_runs`` must equal it.
"""
from __future__ import annotations

from simx import catalog as engines, limits, sweep
from .errors import BadRequest

MAX_RUNS = limits.MAX_RUNS
UNCHECKED = "command"   # the raw command engine: the program is in the param; the worker decides


def spec_of(msg: dict) -> dict | None:
    spec = {part: msg[part] for part in ("sweep", "zip") if msg.get(part) is not None}
    return spec or None


def declared_class(catalog, name: str):
    """The declared python engine whose class is `name` (module:Class), or None."""
    return next((d for d in catalog.engines.values() if d.kind == "python" and d.cls == name), None)


def check(catalog, msg: dict, allow_undeclared: bool = False) -> tuple[int, dict | None]:
    """(n_runs, sweep spec or None) of a StartBatch, or BadRequest naming what is wrong."""
    name, param, spec = msg["engine"], msg.get("param") or {}, spec_of(msg)
    if not name:
        raise BadRequest("engine must not be empty")
    definition = None
    if catalog is not None and ":" in name:
        definition = declared_class(catalog, name)
        if definition is None and not allow_undeclared:
            raise BadRequest(f"engine {name[:200]!r}: no engine of conf/engines.yaml has this class; declare it "
                             f"(kind: python, class: {name[:200]}) and name the batch's engine by its name, or let "
                             "runq take undeclared engines (runq.allow_undeclared_engines: true)")
    elif catalog is not None and name != UNCHECKED:
        try:
            definition = catalog.get(name)
        except engines.UnknownEngine as exc:
            raise BadRequest(str(exc)) from None
    try:
        if definition is not None:
            n = engines.validate_sweep(definition, param, spec) if spec else None
            if spec is None:
                engines.validate_param(definition, param)
        else:
            n = sweep.validate(spec, param) if spec else None
        n = sweep.check_n_runs(spec, msg.get("n_runs")) if spec else msg.get("n_runs")
    except (engines.ParamError, sweep.SweepError) as exc:
        raise BadRequest(str(exc)) from None
    if n is None:
        raise BadRequest("n_runs is required (or a sweep or zip, from which it is derived)")
    if not 1 <= n <= MAX_RUNS:
        raise BadRequest(f"n_runs must be an integer from 1 to {MAX_RUNS}, not {n}")
    return n, spec
