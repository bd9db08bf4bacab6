"""Jobs: the in-flight ones in memory, every record in the :class:`Store`, the bounded async
queue, the concurrency slots jobs are scheduled on, and per-function counters.

An async job is in the store (committed) before it is queued, so it survives any stop of the
engine: at the next start :meth:`JobBoard.resume` queues it again. A sync job lives only in
memory while its caller waits, and is recorded in one write once it ends. Bookkeeping is O(1)
per job: memory holds only the jobs in flight; finished records are the store's to bound.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol

import anyio
import attrs
from anyio.abc import TaskStatus

from .._logs import get_logger
from .._protocol import FINISHED_STATUSES, SCHEDULE_FAILED, JobStatus
from ._store import EndedJob, JobRecord, RawJSON, Store, new_job_id
from .runtime import FunctionFile, Runtime, timed_out_message

logger = get_logger("minapp_async.engine")

ServiceType = Literal["time_sensitive", "batch"]
#: The runtime enforces time limits itself; this backstop only catches a runtime that hangs.
RUNTIME_GRACE: Final = 5.0
#: Seconds a refused async invoke is told to wait (``Retry-After``) when the queue is full.
QUEUE_FULL_RETRY_AFTER: Final = 1


@attrs.frozen
class Job:
    """A snapshot of one cloud-function job, as the Open API's job list describes it.

    ``service_type`` is ``time_sensitive`` for sync calls and ``batch`` for async ones;
    ``source`` is the trigger (``sdk`` for hserve, ``open_api`` for oserve). Times are epoch
    seconds. ``result`` is the ``{"code", "data", "error"}`` envelope, or None when the job
    never ran, timed out or its worker died (then ``error_msg`` says why). ``attempts``
    counts its starts; ``rerun`` says an engine stop cut it off mid-run and it ran again.
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
    attempts: int = 0
    rerun: bool = False

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def sync(self) -> bool:
        return self.service_type == "time_sensitive"

    @classmethod
    def from_record(cls, record: JobRecord) -> Job:
        status: Any = record.status
        return cls(
            id=record.id,
            function_name=record.function_name,
            status=status,
            service_type=record.service_type,  # type: ignore[arg-type]
            source=record.source,
            created_at=record.created_at,
            request_id=record.request_id,
            user_id=record.user_id,
            started_at=record.started_at,
            finished_at=record.finished_at,
            result=record.result,
            log=record.log,
            mem_usage=record.mem_usage,
            execution_time_ms=record.execution_time_ms,
            error_msg=record.error_msg,
            attempts=record.attempts,
            rerun=record.rerun,
        )


@attrs.frozen
class FunctionStats:
    """Counters for one function: runs started, runs in progress now, and their peak."""

    executions: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


@attrs.frozen
class EngineStats:
    """A snapshot of the engine's counters (server-side gauges, for tests and benchmarks).

    ``queued_jobs`` and ``queued_bytes`` are the async jobs waiting for a slot (and the bytes
    of their params); ``idle_workers`` the warm workers kept across all functions."""

    functions: Mapping[str, FunctionStats]
    requests_served: int
    requests_in_flight: int
    peak_concurrent_requests: int
    queued_jobs: int = 0
    queued_bytes: int = 0
    idle_workers: int = 0


