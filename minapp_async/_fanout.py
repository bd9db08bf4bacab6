"""Fan-out: one cloud function invoked for every item of a stream, bounded and in order.

``session.map(name, params)`` runs at most ``concurrency`` calls at once and reads *params*
lazily: an item is taken from the input only when there is room for it, so a generator of ten
million items is never materialised. ``session.invoke_many`` collects the same into a
``Batch`` with a ``Summary``.

Design. The calls run in plain asyncio tasks owned by the ``FanOut`` object, never in an anyio
task group: a task group's cancel scope cannot stay open across the ``yield`` of an async
iterator, because the iterator may be closed from another task (the event loop's async
generator finaliser) or not at all. Instead:

* up to ``concurrency`` *worker* tasks, started on demand, each take the next item and invoke
  it. Being a worker *is* the concurrency slot, and it is held before ``session.invoke()``
  serialises the params and before auth runs, so no request is signed and then left waiting
  (aiobotocore#864). Workers never raise: an outcome or a failure is handed to the consumer.
* a *window* bounds memory: no item is taken while ``window`` items are taken but not yet
  yielded. In input order, a slow head item therefore stops new launches once the window is
  full, instead of buffering results without limit.
* ``aclose()`` cancels the workers and waits for them (bounded), so every connection goes back
  to the pool and no task outlives the map. ``async with session.map(...) as outcomes`` calls
  it deterministically. Plain ``async for`` works too: ending the loop normally, an error, or
  cancelling the consuming task closes at once; ``break`` drops the async generator that
  ``__aiter__`` returns, and asyncio's async generator finaliser closes it on the next loop
  iteration (the same promise Python makes for any async generator). The Session keeps a
  weak set of its live maps and closes them in its own ``aclose()``: no map task outlives it.
* an error raised by the input is kept until the calls in flight have finished and every
  finished outcome was yielded: completed work is never discarded.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import math
import time
import warnings
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, NoReturn, TypeAlias

import anyio
import attrs

from ._errors import HError, InvalidArgumentError
from ._invoke import InvokeResult, check_name, check_sync
from ._logs import get_logger
from ._options import check_call_timeout
from ._types import JSON, NotGiven

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Batch", "FanOut", "MapOptions", "Outcome", "PoolSizeWarning", "Progress", "Summary"]

logger = get_logger()

#: ``progress(done, total)``: calls finished so far, and the input's length when it has one.
Progress: TypeAlias = Callable[[int, "int | None"], None]
ErrorPolicy: TypeAlias = Literal["raise", "collect"]
#: One call of the fan-out: the item's params in, its result out. It checks and serialises
#: the params when called, after the worker took its concurrency slot.
Call: TypeAlias = Callable[[JSON], Awaitable[InvokeResult]]

#: How long ``aclose()`` waits for cancelled calls to unwind; they need one loop iteration or
#: two, so reaching this means something swallowed a cancellation (it is logged).
_CLOSE_TIMEOUT: Final = 10.0


class PoolSizeWarning(UserWarning):
    """A fan-out's concurrency is larger than the Session's connection pool: the extra calls
    wait for a free connection (and may raise ``PoolTimeoutError``) instead of running."""


@attrs.define  # not frozen, as InvokeResult: one is built per item
class Outcome:
    """One item's outcome.

    Attributes:
        index: the item's position in the input, from 0.
        params: the item itself, as it was passed to ``invoke``.
        result: the ``InvokeResult`` when a reply came (also when the function failed:
            ``result.code != 0``); None when the call raised.
        error: the ``HError`` the call raised, else None.
        latency: seconds from taking the concurrency slot to the outcome (pool wait, auth,
            send, the function's run and retries included).
    """

    index: int
    params: JSON = attrs.field(repr=False)
    result: InvokeResult | None
    error: HError | None
    latency: float

    @property
    def ok(self) -> bool:
        """The call succeeded and the function ran without error (``code == 0``)."""
        return self.error is None and self.result is not None and self.result.code == 0


@attrs.frozen
class Summary:
    """How a batch went.

    Attributes:
        total: outcomes counted.
        ok: calls whose function succeeded (``code == 0``).
        failed: calls whose function ran and failed (``code != 0``).
        errors: calls that raised, counted by ``HError.code`` (e.g. ``{601: 2, 429: 1}``).
        latency_p50, latency_p95, latency_max: per-call latency in seconds (nearest rank).
        elapsed: seconds from the first call to the last outcome.
        calls_per_second: ``total / elapsed``.
    """

    total: int
    ok: int
    failed: int
    errors: Mapping[int, int]
    latency_p50: float
    latency_p95: float
    latency_max: float
    elapsed: float
    calls_per_second: float

    @classmethod
    def of(cls, outcomes: Iterable[Outcome], elapsed: float) -> Summary:
        """Count *outcomes*; *elapsed* is the wall time they took."""
        ok = failed = 0
        errors: dict[int, int] = {}
        latencies: list[float] = []
        for o in outcomes:
            latencies.append(o.latency)
            if o.error is not None:
                errors[o.error.code] = errors.get(o.error.code, 0) + 1
            elif o.ok:
                ok += 1
            else:
                failed += 1
        latencies.sort()
        total = len(latencies)
        return cls(
            total=total,
            ok=ok,
            failed=failed,
            errors=dict(sorted(errors.items())),
            latency_p50=_rank(latencies, 0.50),
            latency_p95=_rank(latencies, 0.95),
            latency_max=latencies[-1] if latencies else 0.0,
            elapsed=elapsed,
            calls_per_second=total / elapsed if elapsed > 0 else 0.0,
        )

    def __str__(self) -> str:
        errors = ", ".join(f"{n}x {code}" for code, n in self.errors.items()) or "none"
        return (
            f"{self.total} calls: {self.ok} ok, {self.failed} failed, errors: {errors}; "
            f"latency p50 {self.latency_p50 * 1000:.1f} ms, p95 {self.latency_p95 * 1000:.1f} "
            f"ms, max {self.latency_max * 1000:.1f} ms; {self.elapsed:.2f} s, "
            f"{self.calls_per_second:.0f} calls/s"
        )


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of an ascending list (0.0 for none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@attrs.frozen
class Batch:
    """What ``invoke_many`` returns: every outcome in input order, and a summary."""

    outcomes: list[Outcome]
    summary: Summary


@attrs.frozen
class MapOptions:
    """How ``map``/``invoke_many`` run: built only through ``of``, which checks every value."""

    sync: bool
    concurrency: int
    rate: float | None
    ordered: bool
    window: int | None
    errors: ErrorPolicy
    timeout: float | None | NotGiven
    progress: Progress | None

    @classmethod
    def of(
        cls,
        function_name: object,
        params: object,
        *,
        sync: bool,
        concurrency: int,
        rate: float | None,
        ordered: bool,
        window: int | None,
        errors: ErrorPolicy,
        timeout: float | None | NotGiven,
        progress: Progress | None,
    ) -> MapOptions:
        """605 for anything ``map``/``invoke_many`` cannot use, before anything runs."""
        check_name(function_name)
        check_sync(sync)
        if isinstance(params, Mapping | str | bytes | bytearray) or not isinstance(
            params, Iterable | AsyncIterable
        ):
            # A dict would be iterated over its keys: almost certainly one params object
            # passed where a stream of them was meant.
            raise InvalidArgumentError(
                "params must be an iterable or async iterable of params, one item per call, "
                f"not {type(params).__name__} (for one call, wrap it in a list)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be an int >= 1, not {concurrency!r}")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf
        ):
            raise InvalidArgumentError(
                f"rate must be a positive number of calls per second or None, not {rate!r}"
            )
        if not isinstance(ordered, bool):
            raise InvalidArgumentError(f"ordered must be True or False, not {ordered!r}")
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < concurrency
        ):
            raise InvalidArgumentError(
                f"window must be an int >= concurrency ({concurrency}) or None, not {window!r}"
            )
        if errors not in ("raise", "collect"):
            raise InvalidArgumentError(f"errors must be 'raise' or 'collect', not {errors!r}")
        check_call_timeout(timeout)
        if progress is not None and (
            not callable(progress) or inspect.iscoroutinefunction(progress)
        ):
            # It is called from the calls' tasks, in between two steps: it must not block.
            raise InvalidArgumentError("progress must be a plain function (done, total) or None")
        return cls(sync, concurrency, rate, ordered, window, errors, timeout, progress)


def warn_if_pool_too_small(pool: int, concurrency: int, *, stacklevel: int) -> None:
    """``PoolSizeWarning`` when *concurrency* calls cannot all have one of *pool* connections
    (0: an unbounded pool)."""
    if pool and concurrency > pool:
        warnings.warn(
            f"concurrency={concurrency} is more than the Session's connection pool ({pool}): "
            f"only {pool} calls run at once and the rest wait for a connection, which raises "
            "PoolTimeoutError if Timeouts.pool (or the call's deadline) passes first; create "
            f"the Session with limits=Limits(max_connections={concurrency}) or lower the "
            "concurrency",
            PoolSizeWarning,
            stacklevel=stacklevel + 1,
        )


class FanOut:
    """The async iterator ``session.map()`` returns: ``Outcome`` by ``Outcome``.

    Nothing runs until the first outcome is asked for. Use it as ``async with session.map(...)
    as outcomes: async for o in outcomes: ...`` for deterministic clean-up; a plain
    ``async for`` also works (see the module docstring). Outcomes are for one consuming task
    at a time.
    """

    def __init__(
        self,
        call: Call,
        function_name: str,
        params: Iterable[JSON] | AsyncIterable[JSON],
        options: MapOptions,
    ) -> None:
        """*call* invokes the function for one item; *function_name* names the tasks and
        errors; *options* were checked by ``MapOptions.of``."""
        self._call = call
        self._name = function_name
        concurrency = options.concurrency
        self._concurrency = concurrency
        self._window = options.window if options.window is not None else 2 * concurrency
        self._interval = 1.0 / options.rate if options.rate is not None else 0.0
        self._ordered = options.ordered
        self._collect = options.errors == "collect"
        self._progress = options.progress
        self._total = len(params) if isinstance(params, collections.abc.Sized) else None
        self._source: Iterable[JSON] | AsyncIterable[JSON] | None = params
        self._items: Iterator[JSON] | None = None
        self._aitems: AsyncIterator[JSON] | None = None
        # Taking an item is a critical section with awaits in it only for an async input or
        # a rate limit; a plain iterator without one is taken in one step, lock-free.
        self._lock: asyncio.Lock | None = None
        self._next_start = 0.0  # loop time at which the rate limit allows the next start

        self._tasks: set[asyncio.Task[None]] = set()
        self._workers = 0  # worker tasks still running
        self._taken = 0  # items taken from the input (the next item's index)
        self._yielded = 0  # outcomes handed to the consumer
        self._done = 0  # calls finished, for progress
        self._ready: dict[int, Outcome] = {}  # ordered: finished, waiting for their turn
        self._queue: collections.deque[Outcome] = collections.deque()  # unordered
        self._space: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None  # the consumer, waiting
        self._failure: BaseException | None = None
        # Raised once every outcome already finished was yielded: the input's own error, or
        # SessionClosedError when the Session closed the map.
        self._end_error: BaseException | None = None
        self._started = False
        self._exhausted = False  # the input has no more items
        self._stopping = False  # take nothing more: failure or close
        self._closed = False
        self._managed = False  # entered with `async with`: __aexit__ owns the clean-up

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "not started"
        return (
            f"<FanOut {self._name!r} {state} taken={self._taken} yielded={self._yielded} "
            f"in_flight={self.in_flight}>"
        )

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return self._taken - self._done

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._managed = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop taking items, cancel the calls in flight and wait until they have let go of
        their connections. Idempotent."""
        if self._closed:
            return
        self._closed = self._stopping = True
        self._source = None
        self._wake_all()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await _wait_cancelled(tasks)

    async def close_with(self, error: BaseException) -> None:
        """``aclose()`` on behalf of the Session: the consumer still gets the outcomes
        already finished, then *error* instead of a quiet end when calls were cut off or
        items were left untaken."""
        lost = not (self._exhausted and self._workers == 0)  # else every call has finished
        if not self._closed and self._end_error is None and lost:
            self._end_error = error
        await self.aclose()

    # -- iteration ---------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._iterate()

    def __iter__(self) -> NoReturn:
        # Without this, a plain ``for`` says only "'FanOut' object is not iterable".
        raise TypeError(
            "session.map(...) is an async iterator: use 'async for o in session.map(...)' "
            "(or 'async with session.map(...) as outcomes: async for o in outcomes')"
        )

    async def _iterate(self) -> AsyncIterator[Outcome]:
        try:
            while True:
                # A ready outcome is handed over without a coroutine: this runs per item.
                # _next() handles the rest: a failure, waiting, and a second consumer.
                ready = self._failure is None and self._waiter is None
                outcome = self._ready_outcome() if ready else None
                if outcome is None:
                    try:
                        outcome = await self._next()
                    except StopAsyncIteration:
                        return
                yield outcome
        finally:
            # Without `async with`, leaving the loop (break, error, garbage collection) is
            # the only signal that the outcomes are no longer wanted.
            if not self._managed:
                await self.aclose()

    def _ready_outcome(self) -> Outcome | None:
        """The next outcome to yield if it is there, else None."""
        if self._ordered:
            outcome = self._ready.pop(self._yielded, None)
        else:
            outcome = self._queue.popleft() if self._queue else None
        if outcome is not None:
            self._yielded += 1
            self._make_space()
        return outcome

    async def _next(self) -> Outcome:
        if self._waiter is not None:
            raise RuntimeError("map() outcomes are being awaited by another task already")
        if not self._started:
            self._start()
        while True:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                await self.aclose()
                raise failure
            outcome = self._ready_outcome()
            if outcome is not None:
                return outcome
            if self._workers == 0 or self._closed:
                await self.aclose()
                end, self._end_error = self._end_error, None
                if end is not None:
                    raise end
                raise StopAsyncIteration
            # A cancelled consumer leaves through __aexit__ or _iterate's finally, which
            # cancel the calls it was waiting for.
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _start(self) -> None:
        self._started = True
        source = self._source
        if isinstance(source, AsyncIterable):
            self._aitems = aiter(source)
            self._lock = asyncio.Lock()
        elif source is not None:
            self._items = iter(source)
            if self._interval:
                self._lock = asyncio.Lock()
        else:
            self._exhausted = True
            return
        self._spawn()

    def _spawn(self) -> None:
        self._workers += 1
        task = asyncio.get_running_loop().create_task(
            self._work(), name=f"minapp-async-map-{self._name}-{self._workers}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- workers -----------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while True:
                if self._lock is None and self._taken - self._yielded < self._window:
                    taken = self._take_next()  # the common case, without a coroutine
                elif self._lock is None:
                    taken = await self._take()
                else:
                    async with self._lock:
                        taken = await self._take()
                if taken is None:
                    return
                index, item = taken
                if self._workers < self._concurrency and not self._exhausted:
                    self._spawn()  # ramp up: one more worker per item taken, up to the limit
                started = time.perf_counter()
                try:
                    # invoke() validates and serialises here, after the slot was taken.
                    result = await self._call(item)
                except HError as err:
                    if not self._collect:
                        self._fail(err, index)
                        return
                    outcome = Outcome(index, item, None, err, time.perf_counter() - started)
                else:
                    outcome = Outcome(index, item, result, None, time.perf_counter() - started)
                self._deliver(outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a guard: workers hand every failure over
            self._fail(exc, None)
        finally:
            self._workers -= 1
            if self._workers == 0:
                self._wake_consumer()

    async def _take(self) -> tuple[int, JSON] | None:
        """The next item and its index, once the window has room and the rate allows it;
        None when the input is exhausted or the map is stopping."""
        while self._taken - self._yielded >= self._window and not (
            self._stopping or self._exhausted
        ):
            space = asyncio.get_running_loop().create_future()
            self._space.append(space)
            await space
        if self._interval and not (self._stopping or self._exhausted):
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
            if start > now:
                await asyncio.sleep(start - now)
        if self._aitems is None:
            return self._take_next()
        if self._stopping or self._exhausted:
            return None
        try:
            item = await anext(self._aitems)
        except StopAsyncIteration:
            self._end_of_input()
            return None
        except Exception as exc:  # noqa: BLE001 - the input's error, raised after the outcomes
            self._input_failed(exc)
            return None
        index = self._taken
        self._taken = index + 1
        return index, item

    def _take_next(self) -> tuple[int, JSON] | None:
        """The next item of a plain iterable and its index, once it may be taken."""
        if self._stopping or self._exhausted:
            return None
        assert self._items is not None
        try:
            item = next(self._items)
        except StopIteration:
            self._end_of_input()
            return None
        except Exception as exc:  # noqa: BLE001 - the input's error, raised after the outcomes
            self._input_failed(exc)
            return None
        index = self._taken
        self._taken = index + 1
        return index, item

    def _end_of_input(self) -> None:
        self._exhausted = True
        self._items = self._aitems = None
        self._wake_all()

    def _input_failed(self, exc: Exception) -> None:
        """The input raised: take nothing more, let the calls in flight finish, and raise
        *exc* to the consumer once every finished outcome was yielded (none is lost)."""
        if self._end_error is None and not self._stopping:
            self._end_error = exc
        self._end_of_input()

    def _deliver(self, outcome: Outcome) -> None:
        if self._ordered:
            self._ready[outcome.index] = outcome
            if outcome.index == self._yielded:
                self._wake_consumer()
        else:
            self._queue.append(outcome)
            self._wake_consumer()
        self._done += 1
        if self._progress is not None:
            try:
                self._progress(self._done, self._total)
            except Exception:
                logger.warning("progress callback %r failed", self._progress, exc_info=True)

    def _fail(self, exc: BaseException, index: int | None) -> None:
        """Stop on the first failure: cancel the other calls and tell the consumer."""
        if self._stopping:  # closing, or an earlier failure: this one is a consequence
            return
        if index is not None and hasattr(exc, "add_note"):
            exc.add_note(f"raised by map() item {index} of {self._name!r}")
        self._failure = exc
        self._stopping = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._wake_all()

    # -- wake-ups ----------------------------------------------------------------------------

    def _wake_consumer(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _make_space(self) -> None:
        """One outcome was yielded: one waiting worker may take an item."""
        while self._space:
            space = self._space.popleft()
            if not space.done():
                space.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._space:
            space = self._space.popleft()
            if not space.done():
                space.set_result(None)
        self._wake_consumer()


async def _wait_cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Wait (bounded) for cancelled tasks to finish, even if the waiting task is cancelled
    meanwhile: their connections must be back in the pool before the caller goes on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CLOSE_TIMEOUT
    pending = set(tasks)
    interrupted: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning(
                    "%d map() calls did not stop within %g s", len(pending), _CLOSE_TIMEOUT
                )
                break
            try:
                _, pending = await asyncio.wait(pending, timeout=remaining)
            except asyncio.CancelledError as exc:
                interrupted = exc
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: workers hand failures over, this is only a guard
    if interrupted is not None:
        raise interrupted


async def collect(fanout: FanOut) -> Batch:
    """Run *fanout* to the end: every outcome in input order, and a summary."""
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    async with fanout:
        async for outcome in fanout:
            outcomes.append(outcome)
    elapsed = time.perf_counter() - started
    outcomes.sort(key=_index)
    return Batch(outcomes, Summary.of(outcomes, elapsed))


def _index(outcome: Outcome) -> int:
    return outcome.index
