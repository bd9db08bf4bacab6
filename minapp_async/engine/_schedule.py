"""Running functions for triggers: timers on their cron schedule (or now, on request) and
incoming webhooks, each as an async job with the platform's trigger ``event``.

The scheduler's clock is Asia/Shanghai time (the platform's, UTC+8 without daylight saving).
A timer fires at most once per tick: runs missed while the engine was not running, or while
its clock jumped, are not caught up (BAAS.md §4 leaves catch-up open; the engine skips them).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import attrs

from .._logs import get_logger
from ._config import EngineConfig
from ._jobs import Job, JobBoard, QueueFull
from ._store import StoreError
from ._trigger_file import IncomingWebhook, Timer, Triggers
from .runtime import FunctionFile

logger = get_logger("minapp_async.engine")

#: The platform's timezone (event.timezone says so too).
PLATFORM_TZ: Final = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
#: The scheduler wakes at least this often, so a changed wall clock is noticed.
_MAX_SLEEP: Final = 30.0


def platform_now() -> dt.datetime:
    return dt.datetime.now(PLATFORM_TZ)


@attrs.frozen
class TimerStatus:
    """A timer as the engine runs it: its entry in the triggers file and its next run."""

    name: str
    function: str
    cron: str
    params: Any
    next_fire: dt.datetime


@attrs.frozen
class ReservedJob:
    """An async job with its room in the queue taken, not yet stored (see
    :meth:`TriggerRunner.reserve_job`)."""

    job: Job
    function: FunctionFile
    event: dict[str, Any]
    data_json: str


class TriggerRunner:
    """Starts the trigger jobs: a timer's (on schedule or now) and a webhook's."""

    def __init__(
        self,
        triggers: Triggers,
        board: JobBoard,
        locate: Callable[[str], FunctionFile | None],
        config: EngineConfig,
        *,
        now: dt.datetime,
    ) -> None:
        self.triggers = triggers
        self._board = board
        self._locate = locate
        self._config = config
        self._next = {t.name: t.cron.next_after(now) for t in triggers.timers.values()}

    # ---- starting jobs ----

    async def start_job(
        self,
        function_name: str,
        data: Any,
        *,
        source: str,
        extra: Mapping[str, Any] | None = None,
        on_job: Callable[[Job], None] | None = None,
    ) -> Job:
        """Store and queue an async job of *function_name* with ``event.data = data`` (and the
        *extra* event fields); *on_job* is told the job before it is queued. LookupError when
        there is no such function, RuntimeError when the engine is shutting down or the async
        queue is full."""
        reserved = self.reserve_job(function_name, data, source=source, extra=extra)
        if on_job is not None:
            on_job(reserved.job)
        return await self.accept_job(reserved)

    def reserve_job(
        self,
        function_name: str,
        data: Any,
        *,
        source: str,
        extra: Mapping[str, Any] | None = None,
    ) -> ReservedJob:
        """The first half of :meth:`start_job`, without waiting: the function found, room in
        the async queue taken (same errors) and the job created. Follow with
        :meth:`accept_job`, which gives the room back if it fails."""
        function = self._locate(function_name)
        if function is None:
            raise LookupError(f"cloud function {function_name!r} not found")
        data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        try:
            self._board.admit(len(data_json))
        except QueueFull as exc:
            raise RuntimeError(str(exc)) from None
        try:
            job = self._board.create(
                function.name, sync=False, source=source, request_id=secrets.token_hex(16)
            )
        except BaseException:
            self._board.unadmit(len(data_json))
            raise
        return ReservedJob(job, function, {**self._event(job), **(extra or {})}, data_json)

    async def accept_job(self, reserved: ReservedJob) -> Job:
        """The second half of :meth:`start_job`: like every async job, committed to the state
        store, then queued."""
        try:
            await self._board.accept(
                reserved.job, reserved.function, reserved.event, reserved.data_json
            )
        except StoreError as exc:  # the state file cannot be written
            raise RuntimeError(str(exc)) from None
        return reserved.job

    def _event(self, job: Job) -> dict[str, Any]:
        """A trigger's event (PROTOCOL.md §7.2): no ``request``, the trigger as eventType; the
        job board adds ``data`` from its JSON text."""
        return {
            "eventType": job.source,
            "jobId": job.id,
            "miniappId": self._config.miniapp_id,
            "timeLimitInMS": round(self._board.time_limit(sync=False) * 1000),
            "memoryLimitInMB": self._config.memory_limit_mb,
            "signKey": secrets.token_hex(16),
            "timezone": "Asia/Shanghai",
            "debug": False,
        }

    # ---- timers ----

    def timer(self, name: str) -> Timer:
        try:
            return self.triggers.timers[name]
        except KeyError:
            known = ", ".join(sorted(self.triggers.timers)) or "none configured"
            raise LookupError(f"no timer named {name!r} (timers: {known})") from None

    async def fire_timer(self, name: str) -> Job:
        """Run timer *name*'s function now (its schedule is unchanged)."""
        timer = self.timer(name)
        # A timer's event.data: the entry's params ({} by default; the platform's is empty).
        return await self.start_job(timer.function, timer.params, source="timer")

    def statuses(self) -> list[TimerStatus]:
        return [
            TimerStatus(t.name, t.function, t.cron.text, t.params, self._next[t.name])
            for t in self.triggers.timers.values()
        ]

    async def tick(self, now: dt.datetime) -> list[Job]:
        """Fire every timer due at *now* (once each) and schedule its next run after *now*."""
        jobs = []
        for name, due in list(self._next.items()):
            if due > now:
                continue
            timer = self.triggers.timers[name]
            self._next[name] = timer.cron.next_after(now)
            try:
                jobs.append(await self.fire_timer(name))
            except (LookupError, RuntimeError) as exc:  # no such function; shutting down
                logger.error("timer %r (line %d) did not fire: %s", name, timer.line, exc)
        return jobs

    def seconds_to_next(self, now: dt.datetime) -> float:
        if not self._next:
            return _MAX_SLEEP
        return min(_MAX_SLEEP, max(0.0, (min(self._next.values()) - now).total_seconds()))

    async def run(self, clock: Callable[[], dt.datetime] = platform_now) -> None:
        """Fire timers on schedule until cancelled."""
        if not self._next:
            return
        while True:
            await self.tick(clock())
            # Past the minute boundary by a hair, so the tick after the sleep finds it due.
            await anyio.sleep(self.seconds_to_next(clock()) + 0.001)

    # ---- incoming webhooks ----

    def webhook(self, key: str) -> IncomingWebhook | None:
        return self.triggers.webhooks.get(key)
