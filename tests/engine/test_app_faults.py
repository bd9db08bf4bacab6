"""Fault injection: each kind misbehaves exactly as often as asked, then the engine is fine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import aiohttp
import pytest
from engine_api import JOB, Api

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _engine_logs_stay_clean(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever the client did, the engine (closed by now) logged no warning or error."""
    yield
    noisy = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("aiohttp", "minapp_async"))
    ]
    assert noisy == []


HELLO = {"code": 0, "data": "hello f", "error": {}}


async def raw_invoke(api: Api, token: str, **kwargs: object) -> aiohttp.ClientResponse:
    """Invoke helloWorld and return the response after reading it fully."""
    async with api.session.post(
        api.engine.url + JOB,
        json={"function_name": "helloWorld", "data": {"name": "f"}},
        headers=api.hserve_headers(token),
        **kwargs,  # type: ignore[arg-type]
    ) as response:
        await response.read()
        return response


async def assert_normal(api: Api, token: str) -> None:
    reply = await api.invoke(token, "helloWorld", {"name": "f"})
    assert reply.status == 200
    assert reply.body == HELLO


async def test_slow_delays_the_reply_then_answers_normally(api: Api) -> None:
    """A slow fault makes a short client timeout fire; the next call is normal again."""
    token = await api.login()
    api.engine.faults.add("slow", delay=0.5)
    with pytest.raises(asyncio.TimeoutError):  # TimeoutError on 3.11+; its own class on 3.10
        await raw_invoke(api, token, timeout=aiohttp.ClientTimeout(total=0.1))
    await assert_normal(api, token)
    api.engine.faults.add("slow", delay=0.1)
    await assert_normal(api, token)  # slow, but correct


async def test_slow_after_runs_the_function_before_the_delay(api: Api) -> None:
    """With when=after the function has run although the caller timed out waiting."""
    token = await api.login()
    api.engine.faults.add("slow", delay=0.5, when="after")
    with pytest.raises(asyncio.TimeoutError):  # TimeoutError on 3.11+; its own class on 3.10
        await raw_invoke(api, token, timeout=aiohttp.ClientTimeout(total=0.2))
    await api.engine.drain(timeout=10)
    (job,) = await api.engine.jobs("helloWorld")
    assert job.status == "fulfilled"
    assert api.engine.executions("helloWorld") == 1


@pytest.mark.parametrize(("when", "runs"), [("before", 0), ("after", 1)])
async def test_drop_closes_without_reply(api: Api, when: str, runs: int) -> None:
    """drop closes the connection; with when=after the function ran first."""
    token = await api.login()
    api.engine.faults.add("drop", when=when)  # type: ignore[arg-type]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await raw_invoke(api, token)
    assert api.engine.executions("helloWorld") == runs
    await assert_normal(api, token)


async def test_status_fault_replies_json_errors_n_times(api: Api) -> None:
    """A status fault answers its status with a JSON error body, exactly `times` times."""
    token = await api.login()
    api.engine.faults.add("status", status=503, times=2)
    for _ in range(2):
        reply = await api.invoke(token, "helloWorld", {"name": "f"})
        assert reply.status == 503
        assert "503" in reply.error_msg
    await assert_normal(api, token)
    assert api.engine.executions("helloWorld") == 1


async def test_429_carries_retry_after(api: Api) -> None:
    """A 429 fault sends Retry-After with the given value."""
    token = await api.login()
    api.engine.faults.add("status", status=429, retry_after=2)
    reply = await api.invoke(token, "helloWorld", {"name": "f"})
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "2"
    assert reply.headers["X-Request-Id"]
    await assert_normal(api, token)


