"""Field kinds: what a message field (or a stored record's requested field) may hold.

A ``Kind`` names JSON type(s), bounds, and whether null is allowed; each is declared
once below, so a bound lives in one place (the numbers come from ``simx.limits``).
``Kind.problem(value)`` says why a value does not fit, as a phrase that follows the
field's name.  ``Kind.expr(v)`` is a Python expression, over a variable named ``v``,
that is True only of values ``problem`` accepts: the common case (a plain int in
range, an ASCII string, a flat param) in one expression.  protocol.py compiles each
message's expressions into one quick check; anything the quick check doubts goes
through ``problem``, which accepts or names the problem.
"""
from __future__ import annotations

import dataclasses
import math

from . import limits

INT64 = limits.INT64
MAX_DEPTH = limits.MAX_DEPTH


@dataclasses.dataclass(frozen=True)
class Kind:
    """``lo <= x < hi`` for integers and for a string's length, ``lo <= x <= hi`` for numbers
    (always finite)."""
    name: str
    types: tuple
    lo: float | None = None
    hi: float | None = None
    nullable: bool = False

    def __post_init__(self):
        object.__setattr__(self, "fits", eval(f"lambda v: {self.expr('v')}", dict(NAMES)))

    def expr(self, v: str) -> str:
        """A sufficient test of ``v`` (never True of a value ``problem`` refuses), as source."""
        lo, hi, types = self.lo, self.hi, self.types
        if types == (int,) and lo is not None:
            test = f"type({v}) is int and {lo!r} <= {v} < {hi!r}"
        elif types == (str,):
            length = f" and len({v}) < {hi!r}" if hi is not None else ""
            test = f'type({v}) is str{length} and {v}.isascii() and "\\0" not in {v}'
        elif types == (bool,):
            test = f"type({v}) is bool"
        elif types == (int, float) and lo is not None:   # inclusive; NaN and inf fail it
            test = f"(type({v}) is float or type({v}) is int) and {lo!r} <= {v} <= {hi!r}"
        elif types in ((list,), (dict,)):
            test = f"type({v}) is {types[0].__name__} and _plain({v})"
        elif dict in types:   # ANY: an engine's result, most often a short ASCII string or a flat mapping
            test = f"((type({v}) is str and {v}.isascii()) or _plain({v}))"
        else:
            return "False"
        return f"({v} is None or {test})" if self.nullable else f"({test})"

    def problem(self, value) -> str | None:
        """Why ``value`` does not fit (a phrase following the field's name), or None."""
        if value is None:
            return None if self.nullable else "must not be null"
        # bool is an int in Python; never accept it as a number
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            return f"has the wrong type (expected {self.name})"
        if dict in self.types or list in self.types:
            return nested_problem(value)
        if isinstance(value, str):
            if self.hi is not None and len(value) >= self.hi:
                return f"must be at most {self.hi - 1} characters long"
            return string_problem(value)
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.lo is not None and not isinstance(value, bool):
            if float in self.types:   # a number: inclusive range
                if not self.lo <= value <= self.hi:
                    return f"must be from {self.lo:g} to {self.hi:g}"
            elif not self.lo <= value < self.hi:
                return f"must be an integer from {self.lo} to {self.hi - 1}"
        return None

    def null(self) -> "Kind":
        return dataclasses.replace(self, nullable=True)


@dataclasses.dataclass(frozen=True)
class Opt:
    """A field that may be absent (in a declaration: ``field=opt(KIND)``)."""
    kind: Kind


def opt(kind: Kind) -> Opt:
    return Opt(kind)


def _plain(value, depth: int = 0) -> bool:
    """True if ``nested_problem`` accepts ``value`` at a glance: ASCII keys and strings, 64-bit
    integers, finite floats, booleans, null, in containers at most four deep.  Scalars inside a
    container are checked in the loop (a param is most often a flat mapping of them)."""
    kind = type(value)
    if kind is dict:
        for key in value:
            if type(key) is not str or not key.isascii():
                return False
        items = value.values()
    elif kind is list:
        items = value
    else:
        return _plain_scalar(value, kind)
    if depth >= 4:
        return False
    for sub in items:
        kind = type(sub)
        if kind is str:
            if not sub.isascii():
                return False
        elif kind is int:
            if not -INT64 <= sub < INT64:
                return False
        elif kind is float:
            if sub - sub != 0.0:   # inf - inf and NaN - NaN are NaN
                return False
        elif sub is not None and kind is not bool and not _plain(sub, depth + 1):
            return False
    return True


