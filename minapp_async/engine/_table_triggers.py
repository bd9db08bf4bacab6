"""Table triggers: a committed create, update or delete of a record runs the functions the
triggers file names for that table and event, as async jobs (``eventType: "flex_schema"``).

Writes made with ``enable_trigger`` false (``enableTrigger: false`` in the SDK) fire none, nor
do seeding and imports. Conditions (``where``) are tested on the tables thread, on the record
after the change (the deleted record for a delete); the jobs start on the event loop.

Loops: a trigger whose function writes the table that triggers it would run forever (the
platform leaves that to ``enableTrigger: false``). Locally every job carries a trigger depth:
0 for jobs a user, a timer or a webhook started, n+1 for a job a write at depth n triggered
(a nested ``BaaS.invoke`` keeps its caller's depth). A write at depth ``MAX_TRIGGER_DEPTH``
fires no trigger; the engine logs which one it skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any, Final

from .._logs import get_logger
from ._baas import BaasService
from ._schedule import ReservedJob, TriggerRunner
from ._tables import Change, TableError
from ._trigger_file import TableTrigger

__all__ = ["MAX_TRIGGER_DEPTH", "TableTriggers"]

logger = get_logger("minapp_async.engine")

#: How deep writes made by trigger-run functions may go on firing triggers.
MAX_TRIGGER_DEPTH: Final = 4
#: Trigger depths remembered, by job id (the oldest jobs are long finished).
_MAX_REMEMBERED: Final = 10_000


class TableTriggers:
    """Fires the triggers file's table triggers for one engine (see the module docstring)."""

    def __init__(
        self,
        triggers: Mapping[str, TableTrigger],
        runner: TriggerRunner,
        service: BaasService,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._by_table: dict[str, list[TableTrigger]] = collections.defaultdict(list)
        for trigger in triggers.values():
            self._by_table[trigger.table].append(trigger)
        self._runner = runner
        self._service = service
        self._loop = loop
        self._depths: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._starting: set[asyncio.Task[None]] = set()  # jobs being stored and queued
        self._closed = False

    # ---- on the tables thread ----

    def on_change(self, change: Change) -> None:
        """A committed write (called on the tables thread): match it, hand it to the loop."""
        if not change.enable_trigger:
            return
        triggers = self._by_table.get(change.table)
        if not triggers:
            return
        row = change.before if change.event == "delete" else change.after
        if row is None:
            return
        fired: list[tuple[TableTrigger, Any]] = []
        for trigger in triggers:
            if change.event not in trigger.events:
                continue
            if trigger.where is not None:
                try:
                    if not self._service.tables.matches(trigger.where, row):
                        continue
                except TableError as exc:  # checked at load; a slow regex can still fail here
                    logger.error("table trigger %r: where failed: %s", trigger.name, exc.message)
                    continue
            fired.append((trigger, _event_data(trigger, change)))
        if fired:
            writer = self._service.writer
            with contextlib.suppress(RuntimeError):  # the loop is closed: the engine stopped
                self._loop.call_soon_threadsafe(self._start, fired, writer)

    # ---- on the event loop ----

    def _start(self, fired: list[tuple[TableTrigger, Any]], writer: str | None) -> None:
        if self._closed:  # a write that raced the engine's shutdown
            return
        depth = (self._depths.get(writer, 0) if writer else 0) + 1
        for trigger, data in fired:
            if depth > MAX_TRIGGER_DEPTH:
                logger.warning(
                    "table trigger %r (line %d) not fired: the write came from a chain of %d "
                    "triggered functions (at most %d; pass enableTrigger: false to writes "
                    "that must not fire triggers)",
                    trigger.name,
                    trigger.line,
                    depth - 1,
                    MAX_TRIGGER_DEPTH,
                )
                continue
            # Room in the async queue is taken here, before any task exists: a write storm
            # past the queue's bound is refused at once, so the tasks being stored and queued
            # (self._starting) never outnumber the queue's max jobs.
            try:
                reserved = self._runner.reserve_job(
                    trigger.function,
                    data,
                    source="flex_schema",
                    extra={"flex_schema_name": trigger.table},
                )
            except (LookupError, RuntimeError) as exc:  # no such function; shutting down; full
                self._not_fired(trigger, exc)
                continue
            # Before it is queued: its own writes must find their depth.
            self._remember(reserved.job.id, depth)
            task = self._loop.create_task(self._accept(trigger, reserved))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _accept(self, trigger: TableTrigger, reserved: ReservedJob) -> None:
        try:
            await self._runner.accept_job(reserved)
        except RuntimeError as exc:  # the state file cannot be written; shutting down
            self._not_fired(trigger, exc)

    def _not_fired(self, trigger: TableTrigger, exc: Exception) -> None:
        logger.error("table trigger %r (line %d) did not fire: %s", trigger.name, trigger.line, exc)

    async def aclose(self) -> None:
        """Wait for the jobs being stored; no new ones start (the engine is closing)."""
        self._closed = True
        while self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)

    def inherit(self, caller: str, callee: str) -> None:
        """A nested ``BaaS.invoke``: the callee's writes count as its caller's."""
        depth = self._depths.get(caller)
        if depth is not None:
            self._remember(callee, depth)

    def _remember(self, job_id: str, depth: int) -> None:
        self._depths[job_id] = depth
        while len(self._depths) > _MAX_REMEMBERED:
            self._depths.popitem(last=False)


def _trigger_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record as trigger payloads document it: ACLs as ``_read_perm``/``_write_perm``, no
    ``_id`` copy (BAAS.md §2.3)."""
    out = {k: v for k, v in row.items() if k not in ("_id", "read_perm", "write_perm")}
    for key in ("read_perm", "write_perm"):
        if key in row:
            out["_" + key] = row[key]
    return out


def _event_data(trigger: TableTrigger, change: Change) -> Any:
    """``event.data``: V1 is the record (after a create or update, the deleted one after a
    delete); V2 is the documented FlexSchema object."""
    before = None if change.before is None else _trigger_row(change.before)
    after = None if change.after is None else _trigger_row(change.after)
    if trigger.format == "v1":
        return before if change.event == "delete" else after
    data: dict[str, Any] = {
        "subject": "FlexSchema",
        "event": "on_" + change.event,
        "schema_id": change.table_id,
        "schema_name": change.table,
        "id": (after or before or {}).get("id"),
    }
    if after is not None:
        data["after"] = after
    if before is not None:
        data["before"] = before
    return data
