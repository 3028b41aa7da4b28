"""Times as operators write them: `event-router replay --since/--until`, and the console's time filters."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

__all__ = ["TIME_FORMS", "parse_when"]

#: what a time argument may be, for the error that names them
TIME_FORMS = (
    "an ISO 8601 time (2026-11-26T10:00:00Z, 2026-11-26T11:00+01:00, 2026-11-26 10:00 in local time, 2026-11-26), "
    "how long ago (90s, 30m, 2h, 1d, 1w, 1h30m, '2 hours ago'), now, today, yesterday, or @UNIX_SECONDS"
)
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
}
_UNIT = "|".join(sorted((f"{u}s?" if len(u) > 1 else u for u in _UNIT_SECONDS), key=len, reverse=True))
_PART = re.compile(rf"(\d+(?:\.\d+)?)\s*({_UNIT})", re.IGNORECASE)
_AGO = re.compile(rf"^-?\s*((?:\d+(?:\.\d+)?\s*(?:{_UNIT})\s*,?\s*)+)(?:ago)?$", re.IGNORECASE)


def parse_when(text: str, now: float) -> float:
    """A time argument as Unix time; `now` anchors the relative forms. ValueError naming the accepted forms.

    Generous on purpose: an ISO 8601 time or date (with `Z` or an offset, else local time as `date` reads
    it), how long ago in the config's duration units and their words (`2h`, `1h30m`, `2 hours ago`, `-1d`),
    `now`, `today` and `yesterday` (local midnight), `@1764150000` (Unix seconds). A bare number is refused:
    seconds ago and a Unix time are both plausible.
    """
    value = text.strip()
    word = value.lower()
    if word == "now":
        return now
    if word in ("today", "yesterday"):
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - timedelta(days=1 if word == "yesterday" else 0)).timestamp()
    if value.startswith("@"):
        try:
            return float(value[1:])
        except ValueError:
            raise ValueError(f"{text!r} is not a time: after @ come Unix seconds, e.g. @1764150000") from None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        raise ValueError(f"{text!r} is ambiguous: write {value}s for that long ago, or @{value} for a Unix time")
    match = _AGO.match(word)
    if match:
        seconds = sum(float(n) * _UNIT_SECONDS[_unit(u)] for n, u in _PART.findall(match.group(1)))
        return now - seconds
    try:
        # Python 3.11 reads any ISO 8601 form but the week dates; `z` as written by some tools too
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "zZ" and value else value)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {TIME_FORMS}") from None
    return moment.timestamp()  # a naive time is local time


def _unit(text: str) -> str:
    unit = text.lower()
    return unit if unit in _UNIT_SECONDS else unit[:-1]  # the plural
