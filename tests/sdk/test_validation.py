"""Bad arguments raise HError 605 at once, and nothing is sent."""

from __future__ import annotations

import math

import pytest
from fakeserver import CLIENT_ID, FakeServer

import minapp_async

pytestmark = pytest.mark.anyio


class Opaque:
    pass


@pytest.mark.parametrize("name", ["", None, 123, b"helloWorld", ["f"]])
async def test_bad_function_name(
    session: minapp_async.Session, server: FakeServer, name: object
) -> None:
    """An empty or non-str function name raises 605 synchronously, like the JS SDK."""
    with pytest.raises(minapp_async.InvalidArgumentError) as info:
        session.invoke(name)  # type: ignore[arg-type]

    assert info.value.code == 605
    assert "function_name" in info.value.message
    assert server.requests == []


@pytest.mark.parametrize(
    "params",
    [{1, 2}, b"bytes", math.nan, {"x": math.inf}, Opaque(), {"nested": [Opaque()]}, "\ud800"],
)
async def test_params_json_cannot_encode(
    session: minapp_async.Session, server: FakeServer, params: object
) -> None:
    """Params that JSON cannot carry raise 605 naming the problem, before sending."""
    with pytest.raises(minapp_async.InvalidArgumentError) as info:
        session.invoke("f", params)

    assert info.value.message.startswith("605: incorrect parameter type: params cannot be sent")
    assert server.requests == []


async def test_circular_params(session: minapp_async.Session, server: FakeServer) -> None:
    """A self-referencing structure is refused, not sent or recursed into forever."""
    loop: list[object] = []
    loop.append(loop)

    with pytest.raises(minapp_async.InvalidArgumentError):
        session.invoke("f", loop)
    assert server.requests == []


@pytest.mark.parametrize("sync", [None, "no", 1, 0])
async def test_non_bool_sync(
    session: minapp_async.Session, server: FakeServer, sync: object
) -> None:
    """sync must be a bool (the JS SDK would send "sync":"no" as is; we refuse it)."""
    with pytest.raises(minapp_async.InvalidArgumentError, match="sync"):
        session.invoke("f", {}, sync)  # type: ignore[arg-type]
    assert server.requests == []


@pytest.mark.parametrize("timeout", [0, -1, "5", True, math.nan])
async def test_bad_timeout(session: minapp_async.Session, timeout: object) -> None:
    """A per-call timeout must be a positive number or None."""
    with pytest.raises(minapp_async.InvalidArgumentError, match="timeout"):
        session.invoke("f", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": ""},
        {"client_id": 5},
        {"client_id": "c", "base_url": 5},
        {"client_id": "c", "client_secret": "s", "token": "t"},
        {"client_id": "c", "timeout": -1},
        {"client_id": "c", "headers": {"X": 1}},
    ],
)
def test_bad_session_arguments(kwargs: dict[str, object]) -> None:
    """Session() checks its arguments and says which one is wrong."""
    with pytest.raises(minapp_async.InvalidArgumentError):
        minapp_async.Session(**kwargs)  # type: ignore[arg-type]


def test_credentials_need_exactly_one_identity() -> None:
    """UserCredentials takes exactly one of username, email or phone."""
    with pytest.raises(minapp_async.InvalidArgumentError):
        minapp_async.UserCredentials(password="p")
    with pytest.raises(minapp_async.InvalidArgumentError):
        minapp_async.UserCredentials(password="p", username="u", email="e")
    assert minapp_async.UserCredentials(password="p", phone="1").kind == "phone"


async def test_nothing_sent_for_closed_session(server: FakeServer) -> None:
    """A closed Session refuses to invoke with SessionClosedError (602)."""
    s = minapp_async.Session(CLIENT_ID, base_url=server.url)
    await s.aclose()

    with pytest.raises(minapp_async.SessionClosedError) as info:
        await s.invoke("f")
    assert info.value.code == 602
    assert server.requests == []
