"""Times and durations as a user types them: ``90s``, ``30m``, ``1h``, ``7d``, ``2w``, or an
ISO 8601 time (``2030-01-01T12:00``, UTC unless it names a zone).

Errors: ``InvalidRequest`` (``CLI_DURATION_INVALID``, ``CLI_TIME_INVALID``) naming the option.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from segue.domain.errors import InvalidRequest

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str, option: str) -> timedelta:
    """``text`` (``30m``, ``1h``, ``7d``...) as a positive duration."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise InvalidRequest("CLI_DURATION_INVALID", f"{option} {text!r} is not a duration",
                             "give a number and a unit: 90s, 30m, 1h, 7d, 2w")
    return timedelta(seconds=int(match[1]) * UNITS[match[2]])


def parse_time(text: str, option: str, now: datetime) -> datetime:
    """``text`` as a time: a duration means that long before ``now``; else ISO 8601 (UTC
    unless it names a zone)."""
    if _DURATION.fullmatch(text.strip().lower()):
        return now - parse_duration(text, option)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise InvalidRequest("CLI_TIME_INVALID", f"{option} {text!r} is neither a time nor "
                             "a duration", "give e.g. 1h (an hour ago) or "
                             "2030-01-01T12:00 (UTC)") from err
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
