"""Fan-out (session.map / invoke_many) against a real HTTP server on 127.0.0.1.

The job endpoint here answers by what each item asks for (its index back, a delay, an error
status, or "hold until released") and keeps a server-side gauge of concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from aiohttp import web
from fakeserver import CLIENT_ID, FakeServer
from support import wait_until

import minapp_async
from minapp_async import HError, Outcome, Session

pytestmark = pytest.mark.anyio

JOB_PATH = "/hserve/v1/cloud-function/job/"
NO_RETRY = minapp_async.Retry(attempts=1)


@attrs.define
class JobServer:
    """Answers each job by its params: ``{"i": n}`` gives data n; ``"sleep"`` seconds first;
    ``"status"`` an HTTP error; ``"code"`` a failed run; ``"hold"`` waits for ``release``."""

    in_flight: int = 0
    peak: int = 0
    seen: list[int] = attrs.field(factory=list)
    finished: int = 0
    disconnected: int = 0
    release: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        data: dict[str, Any] = body.get("data") or {}
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.seen.append(data.get("i", -1))
        try:
            while data.get("hold") and not self.release.is_set():
                # aiohttp does not cancel a handler whose client went away: look for it.
                if request.transport is None or request.transport.is_closing():
                    self.disconnected += 1
                    return web.Response(status=499)
                with anyio.move_on_after(0.005):
                    await self.release.wait()
            if data.get("sleep"):
                await asyncio.sleep(data["sleep"])
        finally:
            self.in_flight -= 1
        self.finished += 1
        if "status" in data:
            return web.json_response({"error_msg": "boom"}, status=data["status"])
        code = data.get("code", 0)
        error = {"message": "failed"} if code else {}
        return web.json_response({"code": code, "data": data.get("i"), "error": error})


@pytest.fixture(name="jobs")
async def _jobs(server: FakeServer) -> AsyncIterator[JobServer]:
    """The job endpoint of the recording server, answering by each item's params."""
    jobs = JobServer()
    server.handlers[JOB_PATH] = jobs.handle
    yield jobs
    jobs.release.set()  # no handler is left holding when the server stops


@pytest.fixture(name="s")
async def _s(server: FakeServer) -> AsyncIterator[Session]:
    """A Session on the recording server without retries (each item is one request)."""
    async with Session(CLIENT_ID, base_url=server.url, token="tok", retry=NO_RETRY) as s:
        yield s


class Counted:
    """An input generator that records how many items were read from it."""

    def __init__(self, items: Callable[[int], dict[str, Any]], n: int) -> None:
        self.read = 0
        self._items, self._n = items, n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._n):
            self.read = i + 1
            yield self._items(i)


