"""Each error row of PROTOCOL.md §3.3 becomes the HError the JS SDK would reject with."""

from __future__ import annotations

import pickle
import socket

import pytest
from fakeserver import CLIENT_ID, FakeServer, Reply

import minapp_async
from minapp_async import HError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (400, {"status": "error", "error_msg": "X"}, minapp_async.BadRequestError, "400: X"),
        (400, {"message": "Y"}, minapp_async.BadRequestError, "400: Y"),
        (400, {"error_msg": "X", "message": "Y"}, minapp_async.BadRequestError, "400: X"),
        (401, {"error_msg": "no token"}, minapp_async.AuthenticationError, "401: no token"),
        (402, {"error_msg": "arrears"}, minapp_async.HTTPError, "402: arrears"),
        (403, {"error_msg": "anon"}, minapp_async.ForbiddenError, "403: anon"),
        # The web build's reading; the WeChat build would say "404: not found".
        (404, {"error_msg": "Z"}, minapp_async.NotFoundError, "404: Z"),
        (413, {"error_msg": "too big"}, minapp_async.PayloadTooLargeError, "413: too big"),
        (429, {"error_msg": "slow down"}, minapp_async.RateLimitError, "429: slow down"),
        (500, {"error_msg": "bad"}, minapp_async.ServerError, "500: bad"),
        (500, "<html>oops</html>", minapp_async.ServerError, "500: unknown error"),
        (502, b"", minapp_async.ServerError, "502: unknown error"),
    ],
)
async def test_http_error_rows(
    session: minapp_async.Session,
    server: FakeServer,
    status: int,
    body: object,
    cls: type[HError],
    message: str,
) -> None:
    """A non-2xx reply raises the status as the code and error_msg, then message, as text."""
    server.reply(Reply(status=status, body=body, headers={"X-Request-Id": "rid"}))  # type: ignore[arg-type]

    with pytest.raises(cls) as info:
        await session.with_options(retry=minapp_async.Retry(attempts=1)).invoke("helloWorld")

    err = info.value
    assert (status, message) == (err.code, err.message)
    assert (status, "rid", "/hserve/v1/cloud-function/job/") == (
        err.details.status,
        err.details.request_id,
        err.details.path,
    )


async def test_builtin_bases(session: minapp_async.Session, server: FakeServer) -> None:
    """Errors are also the matching builtin, so plain except clauses work."""
    server.json_reply(401, {"error_msg": "no"})
    with pytest.raises(PermissionError):
        await session.invoke("f")
    with pytest.raises(ValueError):
        session.invoke("")
    assert issubclass(minapp_async.RequestTimeoutError, TimeoutError)
    assert issubclass(minapp_async.NetworkError, ConnectionError)


async def test_body_snippet_in_details(session: minapp_async.Session, server: FakeServer) -> None:
    """An HTML error page keeps the JS message and puts a short snippet in details and str()."""
    server.reply(
        Reply(status=500, body="<html>" + "x" * 1000 + "</html>", content_type="text/html")
    )

    with pytest.raises(minapp_async.ServerError) as info:
        await session.invoke("f")

    assert info.value.message == "500: unknown error"
    assert info.value.details.body.startswith("<html>xxx")
    assert len(info.value.details.body) < 300
    assert "<html>" in str(info.value)


async def test_retry_after_parsed(session: minapp_async.Session, server: FakeServer) -> None:
    """A 429's Retry-After header is offered in seconds."""
    server.reply(Reply(status=429, body={"error_msg": "busy"}, headers={"Retry-After": "3"}))

    with pytest.raises(minapp_async.RateLimitError) as info:
        await session.with_options(retry=minapp_async.Retry(attempts=1)).invoke("f")

    assert info.value.retry_after == 3.0


async def test_connection_refused_is_600() -> None:
    """A refused connection is NetworkError 600, known not to have reached the server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        async with minapp_async.Session(CLIENT_ID, base_url=f"http://127.0.0.1:{port}") as s:
            with pytest.raises(minapp_async.NetworkError) as info:
                await s.invoke("f")

    assert info.value.code == 600
    assert info.value.message.startswith("600: cannot connect to 127.0.0.1")
    assert info.value.may_have_executed is False


async def test_slow_reply_is_601(server: FakeServer) -> None:
    """No reply within the deadline is RequestTimeoutError 601, and the request may have run."""
    server.reply(Reply(hang=True))
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, timeout=0.3) as s:
        with pytest.raises(minapp_async.RequestTimeoutError) as info:
            await s.invoke("f")

    assert info.value.code == 601
    assert "no reply within 0.3 s (waiting for the reply)" in info.value.message
    assert info.value.may_have_executed is True


async def test_per_call_timeout_overrides(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """timeout= on one call replaces the session's deadline for that call only."""
    server.reply(Reply(hang=True))
    with pytest.raises(minapp_async.RequestTimeoutError):
        await session.invoke("f", timeout=0.2)


def test_default_deadlines_follow_the_mode() -> None:
    """Sync calls get the platform's 5 s plus a 5 s margin; async calls wait for the ack only."""
    t = minapp_async.Timeouts()

    assert (t.for_mode(True), t.for_mode(False)) == (10.0, 5.0)


def test_message_format_and_default_texts() -> None:
    """message is "<code>: <text>", with the JS SDK's default text when none is given."""
    assert minapp_async.SessionMissingError().message == "604: session missing"
    assert HError(500).message == "500: unknown error"
    assert minapp_async.InvalidArgumentError("x").message == "605: incorrect parameter type: x"


def test_errors_pickle() -> None:
    """Errors survive pickling with their fields (for multiprocessing and log handlers)."""
    err = minapp_async.RequestTimeoutError("slow", may_have_executed=True)

    back = pickle.loads(pickle.dumps(err))

    assert (type(err), err.message, True) == (type(back), back.message, back.may_have_executed)


async def test_closed_connection_is_600(server: FakeServer) -> None:
    """A server that closes the connection without a reply gives NetworkError 600."""

    async def drop(request: object) -> object:
        request.transport.close()  # type: ignore[attr-defined]
        raise ConnectionResetError

    server.handlers["/hserve/v1/cloud-function/job/"] = drop  # type: ignore[assignment]
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        with pytest.raises(minapp_async.NetworkError) as info:
            await s.invoke("f")

    assert info.value.code == 600
    assert info.value.may_have_executed is True
