"""Job records, the concurrency slots jobs are scheduled on, and per-function counters."""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol

import anyio
import attrs
from anyio.abc import TaskStatus

from .._logs import get_logger
from .._protocol import FINISHED_STATUSES, SCHEDULE_FAILED, JobStatus
from .runtime import FunctionFile, Runtime, timed_out_message

logger = get_logger("minapp_async.engine")

ServiceType = Literal["time_sensitive", "batch"]
#: The runtime enforces time limits itself; this backstop only catches a runtime that hangs.
RUNTIME_GRACE: Final = 5.0
#: Finished jobs kept for the job list and Engine.jobs(); the oldest are forgotten first.
MAX_JOB_RECORDS: Final = 10_000


@attrs.frozen
class Job:
    """A snapshot of one cloud-function job, as the Open API's job list describes it.

    ``service_type`` is ``time_sensitive`` for sync calls and ``batch`` for async ones;
    ``source`` is the trigger (``sdk`` for hserve, ``open_api`` for oserve). Times are epoch
    seconds. ``result`` is the ``{"code", "data", "error"}`` envelope, or None when the job
    never ran, timed out or its worker died (then ``error_msg`` says why).
    """

    id: str
    function_name: str
    status: JobStatus
    service_type: ServiceType
    source: str
    created_at: float
    request_id: str
    user_id: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    log: str = ""
    mem_usage: int = 0
    execution_time_ms: float = 0.0
    error_msg: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


@attrs.frozen
class FunctionStats:
    """Counters for one function: runs started, runs in progress now, and their peak."""

    executions: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


@attrs.frozen
class EngineStats:
    """A snapshot of the engine's counters (server-side gauges, for tests and benchmarks)."""

    functions: Mapping[str, FunctionStats]
    requests_served: int
    requests_in_flight: int
    peak_concurrent_requests: int


class JobWatcher(Protocol):
    """Told of job activity as it happens (``serve``'s terminal output is one)."""

    def log_line(self, job: Job, line: str) -> None:
        """One line of *job*'s log, as the worker wrote it, the moment it arrives."""

    def job_finished(self, job: Job) -> None:
        """*job* has its final status."""


class _Slots:
    """``concurrency`` execution slots; a freed slot goes to a waiting sync job first.

    Sync callers give up after ``schedule_wait`` while async jobs may queue for minutes, so
    a plain FIFO would let a queue of async jobs starve every sync call.
    """

    def __init__(self, total: int) -> None:
        self._free = total
        self._waiters: tuple[deque[anyio.Event], deque[anyio.Event]] = (deque(), deque())

    async def acquire(self, *, urgent: bool) -> None:
        if self._free > 0:
            self._free -= 1
            return
        event = anyio.Event()
        queue = self._waiters[0 if urgent else 1]
        queue.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # handed a slot just as we were cancelled: pass it on
            else:
                queue.remove(event)
            raise

    def release(self) -> None:
        for queue in self._waiters:
            if queue:
                queue.popleft().set()  # the slot moves straight to the waiter
                return
        self._free += 1


