"""Due times of a policy: a cron expression in a time zone, or a fixed interval.

Every time here is naive UTC, the format of every timestamp column; a cron
expression is evaluated on the wall clock of the policy's time zone (so
``0 2 * * *`` in Europe/Berlin is 02:00 Berlin time, summer and winter).
An interval schedule's due times are ``anchor + k * interval`` (the anchor
is the policy's creation, or the time its schedule last changed), so they do
not drift when a run is late.
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo
from zoneinfo import ZoneInfoNotFoundError

from croniter import croniter

from orchestrator import errors

UTC = dt.UTC
# Due times counted one by one (coalesced runs) stop here: a policy late by more
# than this many runs is reported as "at least" this many.
COUNT_CAP = 10_000


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The time zone named ``name``. :raises InvalidInput:"""
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith("/") \
            or ".." in name:
        raise errors.InvalidInput(f"Invalid input received: unknown time zone {name!r}.")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise errors.InvalidInput(f"Invalid input received: unknown time zone {name!r}.") \
            from None


def check_cron(expression: str) -> str:
    """A five-field cron expression (minute hour day month weekday). :raises InvalidInput:"""
    text = " ".join(str(expression).split())
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise errors.InvalidInput(f"Invalid input received: invalid cron expression "
                                  f"{expression!r} (five fields: minute hour day month "
                                  "weekday).")
    try:  # valid syntax that never matches (e.g. 30 February) has no next time
        croniter(text, dt.datetime(2026, 1, 1, tzinfo=UTC)).get_next(dt.datetime)
    except Exception:
        raise errors.InvalidInput(f"Invalid input received: cron expression {expression!r} "
                                  "never matches.") from None
    return text


def _aware(naive_utc: dt.datetime) -> dt.datetime:
    return naive_utc.replace(tzinfo=UTC)


def _naive(aware: dt.datetime) -> dt.datetime:
    return aware.astimezone(UTC).replace(tzinfo=None)


def next_after(*, after: dt.datetime, cron: str | None, interval_seconds: int | None,
               timezone: str, anchor: dt.datetime) -> dt.datetime:
    """The first due time strictly after ``after``."""
    if cron:
        local = _aware(after).astimezone(zone(timezone))
        return _naive(croniter(cron, local).get_next(dt.datetime))
    step = dt.timedelta(seconds=int(interval_seconds))
    if after < anchor:
        return anchor
    passed = (after - anchor) // step
    return anchor + (passed + 1) * step


def count_between(*, start: dt.datetime, end: dt.datetime, cron: str | None,
                  interval_seconds: int | None, timezone: str, anchor: dt.datetime) -> int:
    """How many due times lie in (start, end] (at most COUNT_CAP)."""
    if end <= start:
        return 0
    if not cron:
        step = dt.timedelta(seconds=int(interval_seconds))
        first = next_after(after=start, cron=None, interval_seconds=interval_seconds,
                           timezone=timezone, anchor=anchor)
        return 0 if first > end else min(COUNT_CAP, 1 + (end - first) // step)
    it = croniter(cron, _aware(start).astimezone(zone(timezone)))
    count = 0
    while count < COUNT_CAP and _naive(it.get_next(dt.datetime)) <= end:
        count += 1
    return count
