"""The SDK against the real local engine: logins, both auth modes, limits, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import minapp_async
from minapp_async.engine import Engine
from minapp_async.testing import HELLO_WORLD_JS, running_engine

pytestmark = pytest.mark.anyio

FUNCTIONS = {
    "helloWorld.js": HELLO_WORLD_JS,
    "fail.js": "exports.main = async function (event) { throw new TypeError('bad input') }\n",
    "loop.py": "def main(event):\n    while True:\n        pass\n",
    "env.py": "def main(event):\n    return event.get('env')\n",
    "count.py": "def main(event):\n    return event['data']\n",
}
FAST = minapp_async.Retry(attempts=3, backoff_initial=0.01, backoff_max=0.05)


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """An engine with a short sync limit, and user allen."""
    async with running_engine(FUNCTIONS, sync_time_limit=1.0) as engine:
        engine.create_user(username="allen", password="pw")
        yield engine


@pytest.fixture(name="session")
async def _session(engine: Engine) -> AsyncIterator[minapp_async.Session]:
    """A Session logged in as allen, with fast retries."""
    creds = minapp_async.UserCredentials(username="allen", password="pw")
    async with minapp_async.Session(
        engine.client_id, base_url=engine.url, credentials=creds, retry=FAST
    ) as s:
        yield s


async def test_hello_world_sync_and_async(session: minapp_async.Session, engine: Engine) -> None:
    """The seed's call gives hello allen; the async call is acknowledged and then runs."""
    result = await session.invoke("helloWorld", {"name": "allen"})
    ack = await session.invoke("helloWorld", {"name": "allen"}, False)
    await engine.drain(timeout=10)

    assert (0, "hello allen", {}) == (result.code, result.data, result.error)
    assert result.request_id
    assert (0, {"status": "ok"}) == (ack.code, ack.data)
    assert ["fulfilled", "fulfilled"] == [j.status for j in (await engine.jobs("helloWorld"))]


async def test_anonymous_users_are_refused_by_default(engine: Engine) -> None:
    """An anonymous user's invoke gets the engine's 403, as the platform's default."""
    async with minapp_async.Session(engine.client_id, base_url=engine.url) as s:
        user = await s.auth.anonymous_login()
        with pytest.raises(minapp_async.ForbiddenError) as info:
            await s.invoke("helloWorld", {"name": "allen"})

    assert user.anonymous and user.info.get("_anonymous") is True
    assert 403 == info.value.code
    assert "anonymous" in info.value.message


async def test_anonymous_allowed_by_the_setting() -> None:
    """With allow_anonymous an anonymous user may invoke."""
    async with running_engine(FUNCTIONS, allow_anonymous=True) as engine:
        async with minapp_async.Session(engine.client_id, base_url=engine.url) as s:
            await s.auth.anonymous_login()
            assert "hello allen" == (await s.invoke("helloWorld", {"name": "allen"})).data


async def test_function_failure_resolves(session: minapp_async.Session) -> None:
    """A throwing function resolves with code 1 and the error's message, stack and type."""
    result = await session.invoke("fail")

    assert (1, None) == (result.code, result.data)
    with pytest.raises(minapp_async.FunctionError) as info:
        result.raise_for_code()
    assert ("bad input", "TypeError") == (info.value.error_message, info.value.type)
    assert "TypeError: bad input" in info.value.stack


async def test_runaway_function_is_a_400(session: minapp_async.Session, engine: Engine) -> None:
    """A function killed at the sync limit is the platform's 400, and was executed once."""
    with pytest.raises(minapp_async.BadRequestError, match="timed out") as info:
        await session.invoke("loop")

    assert info.value.may_have_executed
    assert 1 == engine.executions("loop")


async def test_env_reaches_the_function(session: minapp_async.Session) -> None:
    """env_id is sent as X-Hydrogen-Env-ID and arrives as event.env."""
    result = await session.with_options(env_id="test-env").invoke("env")

    assert {"id": "test-env", "name": "test-env"} == result.data


async def test_expired_sessions_relogin_once(session: minapp_async.Session, engine: Engine) -> None:
    """After the engine expires every token, 50 concurrent calls share one re-login."""
    await session.invoke("count", 0)
    engine.expire_sessions()

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(_count, session, i)

    assert 51 == engine.executions("count")


async def _count(session: minapp_async.Session, i: int) -> None:
    assert i == (await session.invoke("count", i)).data


async def test_server_credentials(engine: Engine) -> None:
    """A client_secret Session runs the real OAuth flow and invokes through the Open API."""
    async with minapp_async.Session(
        engine.client_id, client_secret=engine.client_secret, base_url=engine.url
    ) as s:
        result = await s.invoke("helloWorld", {"name": "allen"})
        engine.expire_sessions()
        again = await s.invoke("helloWorld", {"name": "bob"})

    assert ("hello allen", "hello bob") == (result.data, again.data)
    assert {"open_api"} == {j.source for j in (await engine.jobs("helloWorld"))}


@pytest.mark.parametrize("when", ["before", "after"])
async def test_faults_never_duplicate(
    session: minapp_async.Session, engine: Engine, when: str
) -> None:
    """Under dropped connections and 503s, each logical call runs at most once."""
    engine.faults.add("drop", when=when)  # type: ignore[arg-type]
    with pytest.raises(minapp_async.NetworkError) as info:
        await session.invoke("count", 1)
    engine.faults.add("status", status=503, when="before", times=2)
    assert 2 == (await session.invoke("count", 2)).data

    assert info.value.may_have_executed
    assert (1 if when == "after" else 0) + 1 == engine.executions("count")


async def test_unknown_function(session: minapp_async.Session) -> None:
    """An unknown or path-like name is the engine's 404, not a crash."""
    for name in ("nope", "../etc/passwd", "a/b"):
        with pytest.raises(minapp_async.NotFoundError):
            await session.invoke(name)
