"""Proof 3: deadlines cover pool wait, login, send and read; cancelling at any of those
points releases the connection; 1,000 cancelled calls leave a pool that still serves, and no
task, socket or connection behind."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
from hardening_support import ENGINE_CONFIG, FUNCTIONS, open_fds, other_tasks
from support import wait_until

import minapp_async
from minapp_async import Limits, Session
from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

LOGIN = "/hserve/v2.1/login/username/"


def held(session: Session) -> tuple[int, int]:
    """(our pool permits in use, aiohttp connections checked out)."""
    stats = session.pool_stats
    return stats.in_use, stats.connections


def pooled(session: Session) -> int:
    """Open client connections: checked out plus idle keep-alive ones."""
    stats = session.pool_stats
    return stats.connections + stats.idle


async def echo(session: Session, data: object, deadline: float) -> None:
    """One sync call of echo, awaited (task groups start coroutines, not promises)."""
    assert data == (await session.invoke("echo", data, timeout=deadline)).data


@pytest.fixture(name="session")
async def _session(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> AsyncIterator[Session]:
    """A logged-in Session with a pool of two connections."""
    async with Session(
        engine.client_id, base_url=engine.url, credentials=credentials, limits=Limits(2)
    ) as s:
        await s.invoke("echo", "warm")  # logs in and opens the pool
        yield s


async def test_the_deadline_covers_the_pool_wait(engine: Engine, session: Session) -> None:
    """With both connections busy, a call gives up at its deadline, known to be unsent."""
    engine.faults.add("slow", delay=1.5, times=2)
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(echo, session, "busy", 10)
        await wait_until(lambda: engine.stats().requests_in_flight == 2)
        started = time.monotonic()
        with pytest.raises(minapp_async.PoolTimeoutError) as info:
            await session.invoke("echo", "waits", timeout=0.3)
        elapsed = time.monotonic() - started

    assert (601, False) == (info.value.code, info.value.may_have_executed)
    assert "waiting for a connection" in info.value.message
    assert elapsed < 5  # given up at the deadline, not hung until a connection freed
    assert 2 == engine.executions("echo") - 1


async def test_the_deadline_covers_a_slow_login(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> None:
    """A login that hangs is bounded by the invoke's deadline; the function never runs."""
    engine.faults.add("slow", path=LOGIN, delay=1.5)
    async with Session(engine.client_id, base_url=engine.url, credentials=credentials) as s:
        with anyio.fail_after(5), pytest.raises(minapp_async.RequestTimeoutError) as info:
            await s.invoke("echo", "x", timeout=0.3)
        assert (0, 0) == held(s)

    assert "logging in" in info.value.message
    assert not info.value.may_have_executed
    assert 0 == engine.executions("echo")


@pytest.mark.parametrize(("kind", "delay"), [("slow", 1.5), ("trickle", 0.1)], ids=["send", "read"])
async def test_the_deadline_covers_send_and_read(
    engine: Engine, session: Session, kind: str, delay: float
) -> None:
    """A reply that never starts, or trickles in, ends at the deadline and frees the pool."""
    engine.faults.add(kind, delay=delay)  # type: ignore[arg-type]

    with anyio.fail_after(5), pytest.raises(minapp_async.RequestTimeoutError) as info:
        await session.invoke("echo", "x", timeout=0.3)

    assert "waiting for the reply" in info.value.message
    assert (info.value.may_have_executed, info.value.attempts) == (True, 1)
    assert (0, 0) == held(session)


async def _reach(point: str, engine: Engine, session: Session) -> Callable[[], Awaitable[None]]:
    """Arm the engine so that a call stops at *point*; returns a wait for it to get there."""
    if point == "auth":
        engine.expire_sessions()
        engine.faults.add("status", status=401)  # makes the Session log in again...
        engine.faults.add("slow", path=LOGIN, delay=3)  # ...and that login hangs
    elif point == "send":
        engine.faults.add("slow", delay=3)
    elif point == "read":
        engine.faults.add("trickle", delay=0.5)
    elif point == "pool":
        engine.faults.add("slow", delay=3, times=2)  # both connections busy; a third call waits

    async def arrived() -> None:
        if point == "auth":
            await wait_until(lambda: not engine.faults.armed)  # the hanging login is in flight
        elif point == "read":
            await wait_until(lambda: engine.executions("echo") == 2)  # ran; now trickling
        else:
            busy = 2 if point == "pool" else 1
            await wait_until(lambda: engine.stats().requests_in_flight == busy)
        await anyio.wait_all_tasks_blocked()

    return arrived