def map_tasks() -> list[asyncio.Task[Any]]:
    """The fan-out's worker tasks still alive."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("minapp-async-map")]


def clean(s: Session) -> bool:
    """No worker task left and no connection checked out."""
    return not map_tasks() and s.pool_stats.in_use == 0


# -- order, laziness, bounds -------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False])
async def test_input_read_lazily_within_the_window(
    s: Session, jobs: JobServer, ordered: bool
) -> None:
    """The input is never read more than window items ahead of the outcomes yielded."""
    source = Counted(lambda i: {"i": i, "sleep": 0.002 * (i % 3)}, 300)
    ahead = []
    async with s.map("f", source, concurrency=8, ordered=ordered) as outcomes:
        yielded = 0
        async for o in outcomes:
            yielded += 1
            assert o.ok
            ahead.append(source.read - yielded)
            if yielded % 25 == 1:
                # A slow consumer: the calls run ahead as far as they may, and no further.
                def ran_ahead(n: int = yielded) -> bool:
                    return source.read - n >= 16 or source.read == 300

                await wait_until(ran_ahead)
                ahead.append(source.read - yielded)

    assert 300 == source.read
    assert 16 == max(ahead)  # window = 2 * concurrency


async def test_huge_generator_is_never_materialised(s: Session, jobs: JobServer) -> None:
    """Ten million items: only what the window allows is ever read."""
    source = Counted(lambda i: {"i": i}, 10_000_000)
    got = []
    async with s.map("f", source, concurrency=4) as outcomes:
        async for o in outcomes:
            got.append(o.result.data if o.result else None)
            if len(got) == 50:
                break

    assert list(range(50)) == got
    assert source.read <= 50 + 8
    assert clean(s)


async def test_slow_head_keeps_order_and_stops_launches(s: Session, jobs: JobServer) -> None:
    """A slow first item: the rest wait in order, and no item past the window is taken."""
    source = Counted(lambda i: {"i": i, "hold": i == 0}, 40)
    got: list[int] = []

    async def consume() -> None:
        async with s.map("f", source, concurrency=4, window=8) as outcomes:
            async for o in outcomes:
                assert o.result is not None
                got.append(o.result.data)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        # Items 1-7 finish while 0 is held; then the window (8) is full.
        await wait_until(lambda: jobs.finished == 7)
        assert 8 == source.read
        assert [] == got
        assert 1 == jobs.in_flight
        jobs.release.set()

    assert list(range(40)) == got


async def test_unordered_yields_as_completed(s: Session, jobs: JobServer) -> None:
    """ordered=False yields the others while a held item is still running."""
    items = [{"i": i, "hold": i == 0} for i in range(6)]
    got: list[int] = []
    async with s.map("f", items, concurrency=6, ordered=False) as outcomes:
        async for o in outcomes:
            assert o.result is not None
            got.append(o.result.data)
            if len(got) == 5:
                jobs.release.set()

    assert [1, 2, 3, 4, 5] == sorted(got[:5])
    assert 0 == got[5]


async def test_concurrency_never_exceeded(s: Session, jobs: JobServer) -> None:
    """With every call held, exactly `concurrency` requests are in flight, never more."""
    source = Counted(lambda i: {"i": i, "hold": True}, 100)

    async def consume() -> list[Outcome]:
        return [o async for o in s.map("f", source, concurrency=5)]

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await wait_until(lambda: jobs.in_flight == 5)
        # Five workers, each holding one item; no sixth call was started.
        assert (5, 5) == (source.read, s.pool_stats.in_use)
        jobs.release.set()

    assert 5 == jobs.peak
    assert sorted(jobs.seen) == list(range(100))
    assert clean(s)


async def test_concurrency_larger_than_input(s: Session, jobs: JobServer) -> None:
    """Fewer items than slots: every item runs once, and workers are only made as needed."""
    outcomes = [o async for o in s.map("f", [{"i": 0}, {"i": 1}], concurrency=100)]

    assert [0, 1] == [o.result.data for o in outcomes if o.result]
    assert [0, 1] == [o.index for o in outcomes]
    assert clean(s)


async def test_empty_input(s: Session, jobs: JobServer) -> None:
    """No items: no outcome, no request."""
    assert [] == [o async for o in s.map("f", [])]
    assert [] == jobs.seen


async def test_async_iterable_input(s: Session, jobs: JobServer) -> None:
    """An async generator is consumed lazily, and outcomes keep its order."""
    read = 0

    async def items() -> AsyncIterator[dict[str, Any]]:
        nonlocal read
        for i in range(50):
            read = i + 1
            await anyio.lowlevel.checkpoint()
            yield {"i": i, "sleep": 0.001 * (i % 4)}

    got = []
    async with s.map("f", items(), concurrency=4) as outcomes:
        async for o in outcomes:
            assert o.result is not None
            got.append(o.result.data)
            assert read - len(got) <= 8

    assert list(range(50)) == got


async def test_outcome_fields(s: Session, jobs: JobServer) -> None:
    """Each outcome carries its index, params, result and a latency."""
    items = [{"i": 0}, {"i": 1, "code": 7}]
    first, second = [o async for o in s.map("f", items)]

    assert (0, {"i": 0}, True, None) == (first.index, first.params, first.ok, first.error)
    assert first.result is not None and first.result.data == 0
    # A function that ran and failed is a result, not an error: it does not stop the map.
    assert (1, False, None) == (second.index, second.ok, second.error)
    assert second.result is not None and 7 == second.result.code
    assert 0 < first.latency < 10


# -- errors ------------------------------------------------------------------------------------


async def test_errors_raise_cancels_the_rest(s: Session, jobs: JobServer) -> None:
    """errors="raise": the first HError is raised and the held calls are cancelled."""
    items = [{"i": i, "hold": i != 3, **({"status": 500} if i == 3 else {})} for i in range(8)]

    with pytest.raises(minapp_async.ServerError) as info:
        async for _ in s.map("f", items, concurrency=8):
            pass

    assert 500 == info.value.code
    if sys.version_info >= (3, 11):  # add_note() is new in 3.11
        assert ["raised by map() item 3 of 'f'"] == info.value.__notes__
    assert clean(s)
    await wait_until(lambda: jobs.disconnected == 7)


async def test_errors_collect_yields_everything(s: Session, jobs: JobServer) -> None:
    """errors="collect": every item's outcome, the failed ones with .error set."""
    items = [{"i": i, **({"status": 400} if i in (2, 5) else {})} for i in range(8)]
    outcomes = [o async for o in s.map("f", items, concurrency=3, errors="collect")]

    assert list(range(8)) == [o.index for o in outcomes]
    assert [2, 5] == [o.index for o in outcomes if o.error is not None]
    assert all(isinstance(o.error, minapp_async.BadRequestError) for o in outcomes if o.error)
    assert all(o.result is None for o in outcomes if o.error)
    assert 6 == sum(o.ok for o in outcomes)


