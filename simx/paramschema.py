"""Parameter schemas: the small declarative form an engine's ``params:`` is written in, and checking
a run's param against it.  Pure: no I/O, no imports beyond the standard library.

A field is a type name (``duration: float``) or a mapping::

    duration: {type: float, required: true, min: 0, max: 86400, description: seconds}
    mode:     {type: enum, values: [simulation, prediction], default: simulation}
    scenario: {type: [int, str], max: 65536}          # one of several types, tried in order
    seeds:    {type: list, items: int, max: 100}      # min/max: the length of a str or list
    demand:   {type: map, fields: {rate: float}, extra: false}

Types: int (signed 64-bit), float (finite; an int is accepted and becomes a float), str, bool, list, map, enum, any.
``required`` (default false), ``default`` (filled in when the field is absent; checked against the
field when the schema is compiled), ``min``/``max`` (numbers: the value; str and list: the length),
``items`` (list), ``fields`` and ``extra`` (map: the declared keys, and whether others are allowed;
a map without ``fields`` takes any keys), ``values`` (enum), ``description`` (for people).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

TYPES = ("int", "float", "str", "bool", "list", "map", "enum", "any")
KEYS = {"type", "required", "default", "min", "max", "items", "fields", "extra", "values", "description"}
INT_LIMIT = 2**63  # an int fits a signed 64-bit integer, as programs in any language read it
MAX_DEPTH = 16  # nesting of a schema; a param is only descended where its schema goes
_ABSENT = object()


class SchemaError(ValueError):
    """A schema that cannot be used; the message names where it is wrong."""


class ParamError(ValueError):
    """A param that does not fit its schema; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str, prefix: str = ""):
        super().__init__(f"{prefix}{field}: {message}")
        self.field = field
        self.reason = message


@dataclasses.dataclass(frozen=True)
class Field:
    types: tuple[str, ...]
    required: bool = False
    default: Any = _ABSENT
    min: float | None = None
    max: float | None = None
    items: "Field | None" = None
    fields: "tuple[tuple[str, Field], ...] | None" = None
    extra: bool = False
    values: tuple = ()
    description: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not _ABSENT

    def field(self, name: str) -> "Field | None":
        return dict(self.fields or ()).get(name)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SchemaError(f"{where}: must be a finite number, not {value!r}")
    return value


