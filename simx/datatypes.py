"""Named converters for settings (after Supervisor's datatypes.py): each takes the value as
written (YAML or an environment variable's text) and returns it typed, or raises ValueError
saying what it wanted; the loader (simx/config.py) puts the setting's name in front.  Junk is
refused, never coerced: ``"ture"`` is not false, a port is 1 to 65535."""
from __future__ import annotations

import math

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"expected true or false (or {'/'.join(TRUE[2:])}, {'/'.join(FALSE[2:])}), not {value!r}")


def _integer(value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if text.lstrip("+-").isdigit():
        return int(text)
    raise ValueError(f"expected an integer, not {value!r}")


def _number(value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, not {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number, not {value!r}")
    return out


def port(value) -> int:
    out = _integer(value)
    if not 1 <= out <= 65535:
        raise ValueError(f"a port is 1 to 65535, not {out}")
    return out


def non_negative_int(value) -> int:
    out = _integer(value)
    if out < 0:
        raise ValueError(f"must be 0 or more, not {out}")
    return out


def positive_int(value) -> int:
    out = _integer(value)
    if out < 1:
        raise ValueError(f"must be 1 or more, not {out}")
    return out


def non_negative_number(value) -> float:
    out = _number(value)
    if out < 0:
        raise ValueError(f"must be 0 or more, not {out:g}")
    return out


def positive_number(value) -> float:
    out = _number(value)
    if out <= 0:
        raise ValueError(f"must be more than 0, not {out:g}")
    return out


def optional(convert):
    """None (null, an empty string) stays None; anything else goes through `convert`."""
    def conv(value):
        return None if value is None or (isinstance(value, str) and not value.strip()) else convert(value)
    conv.__name__ = f"optional_{convert.__name__}"
    return conv


def string(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        raise ValueError(f"expected a string, not {type(value).__name__}")
    if value is None:
        raise ValueError("must not be empty")
    return str(value)


def string_list(value) -> tuple[str, ...]:
    """A list, or a comma-separated string (as an environment variable gives it)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, not {value!r}")
    return tuple(string(v) for v in value)


def one_of(*choices: str, fold=str.upper):
    def conv(value) -> str:
        text = fold(str(value).strip())
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return text
    conv.__name__ = "one_of"
    return conv


log_level = one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def for_default(default):
    """The converter a setting without one of its own gets, from its default's type."""
    if isinstance(default, bool):
        return boolean
    if isinstance(default, int):
        return non_negative_int
    if isinstance(default, float):
        return non_negative_number
    if isinstance(default, tuple):
        return string_list
    if default is None:
        return optional(non_negative_number)
    return string