async def test_unserialisable_item_is_that_items_605(s: Session, jobs: JobServer) -> None:
    """An item that is not JSON fails alone with 605; the others are sent."""
    items: list[Any] = [{"i": 0}, {"i": 1, "bad": {1, 2}}, {"i": 2}]
    outcomes = [o async for o in s.map("f", items, errors="collect")]

    bad = outcomes[1].error
    assert isinstance(bad, minapp_async.InvalidArgumentError) and 605 == bad.code
    assert [0, 2] == sorted(jobs.seen)


async def test_failing_input_is_raised(s: Session, jobs: JobServer) -> None:
    """An exception from the input generator ends the map with that exception."""

    def items() -> Iterator[dict[str, Any]]:
        yield {"i": 0}
        yield {"i": 1, "hold": True}
        raise LookupError("the input broke")

    with pytest.raises(LookupError, match="the input broke"):
        async for _ in s.map("f", items(), errors="collect"):
            pass

    assert clean(s)


BAD_ARGUMENTS = [
    ({"params": {"i": 1}}, "iterable or async iterable of params"),
    ({"params": "abc"}, "not str"),
    ({"params": 5}, "not int"),
    ({"concurrency": 0}, "concurrency must be an int >= 1"),
    ({"concurrency": True}, "concurrency must be"),
    ({"rate": 0}, "rate must be a positive number"),
    ({"rate": float("inf")}, "rate must be"),
    ({"errors": "ignore"}, "errors must be 'raise' or 'collect'"),
    ({"timeout": -1}, "timeout must be a positive number"),
    ({"progress": 3}, "progress must be a plain function"),
    ({"function_name": ""}, "function_name must be a non-empty str"),
    ({"sync": "yes"}, "sync must be True or False"),
]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        *BAD_ARGUMENTS,
        ({"window": 2, "concurrency": 4}, r"window must be an int >= concurrency \(4\)"),
        ({"ordered": 1}, "ordered must be True or False"),
    ],
)
async def test_bad_map_arguments_are_605_at_once(
    s: Session, kwargs: dict[str, Any], match: str
) -> None:
    """A bad argument raises InvalidArgumentError when map() is called, naming it."""
    with pytest.raises(minapp_async.InvalidArgumentError, match=match):
        s.map(**{"function_name": "f", "params": [], **kwargs})


@pytest.mark.parametrize(("kwargs", "match"), BAD_ARGUMENTS)
async def test_bad_invoke_many_arguments_are_605(
    s: Session, jobs: JobServer, kwargs: dict[str, Any], match: str
) -> None:
    """invoke_many checks its arguments before any call is made."""
    with pytest.raises(minapp_async.InvalidArgumentError, match=match):
        await s.invoke_many(**{"function_name": "f", "params": [{"i": 0}], **kwargs})
    assert [] == jobs.seen


async def test_async_progress_callback_is_refused(s: Session) -> None:
    """An async progress callback would never be awaited: refused with 605."""

    async def progress(done: int, total: int | None) -> None:
        pass

    with pytest.raises(minapp_async.InvalidArgumentError, match="plain function"):
        s.map("f", [], progress=progress)  # type: ignore[arg-type]


async def test_closed_session_refuses(server: FakeServer) -> None:
    """map() on a closed Session raises SessionClosedError at once."""
    s = Session(CLIENT_ID, base_url=server.url, token="tok")
    await s.aclose()
    with pytest.raises(minapp_async.SessionClosedError):
        s.map("f", [{}])


# -- cancellation and clean-up -----------------------------------------------------------------


async def test_break_inside_async_with_cleans_up_at_once(s: Session, jobs: JobServer) -> None:
    """Leaving the async with block cancels the calls in flight and frees their connections."""
    items = [{"i": i, "hold": i > 0} for i in range(20)]
    async with s.map("f", items, concurrency=6) as outcomes:
        async for o in outcomes:
            assert 0 == o.index
            await wait_until(lambda: jobs.in_flight == 6)
            break

    assert clean(s)
    await wait_until(lambda: jobs.disconnected == 6)


