"""The promise-style wrapper: then/catch/finally_ chains, single execution, cancellation."""

from __future__ import annotations

import anyio
import pytest
from fakeserver import FakeServer, Reply

import minapp_async
from minapp_async import InvokeResult

pytestmark = pytest.mark.anyio


def _hello(server: FakeServer) -> None:
    server.json_reply(200, {"code": 0, "data": "hello allen", "error": {}})


async def test_then_with_plain_and_async_handlers(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """Each handler's return value feeds the next, whether it is plain or async."""
    _hello(server)

    async def shout(text: str) -> str:
        return text.upper()

    value = await session.invoke("helloWorld", {"name": "allen"}).then(lambda r: r.data).then(shout)

    assert value == "HELLO ALLEN"


async def test_rejection_goes_to_the_next_rejection_handler(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """An HError skips fulfilment handlers and reaches the rejection handler, which recovers."""
    server.json_reply(403, {"error_msg": "anonymous user is not allowed"})
    seen: list[str] = []

    def on_ok(result: InvokeResult) -> str:
        seen.append("ok")
        return "unreachable"

    def on_err(err: Exception) -> str:
        assert isinstance(err, minapp_async.ForbiddenError)
        return f"recovered from {err.code}"

    value = await session.invoke("f").then(on_ok).then(None, on_err)

    assert (value, seen) == ("recovered from 403", [])


async def test_handler_exception_feeds_catch(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """An exception raised by a handler goes to the next catch, as in JS."""

    def explode(result: InvokeResult) -> None:
        raise KeyError("from handler")

    async def recover(err: Exception) -> str:
        return type(err).__name__

    assert await session.invoke("f").then(explode).catch(recover) == "KeyError"


async def test_finally_runs_either_way(session: minapp_async.Session, server: FakeServer) -> None:
    """finally_ runs its callback on success and failure and keeps the outcome."""
    server.json_reply(200, {"code": 0, "data": None, "error": {}})
    server.json_reply(500, {"error_msg": "down"})
    calls: list[str] = []

    result = await session.invoke("f").finally_(lambda: calls.append("ok"))
    with pytest.raises(minapp_async.ServerError):
        await session.invoke("f").finally_(lambda: calls.append("err"))

    assert (result.code, calls) == (0, ["ok", "err"])


async def test_awaited_twice_runs_once(session: minapp_async.Session, server: FakeServer) -> None:
    """A promise is one call: awaiting it again, or from two tasks, sends one request."""
    promise = session.invoke("f")
    results: list[InvokeResult] = []

    async def wait() -> None:
        results.append(await promise)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        tg.start_soon(wait)
    again = await promise

    assert len(server.requests) == 1
    assert results[0] is results[1] is again


async def test_rejection_shared_by_every_awaiter(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """A rejected promise raises the same error each time it is awaited, without resending."""
    server.json_reply(404, {"error_msg": "no such function"})
    promise = session.invoke("nope")
    for _ in range(2):
        with pytest.raises(minapp_async.NotFoundError):
            await promise

    assert len(server.requests) == 1


async def test_cancelling_cancels_the_request(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """Cancelling the awaiting task aborts the HTTP request and returns its connection."""
    arrived = anyio.Event()

    async def hang(request: object) -> object:
        arrived.set()
        await server.stopping.wait()
        raise AssertionError("unreachable")

    server.handlers["/hserve/v1/cloud-function/job/"] = hang  # type: ignore[assignment]

    async def call() -> None:
        await session.invoke("f").then(lambda r: r.data)

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await arrived.wait()
            assert session.pool_stats.in_use == 1
            tg.cancel_scope.cancel()

    assert not scope.cancelled_caught
    assert session.pool_stats.in_use == 0
    del server.handlers["/hserve/v1/cloud-function/job/"]
    assert (await session.invoke("f")).code == 0  # the pool still serves


async def test_cancellation_skips_rejection_handlers(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """Rejection handlers see exceptions only: cancellation always propagates."""
    server.reply(Reply(hang=True))
    handled: list[BaseException] = []

    with anyio.move_on_after(0.2):
        await session.invoke("f", timeout=None).catch(handled.append)

    assert handled == []


def test_repr_states() -> None:
    """A promise says whether it has run."""

    async def one() -> int:
        return 1

    coro = one()
    promise = minapp_async.Promise(coro)
    assert repr(promise) == "<Promise pending>"
    coro.close()
