"""Issue 11, bad arguments refused before sending (605), and mistakes a user makes answered
with an error that says what to do. A counting server proves that nothing was sent.

Assumed for the implementer: every refusal is ``InvalidArgumentError`` (605), raised by the
constructor or method that took the argument, or at the latest by the first call, never after
a request went out. Deadlines must be finite and sane (``inf``, ``1e308`` and ``10**400`` are
refused; an hour is fine). A header value, env id, platform or token with CR or LF is refused
(no header injection, no raw ``ValueError``). Dict keys in params must be ``str`` at every
depth. The https-to-plain-HTTP hint says "plain HTTP" and "http://".
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hostile_servers import (
    AUTHORIZE_PATH,
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN,
    TOKEN_PATH,
    Hostile,
    hostile_server,
    reply,
)

import minapp_async
from minapp_async import Session, Timeouts

pytestmark = pytest.mark.anyio

ABSURD_DEADLINES = [math.inf, 1e308, 10**400]
DEADLINE_IDS = ["inf", "1e308", "10**400"]


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[Hostile]:
    async with hostile_server() as server:
        # A working Open API flow, so that what is refused is the argument, not the flow.
        server.routes[AUTHORIZE_PATH] = reply(200, {"code": "c" * 40})
        server.routes[TOKEN_PATH] = reply(200, {"access_token": "a" * 40, "expires_in": 3600})
        yield server


async def refused(server: Hostile, action: Callable[[str], Awaitable[Any]]) -> None:
    """*action* (given the server's URL) raises InvalidArgumentError, and nothing was sent."""
    with pytest.raises(minapp_async.InvalidArgumentError) as info:
        await action(server.url)
    gc.collect()  # a connection leaked by a raw ValueError (today) is reported here

    assert 605 == info.value.code
    assert [] == server.texts()


# -- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("deadline", ABSURD_DEADLINES, ids=DEADLINE_IDS)
async def test_an_absurd_deadline_in_invoke_is_605(server: Hostile, deadline: float) -> None:
    """``invoke(timeout=inf | 1e308 | 10**400)``: 605, nothing sent."""

    async def action(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
            await s.invoke("f", timeout=deadline)

    await refused(server, action)


@pytest.mark.parametrize("deadline", ABSURD_DEADLINES, ids=DEADLINE_IDS)
async def test_an_absurd_deadline_in_map_is_605(server: Hostile, deadline: float) -> None:
    """``map(..., timeout=...)`` and ``invoke_many``: 605, nothing sent."""

    async def with_map(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
            async with s.map("f", [1, 2], timeout=deadline) as outcomes:
                async for _ in outcomes:
                    pass

    async def with_invoke_many(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
            await s.invoke_many("f", [1, 2], timeout=deadline, errors="collect")

    await refused(server, with_map)
    await refused(server, with_invoke_many)


@pytest.mark.parametrize("deadline", ABSURD_DEADLINES, ids=DEADLINE_IDS)
@pytest.mark.parametrize("field", ["sync", "ack", "connect", "pool"])
async def test_an_absurd_deadline_in_timeouts_is_605(
    server: Hostile, deadline: float, field: str
) -> None:
    """``Timeouts(<field>=...)``, ``Session(timeout=...)`` and ``with_options(timeout=...)``:
    605 (an InvalidArgumentError, not a plain ValueError or an overflow later), nothing sent."""

    async def in_timeouts(url: str) -> None:
        timeouts = Timeouts(**{field: deadline})
        async with Session(CLIENT_ID, base_url=url, token=TOKEN, timeout=timeouts) as s:
            await s.invoke("f")

    async def in_session(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN, timeout=deadline) as s:
            await s.invoke("f")

    async def in_view(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
            await s.with_options(timeout=deadline).invoke("f")

    await refused(server, in_timeouts)
    if field == "sync":
        await refused(server, in_session)
        await refused(server, in_view)


async def test_a_long_sane_deadline_still_works(server: Hostile) -> None:
    """An hour is a deadline like any other: the call is sent and succeeds. (Holds today;
    guards the fix against refusing too much.)"""
    async with Session(
        CLIENT_ID, base_url=server.url, token=TOKEN, timeout=Timeouts(sync=3600, ack=3600)
    ) as s:
        assert (await s.invoke("f", timeout=3600)).ok


# -- CR/LF -------------------------------------------------------------------------------------

CRLF_VALUES = ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb"]
CRLF_IDS = ["crlf", "lf", "cr"]


@pytest.mark.parametrize("bad", CRLF_VALUES, ids=CRLF_IDS)
@pytest.mark.parametrize(
    "where",
    [
        "header-value",
        "header-name",
        "env_id",
        "platform",
        "token",
        "view-header",
        "view-env_id",
        "view-platform",
        "as_user",
        "set_token",
    ],
)
async def test_cr_or_lf_in_anything_sent_as_a_header_is_605(
    server: Hostile, bad: str, where: str
) -> None:
    """CR or LF in a header value or name, ``env_id``, ``platform`` or a token (at the
    Session, in ``with_options``, ``as_user`` or ``auth.set_token``): 605, nothing sent."""

    async def action(url: str) -> None:
        kw: dict[str, Any] = {"token": TOKEN}
        if where == "header-value":
            kw["headers"] = {"X-Trace": bad}
        elif where == "header-name":
            kw["headers"] = {f"X-{bad}": "v"}
        elif where in ("env_id", "platform", "token"):
            kw[where] = bad
        async with Session(CLIENT_ID, base_url=url, **kw) as s:
            if where == "view-header":
                s = s.with_options(headers={"X-Trace": bad})
            elif where == "view-env_id":
                s = s.with_options(env_id=bad)
            elif where == "view-platform":
                s = s.with_options(platform=bad)
            elif where == "as_user":
                s = s.as_user(bad)
            elif where == "set_token":
                await s.auth.set_token(bad, user_id=1, expires_in=3600)
            await s.invoke("f")

    await refused(server, action)


# -- params keys ---------------------------------------------------------------------------------

NON_STR_KEYS = [
    {1: "a", "1": "b"},
    {1: "a"},
    {True: "a"},
    {None: "a"},
    {1.5: "a"},
    {"outer": [{"ok": 1}, {2: "b"}]},
]
KEY_IDS = ["int-and-str-1", "int", "bool", "none", "float", "nested"]


@pytest.mark.parametrize("params", NON_STR_KEYS, ids=KEY_IDS)
@pytest.mark.parametrize("api", ["client", "open"])
async def test_a_dict_with_a_non_str_key_is_605(server: Hostile, params: Any, api: str) -> None:
    """Params with a non-str key at any depth (JSON would coerce it, even into duplicate
    keys): 605, nothing sent (with server credentials, not even the token request)."""

    async def action(url: str) -> None:
        creds: dict[str, Any] = (
            {"token": TOKEN} if api == "client" else {"client_secret": CLIENT_SECRET}
        )
        async with Session(CLIENT_ID, base_url=url, **creds) as s:
            await s.invoke("f", params)

    await refused(server, action)


async def test_a_non_str_key_in_one_map_item_fails_that_item_only(server: Hostile) -> None:
    """``map(errors="collect")`` over three items, the middle one with an int key: that
    outcome has InvalidArgumentError, the other two are sent and succeed, and the bad one
    never reaches the server."""
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        batch = await s.invoke_many("f", [{"a": 1}, {1: "x"}, {"b": 2}], errors="collect")

    assert [True, False, True] == [o.ok for o in batch.outcomes]
    assert isinstance(batch.outcomes[1].error, minapp_async.InvalidArgumentError)
    assert 2 == len(server.seen)
    assert all(b'"1"' not in seen.body for seen in server.seen)


@pytest.mark.parametrize("name", [".", ".."])
async def test_open_api_names_dot_and_dotdot_are_605(server: Hostile, name: str) -> None:
    """``.`` and ``..`` as an Open API function name would escape the route (``..`` was sent
    as ``POST /oserve/v1.3/job/`` with the Bearer token): 605, nothing sent. The client API
    sends the name in the body, but the same names are refused there too, for one rule."""

    async def open_api(url: str) -> None:
        async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=url) as s:
            await s.invoke(name)

    async def client_api(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
            await s.invoke(name)

    await refused(server, open_api)
    await refused(server, client_api)


# -- mistakes a user makes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url", ["127.0.0.1:8000", "localhost:8000", "ftp://127.0.0.1/", "//127.0.0.1:8000"]
)
async def test_a_base_url_without_an_http_scheme_is_605_at_once(base_url: str) -> None:
    """``Session(base_url="127.0.0.1:8000")`` (no scheme) or another scheme: 605 when the
    Session is made, as the CLI does, not a NetworkError 600 with may_have_executed=True."""
    with pytest.raises(minapp_async.InvalidArgumentError) as info:
        Session(CLIENT_ID, base_url=base_url, token=TOKEN)

    assert "http" in info.value.message


async def test_https_to_a_plain_http_port_says_so(server: Hostile) -> None:
    """An ``https://`` base URL to a server that speaks plain HTTP: the HError's message
    carries a hint ("plain HTTP", use "http://"), not only ``[SSL: WRONG_VERSION_NUMBER]``."""
    url = server.url.replace("http://", "https://")
    async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
        with pytest.raises(minapp_async.HError) as info:
            await s.invoke("f", timeout=10)

    assert "plain HTTP" in str(info.value)
    assert "http://" in str(info.value)


async def test_a_forgotten_await_warns_about_invoke(server: Hostile) -> None:
    """``s.invoke("f")`` without ``await``: the RuntimeWarning's first line names ``invoke``,
    not the private ``_invoke`` (nor ``_prepare``)."""
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s.invoke("f")  # the mistake
            gc.collect()

    first_lines = [str(w.message).splitlines()[0] for w in caught if w.category is RuntimeWarning]
    assert first_lines, "no RuntimeWarning"
    assert all("invoke" in line for line in first_lines), first_lines
    assert not any("_invoke" in line or "_prepare" in line for line in first_lines), first_lines
    assert [] == server.seen


async def test_a_plain_for_over_map_says_async_for(server: Hostile) -> None:
    """``for x in session.map(...)``: a TypeError whose message says to use ``async for``,
    and nothing is sent."""
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        with pytest.raises(TypeError, match="async for"):
            for _ in s.map("f", [1, 2]):  # type: ignore[attr-defined]
                pass

    assert [] == server.seen


# -- beyond the issue's examples -----------------------------------------------------------------


@pytest.mark.parametrize(
    "deadline", [math.nan, -1.0, 0, -math.inf, 10**5000], ids=["nan", "-1", "0", "-inf", "10**5000"]
)
async def test_other_impossible_deadlines_are_605(server: Hostile, deadline: float) -> None:
    """NaN, zero, negative and a 5,000-digit int (whose repr would itself fail): 605 in
    ``invoke`` and in ``Timeouts``, nothing sent."""

    async def in_invoke(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN) as s:
            await s.invoke("f", timeout=deadline)

    async def in_timeouts(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN, timeout=Timeouts(ack=deadline)):
            pass

    await refused(server, in_invoke)
    await refused(server, in_timeouts)


@pytest.mark.parametrize(
    "headers",
    [{"X Trace": "v"}, {"X-Trace:": "v"}, {"": "v"}, {"X-Trace": "a\x00b"}, {"Ünï": "v"}],
    ids=["space-in-name", "colon-in-name", "empty-name", "nul-in-value", "non-ascii-name"],
)
async def test_a_header_name_that_is_no_http_token_is_605(
    server: Hostile, headers: dict[str, str]
) -> None:
    """A header name with a space, a colon, nothing or non-ASCII, and a value with NUL: 605
    (aiohttp would send some of them as they are, or fail with a raw error)."""

    async def action(url: str) -> None:
        async with Session(CLIENT_ID, base_url=url, token=TOKEN, headers=headers) as s:
            await s.invoke("f")

    await refused(server, action)


@pytest.mark.parametrize("where", ["client_id", "client_secret", "token-nul", "base_url"])
async def test_cr_lf_or_nul_in_the_other_session_strings_is_605(
    server: Hostile, where: str
) -> None:
    """The client id (a header), the client secret, a token with NUL, a base URL with a line
    break: 605, nothing sent."""

    async def action(url: str) -> None:
        if where == "client_id":
            Session("id\r\nX-Injected: 1", base_url=url, token=TOKEN)
        elif where == "client_secret":
            Session(CLIENT_ID, base_url=url, client_secret="cs\nX-Injected: 1")
        elif where == "token-nul":
            Session(CLIENT_ID, base_url=url, token="tok\x00en")
        else:
            Session(CLIENT_ID, base_url=url + "/\r\nX-Injected: 1", token=TOKEN)

    await refused(server, action)


async def test_names_that_only_look_like_dots_still_work(server: Hostile) -> None:
    """Only ``.`` and ``..`` are refused: ``...``, ``.f`` and ``f.`` are names like others,
    quoted into the Open API path. (Guards the rule against refusing too much.)"""
    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.url) as s:
        for name in ("...", ".f", "f."):
            assert (await s.invoke(name)).ok

    jobs = [seen.path for seen in server.seen if "cloud-function" in seen.path]
    assert jobs == [f"/oserve/v1.3/cloud-function/{n}/job/" for n in ("...", ".f", "f.")]


async def test_str_keys_at_depth_and_tuples_still_work(server: Hostile) -> None:
    """Nested dicts with str keys inside lists and tuples are sent as before."""
    params = {"a": [{"b": ({"c": 1},)}], "d": {"e": {"f": [1, 2]}}}
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        assert (await s.invoke("f", params)).ok

    assert {"a": [{"b": [{"c": 1}]}], "d": {"e": {"f": [1, 2]}}} == server.seen[0].json()["data"]