async def test_break_in_plain_async_for_cleans_up(s: Session, jobs: JobServer) -> None:
    """A plain async for left with break is closed by the loop's async generator finaliser."""
    items = [{"i": i, "hold": i > 0} for i in range(20)]
    async for o in s.map("f", items, concurrency=6):
        assert 0 == o.index
        await wait_until(lambda: jobs.in_flight == 6)
        break

    await wait_until(lambda: clean(s))
    await wait_until(lambda: jobs.disconnected == 6)


async def test_cancelling_the_consumer_cleans_up(s: Session, jobs: JobServer) -> None:
    """Cancelling the task that iterates cancels the calls before the cancellation ends."""
    items = [{"i": i, "hold": True} for i in range(20)]
    seen_in_use: list[int] = []

    async def consume() -> None:
        try:
            async for _ in s.map("f", items, concurrency=4):
                pass
        finally:
            seen_in_use.append(s.pool_stats.in_use)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await wait_until(lambda: jobs.in_flight == 4)
        tg.cancel_scope.cancel()

    assert [0] == seen_in_use  # already free when the consumer's own clean-up ran
    assert clean(s)


async def test_deadline_around_the_loop(s: Session, jobs: JobServer) -> None:
    """anyio.move_on_after around the loop stops it and leaves nothing behind."""
    items = [{"i": i, "hold": i >= 3} for i in range(50)]
    got = []
    with anyio.move_on_after(30) as scope:
        async with s.map("f", items, concurrency=4) as outcomes:
            async for o in outcomes:
                got.append(o.index)
                if o.index == 2:  # the rest hang: let the deadline fall due while they do
                    scope.deadline = anyio.current_time() + 0.1

    assert scope.cancelled_caught
    assert [0, 1, 2] == got
    assert clean(s)


async def test_cancelled_thousand_calls_leave_nothing(s: Session, jobs: JobServer) -> None:
    """A big map cancelled mid-flight: no task, no checked-out connection; the Session works."""
    items = ({"i": i, "hold": i % 50 == 49} for i in range(100_000))
    with anyio.move_on_after(1.0):
        async for _ in s.map("f", items, concurrency=64, ordered=False):
            pass

    assert clean(s)
    jobs.release.set()
    assert 7 == (await s.invoke("f", {"i": 7})).data


# -- rate, progress, summary, pool ------------------------------------------------------------


async def test_rate_limit_spaces_the_starts(s: Session, jobs: JobServer) -> None:
    """rate=20 over 10 items: the tenth starts 9/20 s after the first."""
    started = time.perf_counter()
    outcomes = [o async for o in s.map("f", [{"i": i} for i in range(10)], rate=20)]
    elapsed = time.perf_counter() - started

    assert 10 == len(outcomes)
    assert elapsed >= 0.44
    assert elapsed < 5  # spaced, not stuck


async def test_rate_limit_with_async_input(s: Session, jobs: JobServer) -> None:
    """The rate applies to async inputs too."""

    async def items() -> AsyncIterator[dict[str, int]]:
        for i in range(6):
            yield {"i": i}

    started = time.perf_counter()
    got = [o.index async for o in s.map("f", items(), rate=25, concurrency=3)]

    assert list(range(6)) == got
    assert time.perf_counter() - started >= 0.19


async def test_progress_callback(s: Session, jobs: JobServer) -> None:
    """progress(done, total) counts up to the input's length; total is None for generators."""
    calls: list[tuple[int, int | None]] = []
    batch = await s.invoke_many(
        "f", [{"i": i} for i in range(5)], progress=lambda d, t: calls.append((d, t))
    )
    gen_calls: list[tuple[int, int | None]] = []
    [
        o
        async for o in s.map(
            "f", ({"i": i} for i in range(3)), progress=lambda *a: gen_calls.append(a)
        )
    ]

    assert 5 == batch.summary.total
    assert [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)] == calls
    assert [(1, None), (2, None), (3, None)] == gen_calls


