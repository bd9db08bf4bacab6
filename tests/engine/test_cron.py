"""The 5-field cron syntax of timers: parsing, errors, and the next run from fixed datetimes."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from minapp_async.engine._cron import CronError, parse_cron

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("* * * * *", "2026-11-29 10:00:30", "2026-11-29 10:01"),
        ("0 * * * *", "2026-11-29 10:00", "2026-11-29 11:00"),  # strictly after
        ("0 0 * * *", "2026-12-31 23:59", "2027-01-01 00:00"),  # the console's "daily"
        ("0 0 1 1 *", "2026-06-01 00:00", "2027-01-01 00:00"),  # "yearly"
        ("0 0 * * 0", "2026-11-29 00:00", "2026-12-06 00:00"),  # "weekly": 11-29 is a Sunday
        ("0 0 * * 7", "2026-11-28 12:00", "2026-11-29 00:00"),  # 7 is Sunday too
        ("*/15 9-17 * * 1-5", "2026-11-28 10:00", "2026-11-30 09:00"),  # Saturday → Monday
        ("*/15 9-17 * * 1-5", "2026-11-30 17:45", "2026-12-01 09:00"),
        ("5,35 */6 * * *", "2026-11-29 06:05", "2026-11-29 06:35"),
        ("10-20/5 3 * * *", "2026-11-29 03:16", "2026-11-29 03:20"),
        ("30/10 * * * *", "2026-11-29 03:55", "2026-11-29 04:30"),  # a/n runs to the end
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),  # leap days only
        ("0 0 31 * *", "2026-11-01 00:00", "2026-12-31 00:00"),  # November has no 31st
        # Both day fields restricted: either one matches (classic cron).
        ("0 12 1 * 5", "2026-11-29 00:00", "2026-12-01 12:00"),
        ("0 12 15 * 5", "2026-11-29 00:00", "2026-12-04 12:00"),
        # "*/10" counts as "*" (as in classic cron): both must match, so the 21st, a Monday.
        ("0 0 */10 * 1", "2026-11-29 00:00", "2026-12-21 00:00"),
    ],
)
def test_next_fire(cron: str, after: str, expected: str) -> None:
    assert parse_cron(cron).next_after(at(after)) == at(expected)


def test_next_fire_keeps_the_timezone() -> None:
    utc = dt.datetime(2026, 11, 29, 1, 59, tzinfo=dt.timezone.utc)
    fired = parse_cron("0 2 * * *").next_after(utc)
    assert fired == dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("* * * *", "has 4 fields; it needs 5"),
        ("* * * * * *", "has 6 fields"),
        ("60 * * * *", "minute 60 is out of range (0-59)"),
        ("* 24 * * *", "hour 24 is out of range"),
        ("* * 0 * *", "day of month 0 is out of range (1-31)"),
        ("* * * 13 *", "month 13 is out of range"),
        ("* * * * 8", "day of week 8 is out of range (0-7)"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "minute step 0 is out of range"),
        ("a * * * *", "minute 'a' is not a number"),
        ("1,,2 * * * *", "empty list item"),
        ("* * * JAN *", "month 'JAN' is not a number"),
        ("@daily", "has 1 fields"),
        ("0 0 30 2 *", "never fires"),
        ("-1 * * * *", "is not a number"),
    ],
)
def test_bad_expressions_say_what_is_wrong(cron: str, message: str) -> None:
    with pytest.raises(CronError, match=re.escape(message)):
        parse_cron(cron)
