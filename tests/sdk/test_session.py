"""Session lifecycle: lazy pool, idempotent close, warnings when left open, loop binding."""

from __future__ import annotations

import asyncio
import gc
import warnings

import anyio
import pytest
from fakeserver import CLIENT_ID, FakeServer, Reply
from support import wait_until

import minapp_async

pytestmark = pytest.mark.anyio


async def test_pool_is_created_on_first_use(server: FakeServer) -> None:
    """Making a Session opens nothing; the first call does; aclose closes it, twice is fine."""
    s = minapp_async.Session(CLIENT_ID, base_url=server.url)
    assert not s.pool_stats.opened
    await s.invoke("f")
    assert s.pool_stats.opened

    await s.aclose()
    await s.aclose()

    assert (s.closed, s.pool_stats.opened) == (True, False)


async def test_unclosed_session_warns(server: FakeServer) -> None:
    """A Session that was used and never closed warns with ResourceWarning when collected."""
    s = minapp_async.Session(CLIENT_ID, base_url=server.url)
    await s.invoke("f")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del s
        gc.collect()

    ours = [w for w in caught if "Unclosed <minapp_async.Session" in str(w.message)]
    assert [ResourceWarning] == [w.category for w in ours]
    assert "async with Session" in str(ours[0].message)
    # The recorded warning holds the Session as its source, and with it aiohttp's session:
    # let both go here, where aiohttp's own "Unclosed client session" warning is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del caught, ours
        gc.collect()


async def test_unused_session_does_not_warn() -> None:
    """A Session that was never used holds nothing and needs no close."""
    s = minapp_async.Session(CLIENT_ID)
    del s
    gc.collect()


async def test_no_reopen(server: FakeServer) -> None:
    """A closed Session cannot be entered again."""
    s = minapp_async.Session(CLIENT_ID, base_url=server.url)
    async with s:
        pass
    with pytest.raises(minapp_async.SessionClosedError, match="reopened"):
        async with s:
            pass


def test_sync_with_is_refused() -> None:
    """'with Session()' is a mistake that says how to fix it."""
    with pytest.raises(TypeError, match="async with"), minapp_async.Session(CLIENT_ID):
        pass


def test_bound_to_one_loop() -> None:
    """A Session used from a second event loop says so instead of failing obscurely."""
    s = minapp_async.Session(CLIENT_ID, base_url="http://127.0.0.1:9")

    async def use() -> None:
        with pytest.raises(minapp_async.NetworkError):  # nothing listens on port 9
            await s.invoke("f", timeout=2)

    async def use_again() -> None:
        with pytest.raises(minapp_async.SessionClosedError, match="another event loop"):
            await s.invoke("f")

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(use())
        asyncio.run(use_again(), debug=True)
    finally:
        first.run_until_complete(s.aclose())
        first.close()


async def test_repr_hides_secrets(server: FakeServer) -> None:
    """Neither the token nor the client secret appears in any repr."""
    user = minapp_async.Session(CLIENT_ID, token="sekrit-token")
    app = minapp_async.Session(CLIENT_ID, client_secret="sekrit-secret")
    creds = minapp_async.UserCredentials(username="u", password="sekrit-pw")
    text = " ".join(repr(x) for x in (user, app, creds, user.auth, app._auth))

    assert "sekrit" not in text


async def test_malformed_2xx_bodies(session: minapp_async.Session, server: FakeServer) -> None:
    """A 2xx body that is not a result raises ResponseFormatError with a snippet, never a
    json or aiohttp exception."""
    cases = [
        (Reply(body=b"<html>hi</html>", content_type="text/html"), "not JSON (text/html)"),
        (Reply(body=b""), "empty body"),
        (Reply(body=b'{"code":0,"da'), "not JSON"),
        (Reply(body=b"[1,2]"), "expected a JSON object, got list"),
        (Reply(body=b'{"data":1}'), "without an integer 'code'"),
        (Reply(body=b'{"code":"0"}'), "without an integer 'code'"),
    ]
    for reply, text in cases:
        server.reply(reply)
        with pytest.raises(minapp_async.ResponseFormatError) as info:
            await session.invoke("f")
        assert text in info.value.message
        assert info.value.code == 200
        assert info.value.may_have_executed


async def test_sync_ack_shape_is_not_a_sync_result(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """{"status":"ok"} is an acknowledgement: as the reply to a sync call it is malformed."""
    server.json_reply(200, {"status": "ok"})

    with pytest.raises(minapp_async.ResponseFormatError):
        await session.invoke("f", sync=True)


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("http://example.com", True),
        ("http://10.0.0.5:8000", True),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
        ("https://example.com", False),
    ],
)
def test_plain_http_to_another_host_warns(url: str, warns: bool) -> None:
    """Plain http:// to anything but this machine warns that tokens would travel in clear."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minapp_async.Session(CLIENT_ID, base_url=url)

    assert warns == any(issubclass(w.category, minapp_async.InsecureURLWarning) for w in caught)


async def test_finished_calls_deadlines_never_fire_later(
    session: minapp_async.Session, server: FakeServer
) -> None:
    """One task making call after call, as a map worker does, is never cancelled by the
    deadline of a call that already finished: deadlines share timers and leave them on exit."""
    timeout = 0.2
    loop = asyncio.get_running_loop()
    end = loop.time() + 5 * timeout  # five deadlines' worth of calls, each well within its own
    calls = 0
    while loop.time() < end:
        assert (await session.invoke("f", calls, timeout=timeout)).ok
        calls += 1

    assert calls > 5
    assert [r.body for r in server.requests[:2]] == [
        b'{"function_name":"f","sync":true,"data":0}',
        b'{"function_name":"f","sync":true,"data":1}',
    ]


async def test_pool_stats_show_the_pool_from_outside(server: FakeServer) -> None:
    """pool_stats: size from Limits; calls holding and waiting for a connection; nothing held
    once they are cancelled; not opened before first use or after close. Views share it."""
    server.reply(Reply(hang=True), Reply(hang=True))
    s = minapp_async.Session(
        CLIENT_ID, base_url=server.url, token="t", limits=minapp_async.Limits(1)
    )
    assert (
        minapp_async.PoolStats(size=1, in_use=0, waiting=0, connections=0, idle=0, opened=False)
        == s.pool_stats
    )
    async with s:
        async with anyio.create_task_group() as tg:

            async def call(session: minapp_async.Session, name: str) -> None:
                await session.invoke(name)

            tg.start_soon(call, s, "f")
            tg.start_soon(call, s.with_options(timeout=30), "g")
            await wait_until(lambda: len(server.requests) == 1 and s.pool_stats.waiting == 1)
            stats = s.with_options(env_id="e").pool_stats
            assert (1, 1, 1, True) == (stats.in_use, stats.waiting, stats.connections, stats.opened)
            tg.cancel_scope.cancel()
        stats = s.pool_stats
        assert (0, 0, 0) == (stats.in_use, stats.waiting, stats.connections)
    assert not s.pool_stats.opened
