"""Retries: only failures that show the function did not run, bounded by tries and deadline."""

from __future__ import annotations

import contextlib
import socket

import anyio
import pytest
from fakeserver import CLIENT_ID, FakeServer, Reply
from hypothesis import given
from hypothesis import strategies as st

import minapp_async
from minapp_async import Retry

pytestmark = pytest.mark.anyio

FAST = Retry(attempts=3, backoff_initial=0.01, backoff_max=0.02)


async def test_503_then_success(server: FakeServer) -> None:
    """A 503 is retried after its Retry-After, and the call succeeds on the next try."""
    server.reply(Reply(status=503, body={"error_msg": "busy"}, headers={"Retry-After": "0.05"}))
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST) as s:
        result = await s.invoke("f")

    assert (result.code, len(server.requests)) == (0, 2)


async def test_schedule_failed_is_retried(server: FakeServer) -> None:
    """A 400 that says the job was never scheduled is safe to send again."""
    server.json_reply(400, {"error_msg": "no free worker", "job_status": "schedule_failed"})
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST) as s:
        assert (await s.invoke("f")).ok

    assert len(server.requests) == 2


async def test_gives_up_after_attempts(server: FakeServer) -> None:
    """Retries stop at the number of attempts; the error says how many were made."""
    for _ in range(5):
        server.json_reply(429, {"error_msg": "slow down"})
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST) as s:
        with pytest.raises(minapp_async.RateLimitError) as info:
            await s.invoke("f")

    assert (len(server.requests), info.value.attempts, info.value.may_have_executed) == (
        3,
        3,
        False,
    )


async def test_long_retry_after_is_not_waited_for(server: FakeServer) -> None:
    """A Retry-After beyond retry_after_max, or beyond the deadline, ends the retries at once."""
    server.reply(Reply(status=429, body={"error_msg": "later"}, headers={"Retry-After": "100"}))
    server.reply(Reply(status=503, body={"error_msg": "later"}, headers={"Retry-After": "3"}))
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST) as s:
        with pytest.raises(minapp_async.RateLimitError):
            await s.invoke("f")
        with anyio.fail_after(2):
            with pytest.raises(minapp_async.ServerError):
                await s.invoke("f", timeout=1)

    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_executed_failures_are_not_retried(server: FakeServer, status: int) -> None:
    """A 5xx that may have run the function is raised after one try, marked as such."""
    server.json_reply(status, {"error_msg": "x"})
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST) as s:
        with pytest.raises(minapp_async.ServerError) as info:
            await s.invoke("f")

    assert (len(server.requests), info.value.attempts, info.value.may_have_executed) == (1, 1, True)


async def test_opt_in_retries_sync_only(server: FakeServer) -> None:
    """retry_executed re-sends a sync invoke after a 500, never a sync=False one."""
    opt_in = Retry(attempts=2, backoff_initial=0.01, retry_executed=True)
    server.json_reply(500, {"error_msg": "x"})
    server.json_reply(200, {"code": 0, "data": None, "error": {}})
    server.json_reply(500, {"error_msg": "x"})
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=opt_in) as s:
        assert (await s.invoke("f")).ok
        with pytest.raises(minapp_async.ServerError):
            await s.invoke("f", sync=False)

    assert len(server.requests) == 3


async def test_timeout_after_sending_is_not_retried(server: FakeServer) -> None:
    """A request that was sent and got no answer is not sent again: it may be running."""
    server.reply(Reply(hang=True))
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST) as s:
        with pytest.raises(minapp_async.RequestTimeoutError) as info:
            await s.invoke("f", timeout=0.3)

    assert (len(server.requests), info.value.may_have_executed) == (1, True)


async def test_refused_connection_is_retried() -> None:
    """A refused connection never reached the server: it is retried, then reported."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with minapp_async.Session(CLIENT_ID, base_url=url, retry=FAST) as s:
            with pytest.raises(minapp_async.NetworkError) as info:
                await s.invoke("f")

    assert (info.value.attempts, info.value.may_have_executed) == (3, False)


async def test_pool_timeout(server: FakeServer) -> None:
    """With every pooled connection busy, a call gives up with PoolTimeoutError, unsent."""
    arrived = anyio.Event()

    async def hang(request: object) -> object:
        arrived.set()
        await server.stopping.wait()
        raise AssertionError("unreachable")

    server.handlers["/hserve/v1/cloud-function/job/"] = hang  # type: ignore[assignment]
    limits = minapp_async.Limits(max_connections=1)
    timeouts = minapp_async.Timeouts(pool=0.1)
    async with minapp_async.Session(
        CLIENT_ID, base_url=server.url, limits=limits, timeout=timeouts, retry=FAST
    ) as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _swallow(s.invoke("f", timeout=2)))
            await arrived.wait()
            with pytest.raises(minapp_async.PoolTimeoutError) as info:
                await s.invoke("g")
            tg.cancel_scope.cancel()

    assert (info.value.code, info.value.attempts, info.value.may_have_executed) == (601, 3, False)
    assert len(server.requests) == 1


async def _swallow(promise: minapp_async.Promise[minapp_async.InvokeResult]) -> None:
    with contextlib.suppress(minapp_async.HError):
        await promise


@given(attempt=st.integers(1, 50), initial=st.floats(0, 10), cap=st.floats(0, 60))
def test_backoff_is_bounded(attempt: int, initial: float, cap: float) -> None:
    """Full-jitter backoff never exceeds the cap nor the doubled initial value."""
    policy = Retry(backoff_initial=initial, backoff_max=cap)

    delay = policy.delay(attempt, None)

    assert delay is not None
    assert 0 <= delay <= min(cap, initial * 2 ** (attempt - 1))


@given(hint=st.floats(0, 100))
def test_retry_after_is_honoured_up_to_the_cap(hint: float) -> None:
    """A Retry-After hint is used as is up to retry_after_max, and ends retries beyond it."""
    delay = Retry(retry_after_max=30).delay(1, hint)

    assert (hint if hint <= 30 else None) == delay
