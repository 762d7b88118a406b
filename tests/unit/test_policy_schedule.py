"""Due times: cron on a time zone's wall clock (across DST), intervals without drift."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from orchestrator import errors
from orchestrator.policies import schedule


def _next(after, cron=None, interval=None, tz="UTC", anchor=None):
    return schedule.next_after(after=after, cron=cron, interval_seconds=interval, timezone=tz,
                               anchor=anchor or after)


def test_cron_runs_on_the_wall_clock_of_its_time_zone_summer_and_winter():
    # 02:00 Berlin is 00:00 UTC in summer (CEST) and 01:00 UTC in winter (CET).
    assert _next(dt.datetime(2026, 7, 1, 12), "0 2 * * *", tz="Europe/Berlin") == \
        dt.datetime(2026, 7, 2, 0, 0)
    assert _next(dt.datetime(2026, 12, 1, 12), "0 2 * * *", tz="Europe/Berlin") == \
        dt.datetime(2026, 12, 2, 1, 0)
    # The spring-forward night has no 02:30 in Berlin; the run is not lost.
    after = _next(dt.datetime(2026, 3, 28, 12), "30 2 * * *", tz="Europe/Berlin")
    assert dt.datetime(2026, 3, 29) <= after <= dt.datetime(2026, 3, 30, 1)


def test_interval_due_times_stay_on_their_grid_when_a_run_is_late():
    anchor = dt.datetime(2026, 1, 1, 0, 0, 0)
    late = anchor + dt.timedelta(seconds=7 * 60 + 5)
    assert _next(late, interval=60, anchor=anchor) == anchor + dt.timedelta(minutes=8)
    assert schedule.count_between(start=anchor, end=late, cron=None, interval_seconds=60,
                                  timezone="UTC", anchor=anchor) == 7


@hsettings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000), st.integers(0, 10**7), st.integers(0, 10**6))
def test_interval_next_is_the_first_grid_point_after(interval, offset, extra):
    anchor = dt.datetime(2026, 1, 1)
    after = anchor + dt.timedelta(seconds=offset, microseconds=extra)
    nxt = _next(after, interval=interval, anchor=anchor)
    step = dt.timedelta(seconds=interval)
    assert nxt > after >= nxt - step and (nxt - anchor) % step == dt.timedelta(0)


def test_cron_count_between_counts_every_match():
    start = dt.datetime(2026, 1, 1, 0, 0)
    assert schedule.count_between(start=start, end=start + dt.timedelta(hours=2),
                                  cron="*/15 * * * *", interval_seconds=None, timezone="UTC",
                                  anchor=start) == 8


@pytest.mark.parametrize("bad", ["", "* * * *", "61 * * * *", "0 2 * * * *", "not cron",
                                 "0 0 31 2 *"])
def test_invalid_cron_is_refused(bad):
    with pytest.raises(errors.InvalidInput):
        schedule.check_cron(bad)


@pytest.mark.parametrize("bad", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime",
                                 "Europe/" + "x" * 80])
def test_unknown_time_zone_is_refused(bad):
    with pytest.raises(errors.InvalidInput):
        schedule.zone(bad)