@pytest.mark.parametrize("point", ["pool", "auth", "send", "read"])
async def test_cancelling_at_any_point_releases_the_connection(
    engine: Engine, session: Session, point: str
) -> None:
    """Cancel a call waiting for the pool, logging in, sending or reading: nothing stays held,
    and the Session serves the next call."""
    arrived = await _reach(point, engine, session)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(3 if point == "pool" else 1):
                tg.start_soon(echo, session, n, 30)
            await arrived()
            tg.cancel_scope.cancel()
    released = held(session)
    engine.faults.clear()
    result = await session.invoke("echo", "next", timeout=10)

    assert (0, 0) == released
    assert "next" == result.data
    assert pooled(session) <= 2


async def test_a_thousand_cancelled_calls_leave_nothing_behind(
    credentials: minapp_async.UserCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 calls cancelled at random points (login, pool wait, send, read): the pool is
    whole again, the next 100 calls complete, and no task or socket outlives the Session."""
    tasks_before = set(asyncio.all_tasks())
    sockets_before = {fd for fd in open_fds() if "socket:" in fd}
    rng = random.Random(1)

    async with running_engine(FUNCTIONS, **ENGINE_CONFIG) as engine:
        engine.create_user(username=credentials.username, password=credentials.password)

        def arrivals() -> int:
            """Requests the engine has taken in so far: finished or still being handled."""
            stats = engine.stats()
            return stats.requests_served + stats.requests_in_flight

        async with Session(
            engine.client_id, base_url=engine.url, credentials=credentials, limits=Limits(20)
        ) as s:
            # The first 500 start logged out and are cut off within 0.5 s, while the login
            # they share hangs for a second.
            engine.faults.add("slow", path=LOGIN, delay=1)
            now = anyio.current_time()
            first = [anyio.CancelScope(deadline=now + rng.random() * 0.5) for _ in range(500)]
            with anyio.fail_after(60):
                cut_off_logging_in = await _cut_off(s, first)

            # The other 500 find a session and are cut off in the pool, sending or reading a
            # slow reply, each once the engine has taken in a random number of requests.
            # Counting requests, not seconds, gives that mix on a slow machine too.
            await s.auth.login(username=credentials.username or "", password=credentials.password)
            engine.faults.add("trickle", delay=0.02, times=100)
            engine.faults.add("slow", delay=0.3, times=100)
            start = arrivals()
            second = [(rng.randrange(150), anyio.CancelScope()) for _ in range(500)]

            async def cut_off_as_requests_arrive() -> None:
                pending = sorted(second, key=lambda item: item[0])
                while pending:
                    while pending and pending[0][0] <= arrivals() - start:
                        pending.pop(0)[1].cancel()
                    await anyio.sleep(0.001)  # the engine's counters have no event to wait on

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cut_off_as_requests_arrive)
                    cut_off_later = await _cut_off(s, [scope for _, scope in second])
                    tg.cancel_scope.cancel()
            reached = arrivals() - start
            released = held(s)
            engine.faults.clear()

            started = time.monotonic()
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(100):
                        tg.start_soon(echo, s, i, 60)
            elapsed = time.monotonic() - started
            after = held(s), pooled(s)
        await wait_until(lambda: engine.stats().requests_in_flight == 0)

    await wait_until(lambda: not other_tasks(tasks_before))
    await wait_until(lambda: {fd for fd in open_fds() if "socket:" in fd} <= sockets_before)
    assert 500 == cut_off_logging_in
    # Calls not cut off each sent one request; any more requests came from calls cut off
    # after sending. And more than the pool's 20 were sent: permits freed by cancelled calls
    # went straight to waiting ones.
    assert reached - (500 - cut_off_later) > 20
    assert (0, 0) == released
    assert (0, 0) == after[0] and after[1] <= 20
    assert elapsed < 30  # served, not stuck behind leaked permits
    # Clients that went away mid-reply are routine for the engine, not errors.
    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def _cut_off(session: Session, scopes: list[anyio.CancelScope]) -> int:
    """One echo call inside each scope, all at once; how many of them their scope cut off."""
    cut_off = 0

    async def one(i: int, scope: anyio.CancelScope) -> None:
        nonlocal cut_off
        with scope:
            await session.invoke("echo", i, timeout=60)
        cut_off += scope.cancelled_caught

    async with anyio.create_task_group() as tg:
        for i, scope in enumerate(scopes):
            tg.start_soon(one, i, scope)
    return cut_off
