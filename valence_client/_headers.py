"""Reading the server's pacing hints: `Retry-After` and `X-RateLimit-*`.

Neither provider documents these headers, so every common form is accepted: `Retry-After` as
delta seconds or an HTTP date; `X-RateLimit-Reset` as delta seconds or a Unix timestamp.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping

# A reset value above this is a Unix timestamp, below it a number of seconds (2001-09-09).
_EPOCH_THRESHOLD = 1_000_000_000.0


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive lookup that also works on plain dicts."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def seconds_until(value: str | float | int | None, now_wall: float) -> float | None:
    """Seconds to wait for a reset hint: delta seconds, Unix timestamp or HTTP date; None if
    unreadable. Never negative."""
    if value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            return max(0.0, when.timestamp() - now_wall)
    if number > _EPOCH_THRESHOLD:
        number -= now_wall
    return max(0.0, number)


def retry_after(
    headers: Mapping[str, str] | None, now_wall: float, *, rate_limited: bool = False
) -> float | None:
    """The server's hint for when to try again: `Retry-After` first, else `X-RateLimit-Reset`
    when the answer was a 429 or says nothing is left."""
    hint = seconds_until(header(headers, "Retry-After"), now_wall)
    if hint is not None:
        return hint
    remaining = header(headers, "X-RateLimit-Remaining")
    if rate_limited or (remaining is not None and remaining.strip() in {"0", "0.0"}):
        return seconds_until(header(headers, "X-RateLimit-Reset"), now_wall)
    return None
