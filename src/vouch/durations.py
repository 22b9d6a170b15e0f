"""Durations as people write them in config and on the command line: ``90d``, ``20y``, ``12h``."""

from __future__ import annotations

import datetime as dt
import re

from vouch.errors import BadInput

_UNITS = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    # A year is 365 days: lifetimes are counted in days by the CA/B Forum and by auditors.
    "y": 365 * 86400,
}
_PART = re.compile(r"(\d+)([smhdwy])")
# Longer than any certificate, token or window vouch deals in, and far from datetime's end
# (year 9999): a date computed from a duration never overflows.
MAX_DURATION = dt.timedelta(days=100 * 365)


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``1y30d``, ``90d``, ``12h`` or ``45m`` into a timedelta; refuse anything else."""
    cleaned = text.strip().lower()
    if not cleaned:
        raise BadInput("empty duration", hint="write e.g. 90d, 12h or 5y")
    pos = 0
    seconds = 0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or seconds <= 0:
        raise BadInput(f"not a duration: {text[:40]!r}", hint="write e.g. 90d, 12h, 5y or 1y30d")
    if seconds > MAX_DURATION.total_seconds():
        raise BadInput(f"the duration {text[:40]!r} is longer than 100 years")
    return dt.timedelta(seconds=seconds)


def format_duration(value: dt.timedelta) -> str:
    """The shortest exact spelling of a duration, in days where it is whole days."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