async def test_status_after_runs_the_function_then_fails(api: Api) -> None:
    """when=after: the function ran to completion, yet the caller sees a 502."""
    token = await api.login()
    api.engine.faults.add("status", status=502, when="after")
    reply = await api.invoke(token, "helloWorld", {"name": "f"})
    assert reply.status == 502
    (job,) = await api.engine.jobs("helloWorld")
    assert job.status == "fulfilled"
    assert api.engine.executions("helloWorld") == 1


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html>", "text/html"),
        (b"", "application/json"),
        (b'{"code":0', "application/json"),
        (b"[1,2]", "application/json"),
    ],
)
async def test_malformed_replies_200_with_the_given_bytes(
    api: Api, body: bytes, content_type: str
) -> None:
    """malformed answers 200 with exactly the given body and content type."""
    token = await api.login()
    api.engine.faults.add("malformed", body=body, content_type=content_type)
    async with api.session.post(
        api.engine.url + JOB,
        json={"function_name": "helloWorld", "data": {"name": "f"}},
        headers=api.hserve_headers(token),
    ) as response:
        assert response.status == 200
        assert response.content_type == content_type
        assert await response.read() == body
    assert api.engine.executions("helloWorld") == 0
    await assert_normal(api, token)


@pytest.mark.parametrize(("when", "runs"), [("before", 0), ("after", 1)])
async def test_reset_mid_body_cuts_the_reply(api: Api, when: str, runs: int) -> None:
    """reset_mid_body sends part of a body, then closes the connection."""
    token = await api.login()
    api.engine.faults.add("reset_mid_body", when=when)  # type: ignore[arg-type]
    with pytest.raises(aiohttp.ClientPayloadError):
        await raw_invoke(api, token)
    assert api.engine.executions("helloWorld") == runs
    await assert_normal(api, token)


async def test_trickle_sends_a_valid_body_in_pieces(api: Api) -> None:
    """trickle delivers the normal reply, a byte at a time."""
    token = await api.login()
    api.engine.faults.add("trickle", delay=0.01)
    chunks = []
    async with api.session.post(
        api.engine.url + JOB,
        json={"function_name": "helloWorld", "data": {"name": "f"}},
        headers=api.hserve_headers(token),
    ) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
    assert len(chunks) >= 3
    assert b"".join(chunks) == b'{"code": 0, "data": "hello f", "error": {}}'
    await assert_normal(api, token)


async def test_a_client_leaving_a_trickle_is_no_engine_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that times out mid-trickle leaves no error in the engine's logs."""
    token = await api.login()
    api.engine.faults.add("trickle", delay=0.05)
    with pytest.raises(asyncio.TimeoutError):  # TimeoutError on 3.11+; its own class on 3.10
        await raw_invoke(api, token, timeout=aiohttp.ClientTimeout(total=0.3))
    await assert_normal(api, token)
    await api.engine.aclose()  # waits for the abandoned reply's handler to end
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_path_selects_which_requests_misbehave(api: Api) -> None:
    """path=None targets invoke endpoints only; a path substring targets any route."""
    api.engine.faults.add("status", status=500)
    token = await api.login()  # a login is not an invoke: unaffected
    api.engine.faults.add("status", status=503, path="/login/")
    assert len(api.engine.faults.armed) == 2
    login = await api.request(
        "POST",
        "/hserve/v2.1/login/username/",
        json_body={"username": "allen", "password": "secret-pw"},
        headers=api.hserve_headers(),
    )
    assert login.status == 503
    assert (await api.invoke(token, "helloWorld", {"name": "f"})).status == 500
    assert api.engine.faults.armed == []
    await assert_normal(api, token)


async def test_faults_on_the_open_api_and_clear(api: Api) -> None:
    """Faults hit oserve invoke routes too, and clear() disarms everything."""
    token = await api.access_token()
    api.engine.faults.add("status", status=500, times=5)
    path = "/oserve/v1.3/cloud-function/helloWorld/job/"
    assert (await api.oserve("POST", path, token, {"data": {"name": "f"}})).status == 500
    api.engine.faults.clear()
    reply = await api.oserve("POST", path, token, {"data": {"name": "f"}})
    assert reply.body == HELLO


async def test_bad_fault_arguments_are_refused(api: Api) -> None:
    """Unknown kinds and nonsense parameters raise at add() time."""
    faults = api.engine.faults
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.add("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        faults.add("drop", times=0)
    with pytest.raises(ValueError, match="when"):
        faults.add("drop", when="during")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        faults.add("status", status=200)
    with pytest.raises(TypeError, match="bytes"):
        faults.add("malformed", body="text")  # type: ignore[arg-type]
    assert faults.armed == []
