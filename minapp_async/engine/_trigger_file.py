"""The triggers file, ``minapp.triggers.json`` in the functions folder: timers, incoming
webhooks and table triggers, each naming the function it runs.

    {
      "timers": [
        {"name": "cancelOrders", "function": "cancelOrders", "cron": "*/10 * * * *",
         "params": {"older_than_minutes": 30}}
      ],
      "incoming_webhooks": [
        {"key": "7YnQmaClzc", "function": "onPayment"}
      ],
      "table_triggers": [
        {"name": "countComments", "table": "comment", "events": ["create", "delete"],
         "function": "countComments", "where": {"approved": {"$eq": true}}, "format": "v1"}
      ]
    }

A table trigger's ``where`` is a query in the data tables' own language (what ``BaaS.Query``
sends), tested on the record after the change (the deleted record for a delete); ``format``
picks the platform's V1 ``event.data`` (the record, the default) or V2 (``{subject, event,
before, after, schema_id, schema_name, id}``).

On the platform these live in the console; locally they live next to the functions. Every
mistake is a :class:`TriggerFileError` naming the file and the line of the entry (or of the
JSON syntax error), raised when the engine starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from ._cron import CronError, CronExpression, parse_cron
from ._tables import TableError, check_where

__all__ = [
    "TRIGGER_FILE",
    "IncomingWebhook",
    "TableTrigger",
    "Timer",
    "TriggerFileError",
    "Triggers",
    "load",
]

TRIGGER_FILE: Final = "minapp.triggers.json"
#: The runtime's function names, and webhook keys (the platform's look like ``7YnQmaClzc``).
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}", re.ASCII)
_SECTIONS: Final = ("timers", "incoming_webhooks", "table_triggers")
#: The platform's table names (the data tables' own rule).
_TABLE: Final = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}", re.ASCII)
TABLE_EVENTS: Final = ("create", "update", "delete")
TABLE_FORMATS: Final = ("v1", "v2")


class TriggerFileError(ValueError):
    """The triggers file cannot be used; the message starts with ``<file>:<line>:``."""


@attrs.frozen
class Timer:
    """A timer: run *function* at the times *cron* names, with ``event.data = params``."""

    name: str
    function: str
    cron: CronExpression
    params: Any = attrs.field(factory=dict)
    line: int = 0


@attrs.frozen
class IncomingWebhook:
    """``/oserve/v1/incoming-webhook/<key>/`` runs *function* with the request as event.data."""

    key: str
    function: str
    line: int = 0


@attrs.frozen
class TableTrigger:
    """Run *function* when a record of *table* is created, updated or deleted (*events*) and
    the record matches *where*; ``event.data`` in the platform's V1 or V2 *format*."""

    name: str
    table: str
    events: frozenset[str]
    function: str
    where: Any = None
    format: str = "v1"
    line: int = 0


@attrs.frozen
class Triggers:
    """What the triggers file configures (empty when there is no file)."""

    timers: Mapping[str, Timer] = attrs.field(factory=dict)
    webhooks: Mapping[str, IncomingWebhook] = attrs.field(factory=dict)
    path: Path | None = None
    tables: Mapping[str, TableTrigger] = attrs.field(factory=dict)


