"""Proof 4: malformed replies from the engine's faults each give a specific HError with a code
and a message that shows the body, never an aiohttp or json exception, never a hang."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest

import minapp_async
from minapp_async import Retry, Session
from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio

HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.fixture(name="session")
async def _session(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> AsyncIterator[Session]:
    """A logged-in Session that retries nothing, so each fault is seen as it is."""
    async with Session(
        engine.client_id, base_url=engine.url, credentials=credentials, retry=Retry(attempts=1)
    ) as s:
        await s.invoke("echo", "warm")
        yield s


async def failure(session: Session, sync: bool = True) -> minapp_async.HError:
    """The error the next call fails with (bounded: a hang fails the test)."""
    with anyio.fail_after(5):
        try:
            await session.invoke("echo", "x", sync, timeout=1)
        except minapp_async.HError as err:
            assert not isinstance(err.__cause__, json.JSONDecodeError)
            return err
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("body", "content_type", "shown"),
    [
        (HTML, "text/html", "not JSON (text/html): '<html><body><h1>502 Bad Gateway"),
        (b"", "application/json", "empty body (application/json)"),
        (
            b'{"code":0,"data":{"par',
            "application/json",
            """not JSON (application/json): '{"code":0,""",
        ),
        (b"Service Unavailable", "text/plain", "not JSON (text/plain): 'Service Unavailable'"),
        (b"[1, 2, 3]", "application/json", "expected a JSON object, got list: '[1, 2, 3]'"),
        (b'"ok"', "application/json", """expected a JSON object, got str: '"ok"'"""),
        (b"null", "application/json", "expected a JSON object, got NoneType: 'null'"),
        (b'{"data": 1}', "application/json", """without an integer 'code': '{"data": 1}'"""),
    ],
    ids=["html", "empty", "truncated", "plain-text", "array", "string", "null", "no-code"],
)
async def test_a_body_that_is_not_a_result_is_a_format_error(
    engine: Engine, session: Session, body: bytes, content_type: str, shown: str, sync: bool
) -> None:
    """HTML, empty, truncated, wrongly typed or non-object bodies: ResponseFormatError with
    the HTTP status as code and the body in the message."""
    engine.faults.add("malformed", body=body, content_type=content_type)

    err = await failure(session, sync)

    assert type(err) is minapp_async.ResponseFormatError
    assert 200 == err.code
    assert shown in err.message
    assert body.decode()[:20] in err.details.body
    assert err.may_have_executed


async def test_a_valid_result_with_the_wrong_content_type_is_accepted(
    engine: Engine, session: Session
) -> None:
    """A JSON result labelled text/html is still a result: the JS SDK parses it too."""
    engine.faults.add(
        "malformed", body=b'{"code":0,"data":"fine","error":{}}', content_type="text/html"
    )

    with anyio.fail_after(5):
        result = await session.invoke("echo", "x")

    assert (0, "fine") == (result.code, result.data)


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_reset_mid_body_is_a_network_error(
    engine: Engine, session: Session, when: str
) -> None:
    """A connection cut in the middle of the reply: NetworkError 600, may have executed."""
    engine.faults.add("reset_mid_body", when=when)  # type: ignore[arg-type]

    err = await failure(session)

    assert type(err) is minapp_async.NetworkError
    assert (600, True) == (err.code, err.may_have_executed)
    assert "broke while the reply was being read" in err.message
    assert isinstance(err.__cause__, aiohttp.ClientError)  # kept as the cause, never raised


async def test_a_reply_trickling_past_the_deadline_times_out(
    engine: Engine, session: Session
) -> None:
    """A reply sent a byte at a time beyond the deadline: RequestTimeoutError 601 at the deadline."""
    engine.faults.add("trickle", delay=0.2)

    err = await failure(session)

    assert type(err) is minapp_async.RequestTimeoutError
    assert 601 == err.code
    assert "no reply within 1 s (waiting for the reply)" in err.message


async def test_an_error_status_with_an_html_page_keeps_its_status(
    engine: Engine, session: Session
) -> None:
    """The JSON error bodies of injected statuses give the status's class and the text."""
    engine.faults.add("status", status=502)

    err = await failure(session)

    assert type(err) is minapp_async.ServerError
    assert "502: injected fault: HTTP 502" == err.message
    assert "injected fault" in err.details.body


async def test_the_engine_still_serves_after_every_malformed_reply(
    engine: Engine, session: Session
) -> None:
    """After a run of broken replies the same Session and pool give a correct result."""
    for body in (HTML, b"", b"[", b"null"):
        engine.faults.add("malformed", body=body)
        await failure(session)
    engine.faults.add("reset_mid_body")
    await failure(session)

    result = await session.invoke("echo", "still fine")

    assert "still fine" == result.data
    assert 0 == session.pool_stats.in_use