class JobBoard:
    """Creates job records and runs them through the runtime within the concurrency limit."""

    def __init__(
        self,
        runner: Runtime,
        *,
        concurrency: int,
        schedule_wait: float,
        sync_time_limit: float,
        async_time_limit: float,
        console: JobWatcher | None = None,
    ) -> None:
        self._runner = runner
        self._console = console
        self._concurrency = concurrency
        self._schedule_wait = schedule_wait
        self.sync_time_limit = sync_time_limit
        self.async_time_limit = async_time_limit
        self._slots = _Slots(concurrency)
        self._jobs: dict[str, Job] = {}
        self._done: dict[str, anyio.Event] = {}
        self._stats: dict[str, FunctionStats] = {}
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._sync_scopes: set[anyio.CancelScope] = set()
        self._queue_send, self._queue_receive = anyio.create_memory_object_stream[
            tuple[str, FunctionFile, dict[str, Any]]
        ](math.inf)
        self._closed = False

    def time_limit(self, *, sync: bool) -> float:
        """Seconds a job of that mode may run."""
        return self.sync_time_limit if sync else self.async_time_limit

    # ---- records ----

    def create(
        self,
        function_name: str,
        *,
        sync: bool,
        source: str,
        request_id: str,
        user_id: int | None = None,
    ) -> Job:
        """A new job, status ``waiting``. Raises RuntimeError once the board is closed."""
        if self._closed:
            raise RuntimeError("the engine is shutting down")
        job = Job(
            id=secrets.token_hex(16),
            function_name=function_name,
            status="waiting",
            service_type="time_sensitive" if sync else "batch",
            source=source,
            created_at=time.time(),
            request_id=request_id,
            user_id=user_id,
        )
        self._jobs[job.id] = job
        self._done[job.id] = anyio.Event()
        if self._active == 0:
            self._idle = anyio.Event()
        self._active += 1
        self._forget_old_jobs()
        return job

    def job(self, job_id: str) -> Job:
        """The job's latest snapshot; KeyError if there is no such job."""
        return self._jobs[job_id]

    def jobs(self, function_name: str | None = None) -> list[Job]:
        """Jobs in creation order, optionally only one function's."""
        return [j for j in self._jobs.values() if function_name in (None, j.function_name)]

    def executions(self, function_name: str) -> int:
        return self._stats.get(function_name, FunctionStats()).executions

    def function_stats(self) -> dict[str, FunctionStats]:
        return dict(self._stats)

    async def wait(self, job_id: str, timeout: float) -> Job:  # noqa: ASYNC109
        """The job once it has finished; TimeoutError after *timeout* seconds."""
        done = self._done.get(job_id)
        if done is None:
            return self.job(job_id)  # raises KeyError for an unknown id, or it is long done
        with anyio.fail_after(timeout):
            await done.wait()
        return self._jobs[job_id]

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return once no job is waiting or executing; TimeoutError after *timeout* s."""
        with anyio.fail_after(timeout):
            while self._active:
                await self._idle.wait()

    # ---- running ----

    async def run_sync(self, job_id: str, function: FunctionFile, event: dict[str, Any]) -> Job:
        """Run a sync job now: wait at most ``schedule_wait`` for a slot, then run it."""
        with anyio.CancelScope() as scope:
            self._sync_scopes.add(scope)
            try:
                await self._schedule_and_run(
                    job_id, function, event, schedule_wait=self._schedule_wait, urgent=True
                )
            finally:
                self._sync_scopes.discard(scope)
        return self._jobs[job_id]

    def submit(self, job_id: str, function: FunctionFile, event: dict[str, Any]) -> None:
        """Queue an async job; it runs in the background (see :meth:`serve`)."""
        self._queue_send.send_nowait((job_id, function, event))

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run queued async jobs until cancelled; cancelling cancels them all."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            async with self._queue_receive:
                async for job_id, function, event in self._queue_receive:
                    tg.start_soon(self._run_async, job_id, function, event)

    def close(self) -> None:
        """Refuse new jobs and cancel running sync jobs (async ones stop with :meth:`serve`)."""
        self._closed = True
        self._queue_send.close()
        for scope in list(self._sync_scopes):
            scope.cancel()

    def close_queue(self) -> None:
        """After :meth:`serve` has stopped: reject the async jobs it never picked up."""
        with self._queue_receive:
            while True:
                try:
                    job_id, _, _ = self._queue_receive.receive_nowait()
                except (anyio.EndOfStream, anyio.WouldBlock, anyio.ClosedResourceError):
                    break
                self._finish(
                    job_id,
                    status="execution_rejected",
                    error_msg="the engine shut down before the job started",
                )

    async def _run_async(self, job_id: str, function: FunctionFile, event: dict[str, Any]) -> None:
        try:
            # The platform retries an async job's scheduling for about as long as it may run.
            await self._schedule_and_run(
                job_id, function, event, schedule_wait=self.async_time_limit, urgent=False
            )
        except Exception:
            # A bug here must not take down serve()'s task group and every queued job with it.
            logger.exception("async job %s failed inside the engine", job_id)
            if not self._jobs[job_id].finished:
                self._finish(
                    job_id, status="execution_failed", error_msg="the engine failed to run the job"
                )

    async def _schedule_and_run(
        self,
        job_id: str,
        function: FunctionFile,
        event: dict[str, Any],
        *,
        schedule_wait: float,
        urgent: bool,
    ) -> None:
        name = self._jobs[job_id].function_name
        try:
            with anyio.move_on_after(schedule_wait) as waited:
                await self._slots.acquire(urgent=urgent)
            if waited.cancelled_caught:
                self._finish(
                    job_id,
                    status=SCHEDULE_FAILED,
                    error_msg=(
                        f"cloud function {name!r} could not be scheduled: all "
                        f"{self._concurrency} execution slots stayed busy for {schedule_wait:g} s"
                    ),
                )
                return
            try:
                await self._execute(job_id, function, event)
            finally:
                self._slots.release()
        except anyio.get_cancelled_exc_class():
            # Only the engine's shutdown cancels jobs; record it so no job stays "executing".
            if not self._jobs[job_id].finished:
                self._finish(
                    job_id,
                    status="execution_rejected"
                    if self._jobs[job_id].status == "waiting"
                    else "execution_failed",
                    error_msg="the engine shut down before the job finished",
                )
            raise

    async def _execute(self, job_id: str, function: FunctionFile, event: dict[str, Any]) -> None:
        job = self._jobs[job_id]
        name = job.function_name
        limit = self.time_limit(sync=job.service_type == "time_sensitive")
        self._jobs[job_id] = attrs.evolve(job, status="executing", started_at=time.time())
        stats = self._stats.get(name, FunctionStats())
        in_flight = stats.in_flight + 1
        self._stats[name] = FunctionStats(
            stats.executions + 1, in_flight, max(stats.peak_in_flight, in_flight)
        )
        try:
            with anyio.move_on_after(limit + RUNTIME_GRACE) as backstop:
                outcome = await self._runner.run(
                    function, event, time_limit=limit, on_log=self._echo(job_id)
                )
            if backstop.cancelled_caught:
                logger.error("the runtime did not stop job %s of %r at its limit", job_id, name)
                self._finish(
                    job_id,
                    status="deadline_exceeded",
                    error_msg=timed_out_message(name, limit),
                )
                return
        except Exception:
            logger.exception("running job %s of %r failed inside the engine", job_id, name)
            self._finish(
                job_id,
                status="execution_failed",
                error_msg=f"the engine failed to run cloud function {name!r} (see its log)",
            )
            return
        finally:
            stats = self._stats[name]
            self._stats[name] = attrs.evolve(stats, in_flight=stats.in_flight - 1)
        # The runtime's outcome is already in job terms: its status and, when there is no
        # result, an error message.
        self._finish(
            job_id,
            status=outcome.status,
            result=outcome.result,
            log=outcome.log,
            mem_usage=outcome.mem_usage,
            execution_time_ms=outcome.execution_time_ms,
            error_msg=outcome.error_msg,
        )

    def _echo(self, job_id: str) -> Callable[[str], None] | None:
        console = self._console
        if console is None:
            return None
        job = self._jobs[job_id]
        return lambda line: console.log_line(job, line)

    def _finish(self, job_id: str, *, status: JobStatus, **fields: Any) -> None:
        self._jobs[job_id] = attrs.evolve(
            self._jobs[job_id], status=status, finished_at=time.time(), **fields
        )
        if self._console is not None:
            self._console.job_finished(self._jobs[job_id])
        done = self._done.pop(job_id, None)
        if done is not None:
            done.set()
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    def _forget_old_jobs(self) -> None:
        excess = len(self._jobs) - MAX_JOB_RECORDS
        if excess <= 0:
            return
        # Oldest first; those are nearly always finished, so this stops after a step or two.
        forget: list[str] = []
        for job in self._jobs.values():
            if len(forget) == excess:
                break
            if job.finished:
                forget.append(job.id)
        for job_id in forget:
            del self._jobs[job_id]