def _plain_scalar(value, kind) -> bool:
    if kind is str:
        return value.isascii()
    if kind is int:
        return -INT64 <= value < INT64
    if kind is float:
        return value - value == 0.0
    return value is None or kind is bool


# What Kind.expr's source may name.
NAMES = {"_plain": _plain}

# Field kinds, each declared once.
STR = Kind("a string", (str,))
ID = Kind("an id", (int,), 0, INT64)                      # database keys: batches, workers
COUNT = Kind("a count", (int,), 0, INT64)                 # offsets, limits, max_requeues
INDEX = Kind("a run index", (int,), 0, INT64)             # batch_index < n_runs (checked against the batch)
ATTEMPT = Kind("an attempt number", (int,), 0, limits.MAX_COUNT + 1)
N_RUNS = Kind("a number of runs", (int,), 0, limits.MAX_COUNT + 1)     # runq narrows to limits.MAX_RUNS
PID = Kind("a process id", (int,), 0, limits.MAX_COUNT + 1)
CODE = Kind("a status code", (int,), 0, 1000)
NUM = Kind("a finite number", (int, float), -1e300, 1e300)
TRAIT = Kind("a finite number", (int, float), -limits.MAX_TRAIT, limits.MAX_TRAIT)  # cost, speed, priority
SECONDS = Kind("a number of seconds", (int, float), 0, 1e12)
BOOL = Kind("true or false", (bool,))
MAP = Kind("an object", (dict,))
ANY = Kind("a JSON value", (str, int, float, bool, dict, list), nullable=True)
TEXT = Kind(f"a text of at most {limits.MAX_DESCRIPTION_CHARS} characters", (str,),
            0, limits.MAX_DESCRIPTION_CHARS + 1)          # free text a person wrote (a batch's description)
OPT_STR, OPT_ID, OPT_INDEX, OPT_ATTEMPT, OPT_COUNT = STR.null(), ID.null(), INDEX.null(), ATTEMPT.null(), COUNT.null()
OPT_CODE, OPT_SECONDS, OPT_MAP, OPT_TEXT = CODE.null(), SECONDS.null(), MAP.null(), TEXT.null()
# Generic kinds for fields with no tighter natural bound.
INT = Kind("an integer", (int,), -INT64, INT64)
LIST = Kind("an array", (list,))
OPT_INT, OPT_NUM = INT.null(), NUM.null()
PREFETCH = Kind("a number of runs to hold", (int,), 1, limits.MAX_PREFETCH + 1)   # worker --prefetch N


def string_problem(text: str) -> str | None:
    """Strings are valid Unicode (no lone surrogate: a JSON "\\ud800" decodes to one) without NUL."""
    if "\0" in text:
        return "must not contain NUL characters"
    if not text.isascii() and lone_surrogate(text):
        return "must be valid Unicode (it holds a lone surrogate)"
    return None


def nested_problem(value, max_depth: int = MAX_DEPTH) -> str | None:
    """Inside param, data and replies: depth bounded, numbers finite and 64-bit, strings and keys valid Unicode.

    NUL is allowed here (engine output may hold it; JSON and SQLite carry it).  Iterative, so a deep
    value cannot exhaust the stack.
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= max_depth:
                return f"nests deeper than {max_depth} levels"
            for key, sub in item.items():
                if not isinstance(key, str):
                    return "has a key that is not a string"
                if not key.isascii() and lone_surrogate(key):
                    return "holds a lone surrogate"
                stack.append((sub, depth + 1))
        elif isinstance(item, (list, tuple)):   # a tuple: only ever on the sending side, encoded as a list
            if depth >= max_depth:
                return f"nests deeper than {max_depth} levels"
            stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            if not item.isascii() and lone_surrogate(item):
                return "holds a lone surrogate"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "holds a number that is not finite"
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -INT64 <= item < INT64:
                return "holds an integer beyond 64 bits"
        elif item is not None and not isinstance(item, bool):
            return f"holds a {type(item).__name__}"
    return None


def lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
