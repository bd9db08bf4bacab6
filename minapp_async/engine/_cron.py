"""The platform's timer syntax: standard 5-field cron, ``minute hour day-of-month month
day-of-week``, and when an expression fires next.

Each field takes ``*``, a number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (from
*a* to the field's end), and comma-separated lists of these. Day-of-week is 0-6 from Sunday; 7
is Sunday too. As in classic cron, when both day fields are restricted a day matching either
one fires. Names (``JAN``, ``MON``) and the ``@daily`` shorthands are not supported: the
console's presets are plain expressions (``0 0 * * *`` daily, ``0 * * * *`` hourly).
The minimum granularity is a minute, as on the platform.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import attrs

__all__ = ["CronError", "CronExpression", "parse_cron"]

#: (name, lowest, highest) of each field, in order.
_FIELDS: Final = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
#: An expression that has not fired in this many days never will (e.g. ``0 0 30 2 *``);
#: 8 years covers every leap-day combination.
_SEARCH_DAYS: Final = 366 * 8 + 2


class CronError(ValueError):
    """A cron expression the engine cannot use; the message says which field and why."""


@attrs.frozen
class CronExpression:
    """A parsed expression: the allowed values of each field."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool

    def _day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        # date.weekday(): Monday is 0; cron: Sunday is 0.
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first time strictly after *moment* this expression fires, in *moment*'s
        timezone (seconds and microseconds zero). CronError if it never fires."""
        start = moment.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if day.month in self.months and self._day_matches(day):
                first_day = day == start.date()
                for hour in sorted(self.hours):
                    if first_day and hour < start.hour:
                        continue
                    for minute in sorted(self.minutes):
                        if first_day and hour == start.hour and minute < start.minute:
                            continue
                        return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=moment.tzinfo)
            day += dt.timedelta(days=1)
        raise CronError(f"cron expression {self.text!r} never fires")


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{name} field {text!r} has an empty list item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            step = _number(step_text, f"{name} step", 1, high - low + 1 if high > low else 1)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _number(a, name, low, high), _number(b, name, low, high)
            if first > last:
                raise CronError(f"{name} range {base!r} runs backwards")
        else:
            first = _number(base, name, low, high)
            # "a/n" runs from a to the field's end; a lone number is just itself.
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        raise CronError(f"{name} {text!r} is not a number ({low}-{high})")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name} {value} is out of range ({low}-{high})")
    return value


def parse_cron(text: str) -> CronExpression:
    """Parse a 5-field expression; CronError saying what is wrong (it never fires, too)."""
    if not isinstance(text, str):
        raise CronError(f"a cron expression must be a string, got {type(text).__name__}")
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise CronError(
            f"cron expression {text!r} has {len(parts)} fields; it needs 5: "
            "minute hour day-of-month month day-of-week"
        )
    values = [
        _parse_field(part, name, low, high)
        for part, (name, low, high) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(d % 7 for d in values[4])
    expression = CronExpression(
        text=" ".join(parts),
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        days_restricted=parts[2] != "*" and not parts[2].startswith("*/"),
        weekdays_restricted=parts[4] != "*" and not parts[4].startswith("*/"),
    )
    # Refuse what can never fire (e.g. "0 0 30 2 *") now, not by silence later.
    expression.next_after(dt.datetime(2000, 1, 1))
    return expression