def compile_field(spec, where: str, depth: int = 0) -> Field:
    """A Field from its YAML form; SchemaError names ``where`` (e.g. ``engine 'aurora': params.mode``)."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested more than {MAX_DEPTH} levels")
    if isinstance(spec, (str, list)):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise SchemaError(f"{where}: expected a type name or a mapping, not {spec!r}")
    unknown = sorted(set(map(str, spec)) - KEYS)
    if unknown:
        raise SchemaError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(KEYS))})")
    types = spec.get("type")
    types = tuple(types) if isinstance(types, list) else (types,)
    for t in types:
        if t not in TYPES:
            raise SchemaError(f"{where}.type: unknown type {t!r} (types: {', '.join(TYPES)})")
    if not types:
        raise SchemaError(f"{where}.type: an empty list of types")
    kw: dict[str, Any] = {"types": types}
    for key in ("required", "extra"):
        if key in spec:
            if not isinstance(spec[key], bool):
                raise SchemaError(f"{where}.{key}: must be true or false")
            kw[key] = spec[key]
    for key in ("min", "max"):
        if spec.get(key) is not None:
            kw[key] = _number(spec[key], f"{where}.{key}")
    if "min" in kw and "max" in kw and kw["min"] > kw["max"]:
        raise SchemaError(f"{where}: min {kw['min']} is above max {kw['max']}")
    if "description" in spec:
        kw["description"] = str(spec["description"])
    if "items" in spec:
        if "list" not in types:
            raise SchemaError(f"{where}.items: only for type list")
        kw["items"] = compile_field(spec["items"], f"{where}.items", depth + 1)
    if "fields" in spec:
        if "map" not in types:
            raise SchemaError(f"{where}.fields: only for type map")
        kw["fields"] = compile_fields(spec["fields"], where, depth + 1)
    if "enum" in types:
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{where}.values: type enum needs a non-empty list of values")
        for v in values:
            if not (v is None or isinstance(v, (str, int, float, bool))):
                raise SchemaError(f"{where}.values: {v!r} is not a plain value")
        kw["values"] = tuple(values)
    elif "values" in spec:
        raise SchemaError(f"{where}.values: only for type enum")
    if "default" in spec:
        kw["default"] = spec["default"]
    field = Field(**kw)
    if field.has_default:
        if field.required:
            raise SchemaError(f"{where}: a required field has no use for a default")
        try:
            validate(field, field.default, "default")
        except ParamError as exc:
            raise SchemaError(f"{where}.{exc}") from None
    return field


def compile_fields(spec, where: str, depth: int = 0) -> tuple[tuple[str, Field], ...]:
    if not isinstance(spec, dict):
        raise SchemaError(f"{where}.fields: expected a mapping of field names")
    out = []
    for name, sub in spec.items():
        if not isinstance(name, str) or not name or "." in name:
            raise SchemaError(f"{where}: field name {name!r} must be a non-empty string without dots")
        out.append((name, compile_field(sub, f"{where}.{name}", depth)))
    return tuple(out)


def compile_params(spec, where: str, extra: bool = False) -> Field:
    """The schema of a whole param: a map with the given fields (``params:`` of an engine)."""
    return Field(types=("map",), fields=compile_fields(spec, where), extra=extra)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _fits(t: str, value) -> bool:
    kind = _kind(value)
    if t == "float":
        return kind == "float" and math.isfinite(value) or kind == "int" and -INT_LIMIT <= value < INT_LIMIT
    if t == "int":
        return kind == "int" and -INT_LIMIT <= value < INT_LIMIT
    return t in ("any", "enum") or t == kind


def _bounds(field: Field, size, path: str, what: str) -> None:
    if field.min is not None and size < field.min:
        raise ParamError(path, f"{what} must be at least {field.min:g}, got {size!r}")
    if field.max is not None and size > field.max:
        raise ParamError(path, f"{what} must be at most {field.max:g}, got {size!r}")


def validate(field: Field, value, path: str = "param"):
    """``value`` checked against ``field``, with defaults filled in.  ``value`` is not changed; the
    mappings and lists the schema declares are new objects, parts it leaves open (``any``, extra
    keys) are shared with ``value``.  Raises ParamError naming the path of the first offending value."""
    for t in field.types:
        if _fits(t, value):
            return _check(field, t, value, path)
    kind = _kind(value)
    if kind == "int" and any(t in ("int", "float") for t in field.types):
        raise ParamError(path, "an integer beyond the signed 64-bit range")
    raise ParamError(path, f"must be {' or '.join(field.types)}, not {kind}")


def _check(field: Field, t: str, value, path: str):
    if t == "enum":
        if not any(type(v) is type(value) and v == value for v in field.values):
            raise ParamError(path, f"must be one of {', '.join(map(repr, field.values))}, got {value!r}")
        return value
    if t in ("int", "float"):
        _bounds(field, value, path, "value")
        return float(value) if t == "float" else value
    if t == "str":
        if "\x00" in value:
            raise ParamError(path, "must not contain NUL")
        _bounds(field, len(value), path, "length")
        return value
    if t == "list":
        _bounds(field, len(value), path, "length")
        if field.items is None:
            return list(value)
        return [validate(field.items, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t == "map":
        return _check_map(field, value, path)
    return value  # bool, any: never copied, so no depth of nesting costs recursion


def _check_map(field: Field, value: dict, path: str) -> dict:
    for key in value:
        if not isinstance(key, str):
            raise ParamError(path, f"key {key!r} is not a string")
    if field.fields is None:
        return dict(value)
    declared = dict(field.fields)
    if not field.extra:
        unknown = [k for k in value if k not in declared]
        if unknown:
            raise ParamError(f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(declared) or 'none'})")
    out = {k: v for k, v in value.items() if k not in declared}
    for name, sub in field.fields:
        given = value.get(name, _ABSENT)
        if given is _ABSENT:
            if sub.required:
                raise ParamError(f"{path}.{name}", "required")
            if sub.has_default:
                out[name] = copy.deepcopy(sub.default)
            continue
        out[name] = validate(sub, given, f"{path}.{name}")
    return out


def field_at(field: Field, dotted: str) -> "Field | None | bool":
    """The Field a dotted path (``a.b``) names below ``field``: a Field, True when the path goes
    into a part the schema leaves open (an extra key, an ``any``), or None when it cannot exist."""
    for part in dotted.split("."):
        if "map" not in field.types and "any" not in field.types:
            return None
        if field.fields is None or "any" in field.types:
            return True
        sub = field.field(part)
        if sub is None:
            return True if field.extra else None
        field = sub
    return field