class _Located(dict[str, Any]):
    """A JSON object that knows the line it starts on."""

    line = 0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decoder() -> json.JSONDecoder:
    """A JSON decoder whose objects carry their line (the pure-Python scanner calls back)."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    plain_object: Any = json.decoder.JSONObject  # type: ignore[attr-defined]

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[_Located, int]:
        text, start = s_and_end
        value, end = plain_object(s_and_end, *args)
        located = _Located(value)
        located.line = text.count("\n", 0, start) + 1
        return located, end

    scanner: Any = json.scanner.py_make_scanner  # type: ignore[attr-defined]
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def load(functions_dir: Path) -> Triggers:
    """The folder's triggers file, checked; no file means no triggers."""
    path = functions_dir / TRIGGER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Triggers()
    except (OSError, UnicodeDecodeError) as exc:
        raise TriggerFileError(f"{path}: cannot read it: {exc}") from None
    try:
        spec = _decoder().decode(text)
    except json.JSONDecodeError as exc:
        raise TriggerFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise TriggerFileError(f"{path}:1: not valid JSON: {exc}") from None
    return _Reader(path).triggers(spec)


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, message: str) -> TriggerFileError:
        return TriggerFileError(f"{self.path}:{line}: {message}")

    def triggers(self, spec: Any) -> Triggers:
        if not isinstance(spec, _Located):
            raise self.fail(1, "the file must hold one JSON object")
        for section in spec:
            if section not in _SECTIONS:
                raise self.fail(
                    spec.line, f"unknown section {section!r} (known: {', '.join(_SECTIONS)})"
                )
        timers: dict[str, Timer] = {}
        for entry in self.entries(spec, "timers"):
            timer = self.timer(entry)
            if timer.name in timers:
                raise self.fail(entry.line, f"a second timer named {timer.name!r}")
            timers[timer.name] = timer
        webhooks: dict[str, IncomingWebhook] = {}
        for entry in self.entries(spec, "incoming_webhooks"):
            webhook = self.webhook(entry)
            if webhook.key in webhooks:
                raise self.fail(entry.line, f"a second incoming webhook with key {webhook.key!r}")
            webhooks[webhook.key] = webhook
        tables: dict[str, TableTrigger] = {}
        for entry in self.entries(spec, "table_triggers"):
            trigger = self.table_trigger(entry)
            if trigger.name in tables:
                raise self.fail(entry.line, f"a second table trigger named {trigger.name!r}")
            tables[trigger.name] = trigger
        return Triggers(timers=timers, webhooks=webhooks, path=self.path, tables=tables)

    def entries(self, spec: _Located, section: str) -> list[_Located]:
        items = spec.get(section, [])
        if not isinstance(items, list):
            raise self.fail(spec.line, f"{section!r} must be a list of objects")
        for item in items:
            if not isinstance(item, _Located):
                raise self.fail(spec.line, f"every entry of {section!r} must be an object")
        return items

    def keys(self, entry: _Located, required: set[str], optional: set[str]) -> None:
        missing = sorted(required - entry.keys())
        if missing:
            raise self.fail(entry.line, f"missing {', '.join(missing)}")
        unknown = sorted(entry.keys() - required - optional)
        if unknown:
            raise self.fail(entry.line, f"unknown field {', '.join(map(repr, unknown))}")

    def name(self, entry: _Located, field: str) -> str:
        value = entry[field]
        if not isinstance(value, str) or _NAME.fullmatch(value) is None:
            raise self.fail(
                entry.line,
                f"{field} must be 1-64 letters, digits, '_' or '-' (not starting with '-'), "
                f"got {value!r}",
            )
        return value

    def timer(self, entry: _Located) -> Timer:
        self.keys(entry, {"name", "function", "cron"}, {"params"})
        try:
            cron = parse_cron(entry["cron"])
        except CronError as exc:
            raise self.fail(entry.line, f"timer {entry['name']!r}: {exc}") from None
        return Timer(
            name=self.name(entry, "name"),
            function=self.name(entry, "function"),
            cron=cron,
            params=entry.get("params", {}),
            line=entry.line,
        )

    def webhook(self, entry: _Located) -> IncomingWebhook:
        self.keys(entry, {"key", "function"}, set())
        return IncomingWebhook(
            key=self.name(entry, "key"), function=self.name(entry, "function"), line=entry.line
        )

    def table_trigger(self, entry: _Located) -> TableTrigger:
        self.keys(entry, {"name", "table", "events", "function"}, {"where", "format"})
        name = self.name(entry, "name")
        table = entry["table"]
        if not isinstance(table, str) or _TABLE.fullmatch(table) is None:
            raise self.fail(entry.line, f"table trigger {name!r}: bad table name {table!r}")
        events = entry["events"]
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) and e in TABLE_EVENTS for e in events)
        ):
            raise self.fail(
                entry.line,
                f"table trigger {name!r}: events must be a non-empty list of "
                f"{', '.join(map(repr, TABLE_EVENTS))}, got {events!r}",
            )
        where = entry.get("where")
        if where is not None:
            try:
                check_where(where)
            except TableError as exc:
                raise self.fail(
                    entry.line, f"table trigger {name!r}: where: {exc.message}"
                ) from None
        fmt = entry.get("format", "v1")
        if fmt not in TABLE_FORMATS:
            raise self.fail(
                entry.line, f"table trigger {name!r}: format must be 'v1' or 'v2', got {fmt!r}"
            )
        return TableTrigger(
            name=name,
            table=table,
            events=frozenset(events),
            function=self.name(entry, "function"),
            where=_plain(where),
            format=fmt,
            line=entry.line,
        )


def _plain(value: Any) -> Any:
    """JSON as plain dicts and lists (the located objects are only for error messages)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
