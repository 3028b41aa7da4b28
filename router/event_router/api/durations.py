"""Durations in router.toml: a number of seconds, or a string like "500ms", "30s", "5m", "2h", "7d"."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: ASCII digits and blanks only: the schema's copy of this pattern is run by jsonschema_rs, whose `\s` and `\d`
#: are not Python's (a BOM is `\s` to it); both engines must accept exactly the same strings
_PATTERN = re.compile(r"^[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*(ms|s|m|h|d)[ \t]*$")

#: JSON Schema fragment for a duration value
DURATION_SCHEMA = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": _PATTERN.pattern},
    ]
}


def parse_duration(value: float | int | str) -> float:
    """Seconds as a float. Raises ValueError with the accepted forms when `value` is none of them."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use seconds or a string like '30s', '5m')")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return float(value)
    match = _PATTERN.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (use seconds or a string like '500ms', '30s', '5m', '2h', '7d')")
    return float(match.group(1)) * _UNITS[match.group(2)]