class QueueFull(Exception):
    """The async queue is at its bound; the message says which one."""


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

    def try_acquire(self) -> bool:
        """Take a free slot if there is one (there is none while anyone waits)."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

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


# What the async queue holds per job: its id, function, event (without data), data as JSON
# text (compact, and never parsed again before the worker gets it) and when it was queued
# (time.monotonic()). A queued job is only this tuple and its in-flight Job: no task, no
# timer, so memory and per-accept work stay flat however long the queue grows.
_Queued = tuple[str, FunctionFile, dict[str, Any], str, float]


class JobBoard:
    """Creates jobs, runs them through the runtime within the concurrency limit, and keeps
    their records in the store."""

    def __init__(
        self,
        runner: Runtime,
        store: Store,
        *,
        concurrency: int,
        schedule_wait: float,
        sync_time_limit: float,
        async_time_limit: float,
        max_queued_jobs: int = 10_000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        console: JobWatcher | None = None,
    ) -> None:
        self._runner = runner
        self._store = store
        self._console = console
        self._concurrency = concurrency
        self._schedule_wait = schedule_wait
        self.sync_time_limit = sync_time_limit
        self.async_time_limit = async_time_limit
        self.max_queued_jobs = max_queued_jobs
        self.max_queued_bytes = max_queued_bytes
        self._slots = _Slots(concurrency)
        self._inflight: dict[str, Job] = {}  # waiting or executing
        # Made by wait() for a job in flight; set when the job is forgotten.
        self._done: dict[str, asyncio.Event] = {}
        self._queued_size: dict[str, int] = {}  # async jobs not started yet -> bytes
        self.queued_jobs = 0  # reserved by admit() or queued
        self.queued_bytes = 0
        self._stats: dict[str, FunctionStats] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self._sync_scopes: set[anyio.CancelScope] = set()
        self._committing: set[asyncio.Future[None]] = set()  # accepts whose write is queued
        self._queue_send, self._queue_receive = anyio.create_memory_object_stream[_Queued](
            float("inf")  # bounded by admit(), in count and bytes
        )
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
        job_id: str | None = None,
        created_at: float | None = None,
        attempts: int = 0,
        rerun: bool = False,
    ) -> Job:
        """A new in-flight job, status ``waiting`` (not yet in the store: a sync job is
        recorded when it ends; an async one is accepted by :meth:`accept`). Raises
        RuntimeError once the board is closed."""
        if self._closed:
            raise RuntimeError("the engine is shutting down")
        job = Job(
            id=new_job_id() if job_id is None else job_id,
            function_name=function_name,
            status="waiting",
            service_type="time_sensitive" if sync else "batch",
            source=source,
            created_at=time.time() if created_at is None else created_at,
            request_id=request_id,
            user_id=user_id,
            attempts=attempts,
            rerun=rerun,
        )
        self._inflight[job.id] = job
        if len(self._inflight) == 1:
            self._idle = anyio.Event()
        return job

    async def get(self, job_id: str) -> Job | None:
        """The job's latest snapshot; None if there is no such job (or it was pruned)."""
        job = self._inflight.get(job_id)
        if job is not None:
            return job
        record = await self._store.get(job_id)
        return None if record is None else Job.from_record(record)

    def in_flight(self, function_name: str | None = None, *, sync: bool | None = None) -> list[Job]:
        """Jobs waiting or executing, in creation order."""
        return [
            j
            for j in self._inflight.values()
            if function_name in (None, j.function_name) and sync in (None, j.sync)
        ]

    async def jobs(self, function_name: str | None = None) -> list[Job]:
        """Every job kept (or one function's) in creation order: the store's records, with
        the in-flight ones as they are now."""
        live = self.in_flight(function_name)
        page = await self._store.list_jobs(
            function_name=function_name,
            newest_first=False,
            limit=self._store.bounds.max_finished
            + self._store.stats.waiting
            + self._store.stats.executing
            + len(live),
            bodies=True,
        )
        current: dict[str, Job | None] = {j.id: j for j in live}
        jobs = [current.pop(r.id, None) or Job.from_record(r) for r in page.jobs]
        jobs.extend(j for j in current.values() if j is not None)  # sync ones in flight
        jobs.sort(key=lambda j: j.created_at)
        return jobs

    def executions(self, function_name: str) -> int:
        return self._stats.get(function_name, FunctionStats()).executions

    def function_stats(self) -> dict[str, FunctionStats]:
        return dict(self._stats)

    async def wait(self, job_id: str, timeout: float) -> Job:  # noqa: ASYNC109
        """The job once it has finished; TimeoutError after *timeout* seconds, KeyError for
        an unknown id."""
        done = self._done.get(job_id)
        if done is None and job_id in self._inflight:
            # Made here, not per job: most jobs are never waited for by id.
            done = self._done[job_id] = asyncio.Event()
        if done is not None:
            with anyio.fail_after(timeout):
                await done.wait()
        job = await self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return once no job is waiting or executing; TimeoutError after *timeout* s."""
        with anyio.fail_after(timeout):
            while self._inflight:
                await self._idle.wait()

    # ---- the async queue ----

    def admit(self, size: int) -> None:
        """Reserve room in the async queue for one job whose params are *size* bytes;
        QueueFull past a bound. Follow with :meth:`accept` or :meth:`unadmit`."""
        if self._closed:
            raise RuntimeError("the engine is shutting down")
        if self.queued_jobs >= self.max_queued_jobs:
            raise QueueFull(
                f"the async job queue is full ({self.max_queued_jobs} jobs waiting): "
                f"retry after {QUEUE_FULL_RETRY_AFTER} s"
            )
        if self.queued_jobs and self.queued_bytes + size > self.max_queued_bytes:
            raise QueueFull(
                f"the async job queue is full ({self.queued_bytes} bytes of params waiting, "
                f"at most {self.max_queued_bytes}): retry after {QUEUE_FULL_RETRY_AFTER} s"
            )
        self.queued_jobs += 1
        self.queued_bytes += size

    def unadmit(self, size: int) -> None:
        self.queued_jobs -= 1
        self.queued_bytes -= size

    async def accept(
        self,
        job: Job,
        function: FunctionFile,
        event: dict[str, Any],
        data_json: str,
    ) -> None:
        """Store an admitted async job (committed when this returns) and queue it. Once its
        write is queued, a caller cancelled meanwhile changes nothing: the commit's callback
        queues the job (a stored job is always queued), or frees its room if the write
        failed."""
        size = len(data_json)
        try:
            committed = await self._store.accept_queued(
                job.id,
                job.function_name,
                source=job.source,
                request_id=job.request_id,
                params=RawJSON(data_json),
                user_id=job.user_id,
                created_at=job.created_at,
            )
        except BaseException:  # not recorded (also when cancelled waiting for room)
            self.unadmit(size)
            self._forget(job.id)
            raise
        self._committing.add(committed)
        committed.add_done_callback(
            lambda done: self._committed(done, job.id, function, event, data_json)
        )
        await asyncio.shield(committed)

    def _committed(
        self,
        done: asyncio.Future[None],
        job_id: str,
        function: FunctionFile,
        event: dict[str, Any],
        data_json: str,
    ) -> None:
        self._committing.discard(done)
        if done.cancelled() or done.exception() is not None:
            self.unadmit(len(data_json))
            self._forget(job_id)
        else:
            self._enqueue(job_id, function, event, data_json)

    def resume(
        self, record: JobRecord, function: FunctionFile | None, event: dict[str, Any]
    ) -> None:
        """Queue again an async job the store still had waiting (at start-up)."""
        job = self.create(
            record.function_name,
            sync=False,
            source=record.source,
            request_id=record.request_id,
            user_id=record.user_id,
            job_id=record.id,
            created_at=record.created_at,
            attempts=record.attempts,
            rerun=record.rerun,
        )
        if function is None:
            self._finish(
                job.id,
                status="execution_failed",
                error_msg=f"cloud function {record.function_name!r} was not found when the "
                "engine started again",
            )
            return
        data_json = _to_json(record.params)
        self.queued_jobs += 1  # recovered jobs are never refused, even past the bound
        self.queued_bytes += len(data_json)
        self._enqueue(job.id, function, event, data_json)

    def _enqueue(
        self, job_id: str, function: FunctionFile, event: dict[str, Any], data_json: str
    ) -> None:
        self._queued_size[job_id] = len(data_json)
        try:
            self._queue_send.send_nowait((job_id, function, event, data_json, time.monotonic()))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # Shutting down: the job is stored and runs at the next start.
            self._dequeued(job_id)
            self._forget(job_id)

    def _dequeued(self, job_id: str) -> None:
        size = self._queued_size.pop(job_id, None)
        if size is not None:
            self.unadmit(size)

    # ---- running ----

    async def run_sync(
        self, job_id: str, function: FunctionFile, event: dict[str, Any], data_json: str
    ) -> Job:
        """Run a sync job now: wait at most ``schedule_wait`` for a slot, then run it; its
        record is written once it ended.

        One cancel scope serves the job's whole life: :meth:`close` cancels it at shutdown,
        and while the runtime runs the job its deadline is the backstop (an async job's is a
        scope of its own, see :meth:`_execute`)."""
        final: list[Job] = []
        with anyio.CancelScope() as scope:
            self._sync_scopes.add(scope)
            try:
                await self._schedule_and_run(
                    job_id,
                    function,
                    event,
                    data_json,
                    schedule_wait=self._schedule_wait,
                    urgent=True,
                    final=final,
                    scope=scope,
                )
            finally:
                self._sync_scopes.discard(scope)
        return final[0]

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run queued async jobs until cancelled; cancelling cancels them all.

        Jobs leave the queue in order, one at a time: the one at its head waits for a slot
        (after any sync call waiting, see :class:`_Slots`) and gets a task only with one. The
        platform retries an async job's scheduling for about as long as it may run, so a job
        still without a slot ``async_time_limit`` seconds after it was queued ends
        ``schedule_failed``; deadlines come in queue order, so the head's is always the next.
        """
        async with anyio.create_task_group() as tg:
            task_status.started()
            async with self._queue_receive:
                async for job_id, function, event, data_json, queued_at in self._queue_receive:
                    wait = queued_at + self.async_time_limit - time.monotonic()
                    try:
                        with anyio.move_on_after(wait) as waited:
                            await self._slots.acquire(urgent=False)
                    except anyio.get_cancelled_exc_class():
                        # Shutting down: stored as waiting, it runs at the next start.
                        self._dequeued(job_id)
                        self._forget(job_id)
                        raise
                    if waited.cancelled_caught:
                        self._finish(
                            job_id,
                            status=SCHEDULE_FAILED,
                            error_msg=(
                                f"cloud function {function.name!r} could not be scheduled: all "
                                f"{self._concurrency} execution slots stayed busy for "
                                f"{self.async_time_limit:g} s"
                            ),
                            data_json=data_json,
                        )
                        continue
                    tg.start_soon(self._run_async, job_id, function, event, data_json)

    def close(self) -> None:
        """Refuse new jobs and cancel running sync jobs (async ones stop with :meth:`serve`)."""
        self._closed = True
        self._queue_send.close()
        for scope in list(self._sync_scopes):
            scope.cancel()

    async def aclose(self) -> None:
        """After :meth:`serve` has stopped: let accepts under way land, and drop the async
        jobs still queued from memory. They stay waiting in the store and run at the next
        start; so do those cut off mid-run."""
        if self._committing:
            await asyncio.gather(*self._committing, return_exceptions=True)
        with self._queue_receive:
            while True:
                try:
                    job_id, _, _, _, _ = self._queue_receive.receive_nowait()
                except (anyio.EndOfStream, anyio.WouldBlock, anyio.ClosedResourceError):
                    break
                self._dequeued(job_id)
                self._forget(job_id)

    async def _run_async(
        self, job_id: str, function: FunctionFile, event: dict[str, Any], data_json: str
    ) -> None:
        """Run an async job on the slot :meth:`serve` took for it, and free the slot."""
        try:
            await self._execute(job_id, function, event, data_json, None)
        except anyio.get_cancelled_exc_class():
            # Only the engine's shutdown cancels jobs. Stored as executing, the job runs
            # again at the next start.
            self._dequeued(job_id)
            self._forget(job_id)
            raise
        except Exception:
            # A bug here must not take down serve()'s task group and every queued job with it.
            logger.exception("async job %s failed inside the engine", job_id)
            if job_id in self._inflight:
                self._finish(
                    job_id, status="execution_failed", error_msg="the engine failed to run the job"
                )
        finally:
            self._slots.release()

    async def _schedule_and_run(
        self,
        job_id: str,
        function: FunctionFile,
        event: dict[str, Any],
        data_json: str,
        *,
        schedule_wait: float,
        urgent: bool,
        final: list[Job] | None = None,
        scope: anyio.CancelScope | None = None,
    ) -> None:
        name = function.name
        try:
            if not self._slots.try_acquire():  # no cancel scope when a slot is free
                with anyio.move_on_after(schedule_wait) as waited:
                    await self._slots.acquire(urgent=urgent)
                waited_out = waited.cancelled_caught
            else:
                waited_out = False
            if waited_out:
                self._finish(
                    job_id,
                    status=SCHEDULE_FAILED,
                    error_msg=(
                        f"cloud function {name!r} could not be scheduled: all "
                        f"{self._concurrency} execution slots stayed busy for {schedule_wait:g} s"
                    ),
                    data_json=data_json,
                    final=final,
                )
                return
            try:
                await self._execute(job_id, function, event, data_json, final, scope)
            finally:
                self._slots.release()
        except anyio.get_cancelled_exc_class():
            # Only the engine's shutdown cancels jobs, and the backstop a sync job's scope.
            job = self._inflight.get(job_id)
            if job is not None:
                if job.sync and scope is not None and scope.cancel_called and not self._closed:
                    self._backstopped(job_id, data_json, final)  # (_execute set the deadline)
                elif job.sync:
                    self._finish(
                        job_id,
                        status="execution_rejected"
                        if job.status == "waiting"
                        else "execution_failed",
                        error_msg="the engine shut down before the job finished",
                        data_json=data_json,
                        final=final,
                    )
                else:
                    # Stored as waiting or executing: it runs (again) at the next start.
                    self._dequeued(job_id)
                    self._forget(job_id)
            raise

    async def _execute(
        self,
        job_id: str,
        function: FunctionFile,
        event: dict[str, Any],
        data_json: str,
        final: list[Job] | None,
        scope: anyio.CancelScope | None = None,
    ) -> None:
        """Run a job on the slot it holds. A sync job passes its own *scope*: the backstop
        is then that scope's deadline, set for the runtime's run only, and a cancellation
        by it reaches :meth:`_schedule_and_run` (a scope's deadline costs less than a scope
        of its own per job)."""
        job = self._inflight[job_id]
        name = job.function_name
        sync = job.sync
        limit = self.time_limit(sync=sync)
        started = time.time()
        self._inflight[job_id] = attrs.evolve(
            job, status="executing", started_at=started, attempts=job.attempts + 1
        )
        if not sync:
            self._dequeued(job_id)
            self._store.start_nowait(job_id, started_at=started)
        stats = self._stats.get(name, FunctionStats())
        in_flight = stats.in_flight + 1
        self._stats[name] = FunctionStats(
            stats.executions + 1, in_flight, max(stats.peak_in_flight, in_flight)
        )
        try:
            running = self._runner.run(
                function, event, time_limit=limit, data_json=data_json, on_log=self._echo(job_id)
            )
            if scope is not None:
                scope.deadline = anyio.current_time() + limit + RUNTIME_GRACE
                outcome = await running
                scope.deadline = math.inf
            else:
                with anyio.move_on_after(limit + RUNTIME_GRACE) as backstop:
                    outcome = await running
                if backstop.cancelled_caught:
                    self._backstopped(job_id, data_json, final)
                    return
        except Exception:
            logger.exception("running job %s of %r failed inside the engine", job_id, name)
            self._finish(
                job_id,
                status="execution_failed",
                error_msg=f"the engine failed to run cloud function {name!r} (see its log)",
                data_json=data_json,
                final=final,
            )
            return
        finally:
            stats = self._stats[name]
            self._stats[name] = FunctionStats(
                stats.executions, stats.in_flight - 1, stats.peak_in_flight
            )
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
            data_json=data_json,
            final=final,
        )

    def _backstopped(self, job_id: str, data_json: str, final: list[Job] | None) -> None:
        """The runtime overran its limit by ``RUNTIME_GRACE``: the backstop ended the job."""
        job = self._inflight[job_id]
        name = job.function_name
        logger.error("the runtime did not stop job %s of %r at its limit", job_id, name)
        self._finish(
            job_id,
            status="deadline_exceeded",
            error_msg=timed_out_message(name, self.time_limit(sync=job.sync)),
            data_json=data_json,
            final=final,
        )

    def _finish(
        self,
        job_id: str,
        *,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        log: str = "",
        mem_usage: int = 0,
        execution_time_ms: float = 0.0,
        error_msg: str | None = None,
        data_json: str = "null",
        final: list[Job] | None = None,
    ) -> None:
        """Record the job's end (not waiting for the commit: a lost finish only means the
        job runs again) and forget it from memory."""
        job = self._inflight[job_id]
        ended = time.time()
        if final is not None or self._console is not None:
            ended_job = attrs.evolve(
                job,
                status=status,
                finished_at=ended,
                result=result,
                log=log,
                mem_usage=mem_usage,
                execution_time_ms=execution_time_ms,
                error_msg=error_msg,
            )
            if final is not None:
                final.append(ended_job)
            if self._console is not None:
                self._console.job_finished(ended_job)
        try:
            if job.sync:
                self._store.record_nowait(
                    EndedJob(
                        job_id,
                        job.function_name,
                        True,
                        job.source,
                        job.request_id,
                        RawJSON(data_json),
                        status,
                        job.created_at,
                        job.started_at,
                        ended,
                        job.user_id,
                        result,
                        log,
                        error_msg,
                        execution_time_ms,
                        mem_usage,
                    )
                )
            else:
                self._dequeued(job_id)
                self._store.finish_nowait(
                    job_id,
                    status=status,
                    result=result,
                    log=log,
                    error_msg=error_msg,
                    execution_time_ms=execution_time_ms,
                    mem_usage=mem_usage,
                    finished_at=ended,
                )
        except (RuntimeError, KeyError) as exc:  # the store closed under a stuck job
            logger.error("could not record the end of job %s: %s", job_id, exc)
        self._forget(job_id)

    def _echo(self, job_id: str) -> Callable[[str], None] | None:
        console = self._console
        if console is None:
            return None
        job = self._inflight[job_id]
        return lambda line: console.log_line(job, line)

    def _forget(self, job_id: str) -> None:
        self._inflight.pop(job_id, None)
        done = self._done.pop(job_id, None)
        if done is not None:
            done.set()
        if not self._inflight:
            self._idle.set()


_to_json: Final = json.JSONEncoder(separators=(",", ":")).encode
