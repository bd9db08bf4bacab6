"""Proof 5, property-based: names, params and sync flags of every shape into the SDK give
either a request whose body decodes back to exactly what was passed, or a 605 before anything
is sent; random bodies, names, headers and content types into the engine always get a 4xx
with an ``error_msg``, never a 500, and the engine keeps serving."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from fakeserver import FakeServer, fake_server
from hardening_support import FUNCTIONS
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import token_in

import minapp_async
from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio

# The fixtures are made once per test and shared by its examples on purpose: each example
# starts by forgetting what the previous one recorded.
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc80b"])
# st.characters() leaves out lone surrogates, which Python strs can hold and JSON cannot.
TEXT = st.text(st.characters(), max_size=12)
ODD_TEXT = st.one_of(TEXT, SURROGATES)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
#: Values JSON cannot carry; any one of them anywhere in params must give 605.
POISON = st.sampled_from(
    [math.nan, math.inf, -math.inf, {1, 2}, b"bytes", object(), "\ud800", {(1, 2): "tuple key"}]
)


@st.composite
def poisoned(draw: st.DrawFn) -> Any:
    """A JSON value with one poison somewhere inside it."""
    poison = draw(POISON)
    value = draw(JSON_VALUES)
    wrap = draw(st.sampled_from(["bare", "list", "dict"]))
    if wrap == "list":
        return [value, poison]
    if wrap == "dict":
        return {"ok": value, draw(TEXT): poison}
    return poison


GOOD_NAMES = TEXT.filter(lambda name: name not in ("", ".", ".."))
BAD_NAMES = st.one_of(
    SURROGATES, st.none(), st.integers(), st.binary(max_size=4), st.sampled_from(["", ".", ".."])
)
BAD_SYNCS = st.one_of(st.none(), st.integers(0, 1), st.just("true"))


@st.composite
def invocations(draw: st.DrawFn) -> tuple[Any, Any, Any]:
    """(name, params, sync): all good, or one of the three bad (half the time each)."""
    bad = draw(st.sampled_from([None, None, None, "name", "params", "sync"]))
    name = draw(BAD_NAMES if bad == "name" else GOOD_NAMES)
    params = draw(poisoned() if bad == "params" else JSON_VALUES)
    sync = draw(BAD_SYNCS if bad == "sync" else st.booleans())
    return name, params, sync


def valid_name(name: object) -> bool:
    # "." and ".." would leave the function's route (issue 11): refused like an empty name.
    if not isinstance(name, str) or name in ("", ".", ".."):
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[FakeServer]:
    """A recording server on 127.0.0.1."""
    async with fake_server() as server:
        yield server


@pytest.fixture(name="session")
async def _session(server: FakeServer) -> AsyncIterator[minapp_async.Session]:
    """A Session with a token, talking to the recording server, retrying nothing."""
    async with minapp_async.Session(
        "a4d2d62965ddb57fa4d6",
        base_url=server.url,
        token="tok",
        retry=minapp_async.Retry(attempts=1),
    ) as s:
        yield s


@PROPERTY
@given(call=invocations())
async def test_the_sdk_sends_exactly_what_was_given_or_refuses_first(
    server: FakeServer, session: minapp_async.Session, call: tuple[Any, Any, Any]
) -> None:
    """Any name, params and sync: the body decodes to exactly those, or 605 and nothing sent."""
    name, params, sync = call
    server.requests.clear()
    try:
        json.dumps(params, allow_nan=False, ensure_ascii=False).encode()  # as the SDK writes it
        params_ok = not _has_non_str_keys(params)
    except (TypeError, ValueError, UnicodeEncodeError):
        params_ok = False
    good = valid_name(name) and params_ok and isinstance(sync, bool)
    event("sent" if good else "refused")

    try:
        await session.invoke(name, params, sync)
    except minapp_async.InvalidArgumentError as err:
        assert not good, err
        assert err.code == 605 and err.message.startswith("605: incorrect parameter type")
        assert server.requests == []
    else:
        assert good
        (request,) = server.requests
        assert {"function_name": name, "sync": sync, "data": params} == json.loads(request.body)


def _has_non_str_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _has_non_str_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_non_str_keys(v) for v in value)
    return False


# ---------------------------------------------------------------- the engine

REAL_NAMES = {name.rsplit(".", 1)[0] for name in FUNCTIONS}
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "text/html",
            "text/plain; charset=latin-1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/octet-stream",
        ]
    ),
    HEADER_TEXT,
)
UNKNOWN_NAMES = ODD_TEXT.filter(lambda n: n not in REAL_NAMES)
INVOKE_BODIES = st.builds(
    lambda name, data, sync: json.dumps({"function_name": name, "data": data, "sync": sync}),
    st.one_of(
        UNKNOWN_NAMES, JSON_VALUES.filter(lambda v: not isinstance(v, str) or v not in REAL_NAMES)
    ),
    JSON_VALUES,
    st.one_of(st.booleans(), JSON_VALUES),
).map(str.encode)
RANDOM_BODIES = st.one_of(
    st.binary(max_size=200),
    INVOKE_BODIES,
    INVOKE_BODIES,  # twice: half the bodies are well-formed invocations of unknown functions
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)
ENDPOINTS = st.sampled_from(["hserve-job", "login", "oserve-job", "access-token"])


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    """A cookie-less raw client."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield http