async def test_failing_progress_callback_is_logged(
    s: Session, jobs: JobServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A progress callback that raises is logged and the calls go on."""

    def progress(done: int, total: int | None) -> None:
        raise ZeroDivisionError("bad bar")

    with caplog.at_level(logging.WARNING, logger="minapp_async"):
        batch = await s.invoke_many("f", [{"i": 1}, {"i": 2}], progress=progress)

    assert 2 == batch.summary.ok
    assert 2 == sum("progress callback" in r.getMessage() for r in caplog.records)


async def test_invoke_many_summary(s: Session, jobs: JobServer) -> None:
    """invoke_many: outcomes in input order and a summary of counts and latencies."""
    items = [
        {"i": i, "sleep": 0.03 if i == 0 else 0, **({"status": 404} if i == 3 else {})}
        | ({"code": 1} if i in (4, 6) else {})
        for i in range(10)
    ]
    batch = await s.invoke_many("f", items, concurrency=4, errors="collect")
    summary = batch.summary

    assert list(range(10)) == [o.index for o in batch.outcomes]
    assert (10, 7, 2, {404: 1}) == (summary.total, summary.ok, summary.failed, summary.errors)
    assert summary.latency_max >= 0.03  # the slow item
    assert summary.latency_p50 <= summary.latency_p95 <= summary.latency_max
    assert 0 < summary.elapsed and summary.calls_per_second > 0
    assert "10 calls: 7 ok, 2 failed, errors: 1x 404" in str(summary)


async def test_invoke_many_raises_the_first_error(s: Session, jobs: JobServer) -> None:
    """invoke_many with errors="raise" raises the HError and leaves nothing running."""
    items = [{"i": i, "hold": i != 1, **({"status": 403} if i == 1 else {})} for i in range(5)]
    with pytest.raises(minapp_async.ForbiddenError):
        await s.invoke_many("f", items, concurrency=5)
    assert clean(s)


def test_summary_percentiles() -> None:
    """Nearest-rank p50/p95 over known latencies; an empty summary is all zeros."""
    outcomes = [
        Outcome(i, None, None, HError(601) if i == 0 else None, latency=(i + 1) / 100)
        for i in range(20)
    ]
    summary = minapp_async.Summary.of(outcomes, elapsed=2.0)
    empty = minapp_async.Summary.of([], elapsed=0.0)

    assert (0.10, 0.19, 0.20) == (summary.latency_p50, summary.latency_p95, summary.latency_max)
    assert ({601: 1}, 0, 19, 10.0) == (
        summary.errors,
        summary.ok,
        summary.failed,  # no result and no error counts as failed
        summary.calls_per_second,
    )
    assert (0, 0.0, 0.0) == (empty.total, empty.latency_p95, empty.calls_per_second)


async def test_pool_smaller_than_concurrency_warns(server: FakeServer, jobs: JobServer) -> None:
    """Concurrency above the pool size warns PoolSizeWarning, naming both numbers."""
    limits = minapp_async.Limits(max_connections=4)
    async with Session(CLIENT_ID, base_url=server.url, token="t", limits=limits) as s:
        with pytest.warns(minapp_async.PoolSizeWarning, match=r"concurrency=8 .* pool \(4\)"):
            fanout = s.map("f", [{"i": 1}], concurrency=8)
        with pytest.warns(minapp_async.PoolSizeWarning) as caught:
            await s.invoke_many("f", [{"i": 1}], concurrency=5)
        async with fanout:
            assert [1] == [o.result.data async for o in fanout if o.result]

    assert __file__ == caught[0].filename  # points at the caller's line


async def test_pool_wait_timeout_is_pool_timeout_error(server: FakeServer, jobs: JobServer) -> None:
    """Calls that cannot get a pooled connection in time get PoolTimeoutError outcomes."""
    limits = minapp_async.Limits(max_connections=2)
    timeouts = minapp_async.Timeouts(pool=0.2)
    items = [{"i": i, "hold": i < 2} for i in range(4)]
    async with Session(
        CLIENT_ID, base_url=server.url, token="t", limits=limits, timeout=timeouts, retry=NO_RETRY
    ) as s:
        with pytest.warns(minapp_async.PoolSizeWarning):
            fanout = s.map("f", items, concurrency=4, ordered=False, errors="collect")
        got: list[Outcome] = []
        async with fanout:
            async for o in fanout:
                got.append(o)
                if len(got) == 2:
                    jobs.release.set()

    timed_out = [o.index for o in got if isinstance(o.error, minapp_async.PoolTimeoutError)]
    assert [2, 3] == sorted(timed_out)
    assert [0, 1] == sorted(o.index for o in got if o.ok)


async def test_one_consumer_at_a_time(s: Session, jobs: JobServer) -> None:
    """Two tasks pulling from one map at once is refused with a clear error."""
    fanout = s.map("f", [{"i": 0, "hold": True}])
    async with fanout:
        first = aiter(fanout)

        async def pull() -> None:
            await anext(first)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pull)
            await wait_until(lambda: jobs.in_flight == 1)
            with pytest.raises(RuntimeError, match="another task"):
                await anext(aiter(fanout))
            jobs.release.set()
    assert clean(s)
