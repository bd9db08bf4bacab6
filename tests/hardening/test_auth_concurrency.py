"""Proof 2: auth under concurrency. A crowd of calls with an expired credential makes exactly
one login (or one refresh), counted on the wire by a proxy; a 401 leads to one re-login and
one replay, then a clear error; per-request user tokens never mix users."""

from __future__ import annotations

import random
import time

import anyio
import pytest
from hardening_support import counting_proxy
from support import token_in

import minapp_async
from minapp_async import MemoryTokenStore, StoredSession
from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio

CROWD = 1000
LOGIN = "/hserve/v2.1/login/username/"
ACCESS_TOKEN = "/api/oauth2/access_token/"
AUTHORIZE = "/api/oauth2/hydrogen/openapi/authorize/"


async def crowd(session: minapp_async.Session, n: int = CROWD) -> list[object]:
    """*n* concurrent sync invocations of echo; their results in order."""
    results: list[object] = [None] * n

    async def one(i: int) -> None:
        results[i] = (await session.invoke("echo", i, timeout=80)).data

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return results


async def test_a_crowd_with_a_server_expired_token_logs_in_once(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> None:
    """1,000 calls whose token the server expired: 1,000 401s, one login, every call served."""
    async with (
        counting_proxy(engine.url) as proxy,
        minapp_async.Session(engine.client_id, base_url=proxy.url, credentials=credentials) as s,
    ):
        await s.invoke("echo", -1)
        engine.expire_sessions()
        before = proxy.count(LOGIN)
        results = await crowd(s)

    assert list(range(CROWD)) == results
    assert (1, 1) == (before, proxy.count(LOGIN) - before)


async def test_a_crowd_with_a_locally_expired_session_logs_in_once(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> None:
    """1,000 calls that find an expired session in the store: one login before any invoke."""
    stale = StoredSession(token="x" * 32, user_id=1, expires_at=time.time() - 60)
    store = MemoryTokenStore()
    await store.save(stale)
    async with (
        counting_proxy(engine.url) as proxy,
        minapp_async.Session(
            engine.client_id, base_url=proxy.url, credentials=credentials, token_store=store
        ) as s,
    ):
        results = await crowd(s)

    assert list(range(CROWD)) == results
    assert 1 == proxy.count(LOGIN)
    assert CROWD == proxy.count("/cloud-function/job/")  # nobody sent the stale token


async def test_a_crowd_with_an_expired_access_token_refreshes_once(engine: Engine) -> None:
    """1,000 Open API calls whose access token expired: one refresh grant, no new code flow."""
    async with (
        counting_proxy(engine.url) as proxy,
        minapp_async.Session(
            engine.client_id, client_secret=engine.client_secret, base_url=proxy.url
        ) as s,
    ):
        await s.invoke("echo", -1)
        engine.expire_sessions()
        results = await crowd(s)

    assert list(range(CROWD)) == results
    # One code flow at the start, then one refresh grant for the whole crowd.
    assert (1, 2) == (proxy.arrivals.count(AUTHORIZE), proxy.arrivals.count(ACCESS_TOKEN))


@pytest.mark.parametrize("renewal", [LOGIN, ACCESS_TOKEN], ids=["user", "server"])
async def test_the_renewal_does_not_queue_behind_the_crowd(
    engine: Engine, credentials: minapp_async.UserCredentials, renewal: str
) -> None:
    """200 calls queued for a pool of 4 when the token expires: the re-login or refresh the
    first 401 starts goes out at once, not behind the queued calls that carry the dead token."""
    auth: dict[str, object] = (
        {"credentials": credentials}
        if renewal == LOGIN
        else {"client_secret": engine.client_secret}
    )
    async with (
        counting_proxy(engine.url) as proxy,
        minapp_async.Session(
            engine.client_id, base_url=proxy.url, limits=minapp_async.Limits(4), **auth
        ) as s,
    ):
        await s.invoke("echo", -1)
        engine.expire_sessions()
        start = len(proxy.arrivals)
        results = await crowd(s, 200)

    after_expiry = proxy.arrivals[start:]
    assert list(range(200)) == results
    assert 1 == after_expiry.count(renewal)
    # Before it went only the 4 calls holding a connection and the few handed one as they
    # finished: not the 196 still waiting in the pool when the first 401 came back.
    assert after_expiry.index(renewal) <= 8


async def test_a_401_re_logs_in_and_replays_once_then_fails_clearly(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> None:
    """Two 401s in a row: one re-login, one replay, then AuthenticationError; nothing ran."""
    async with (
        counting_proxy(engine.url) as proxy,
        minapp_async.Session(engine.client_id, base_url=proxy.url, credentials=credentials) as s,
    ):
        await s.invoke("echo", 0)
        engine.faults.add("status", status=401, times=2)
        with pytest.raises(minapp_async.AuthenticationError) as info:
            await s.invoke("echo", 1)
        after_one_401 = await s.invoke("echo", 2)  # a single 401 is healed by the replay

    assert (401, False) == (info.value.code, info.value.may_have_executed)
    assert "injected fault: HTTP 401" in info.value.message
    assert (1 + 1, 4) == (proxy.count(LOGIN), proxy.count("/cloud-function/job/"))
    assert 2 == after_one_401.data
    assert 2 == engine.executions("echo")


async def test_a_401_on_the_open_api_refreshes_and_replays_once(engine: Engine) -> None:
    """Server credentials: two 401s give one renewal, one replay, then a clear error."""
    async with (
        counting_proxy(engine.url) as proxy,
        minapp_async.Session(
            engine.client_id, client_secret=engine.client_secret, base_url=proxy.url
        ) as s,
    ):
        await s.invoke("echo", 0)
        engine.faults.add("status", status=401, times=2)
        with pytest.raises(minapp_async.AuthenticationError) as info:
            await s.invoke("echo", 1)

    assert not info.value.may_have_executed
    assert 2 == proxy.arrivals.count(ACCESS_TOKEN)  # the first grant, then one refresh
    assert 1 == engine.executions("echo")


async def test_per_request_users_never_mix(engine: Engine) -> None:
    """Interleaved tasks invoking through as_user(token) each see their own user, always."""
    users = {}
    async with minapp_async.Session(engine.client_id, base_url=engine.url) as s:
        for n in range(8):
            user_id = engine.create_user(username=f"tenant{n}", password=f"pw{n}")
            store = minapp_async.MemoryTokenStore()
            async with minapp_async.Session(
                engine.client_id, base_url=engine.url, token_store=store
            ) as login:
                await login.auth.login(username=f"tenant{n}", password=f"pw{n}")
                token = await token_in(store)
            users[token] = user_id
        seen: list[tuple[int, object]] = []
        rng = random.Random(5)

        async def handler(token: str) -> None:
            view = s.as_user(token)
            for _ in range(25):
                await anyio.sleep(rng.random() / 100)  # interleave with the other tenants
                seen.append((users[token], (await view.invoke("whoami")).data))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for token in users:
                    tg.start_soon(handler, token)

    assert 8 * 25 == len(seen)
    assert all(expected == got for expected, got in seen), seen
    assert await s.auth.current_user() is None  # the owner's own login was never touched