@pytest.fixture(name="tokens")
async def _tokens(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> AsyncIterator[dict[str, str]]:
    """A real user token and a real access token, so random input reaches past auth too."""
    store = minapp_async.MemoryTokenStore()
    async with (
        minapp_async.Session(
            engine.client_id, base_url=engine.url, credentials=credentials, token_store=store
        ) as user,
        minapp_async.Session(
            engine.client_id, client_secret=engine.client_secret, base_url=engine.url
        ) as server,
    ):
        await user.invoke("echo", 1)
        await server.invoke("echo", 1)
        yield {
            "user": await token_in(store),
            "server": server._auth._access,  # type: ignore[union-attr]
        }


@PROPERTY
@given(
    endpoint=ENDPOINTS,
    name=UNKNOWN_NAMES,
    body=RANDOM_BODIES,
    content_type=CONTENT_TYPES,
    real_auth=st.booleans(),
    garbage=HEADER_TEXT,
    client_id=st.one_of(st.none(), HEADER_TEXT),
)
async def test_the_engine_answers_garbage_with_a_4xx(
    engine: Engine,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    endpoint: str,
    name: str,
    body: bytes,
    content_type: str,
    real_auth: bool,
    garbage: str,
    client_id: str | None,
) -> None:
    """Random bodies, names, headers and content types: a 4xx JSON error, never a 500; the
    engine answers a good call right after and logs no error."""
    headers = {"Content-Type": content_type}
    if endpoint == "hserve-job":
        path = "/hserve/v1/cloud-function/job/"
        headers["Authorization"] = f"Hydrogen-r1 {tokens['user'] if real_auth else garbage}"
        headers["X-Hydrogen-Client-ID"] = engine.client_id if real_auth else (client_id or "")
    elif endpoint == "login":
        path = "/hserve/v2.1/login/username/"
        headers["X-Hydrogen-Client-ID"] = engine.client_id if real_auth else (client_id or "")
    elif endpoint == "oserve-job":
        path = f"/oserve/v1.3/cloud-function/{quote(name.encode('utf-8', 'surrogatepass'))}/job/"
        headers["Authorization"] = f"Bearer {tokens['server'] if real_auth else garbage}"
    else:
        path = "/api/oauth2/access_token/"

    async with http.post(engine.url + path, data=body, headers=headers) as response:
        status, reply = response.status, await response.read()
    async with http.post(
        engine.url + "/hserve/v1/cloud-function/job/",
        json={"function_name": "echo", "data": "alive"},
        headers={
            "Authorization": f"Hydrogen-r1 {tokens['user']}",
            "X-Hydrogen-Client-ID": engine.client_id,
        },
    ) as response:
        alive = response.status, await response.json()

    event(f"{endpoint} {status}")
    assert 400 <= status < 500, (status, reply)
    error = json.loads(reply)
    assert error["status"] == "error" and isinstance(error["error_msg"], str) and error["error_msg"]
    assert (200, "alive") == (alive[0], alive[1]["data"])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
