"""The public API as users write it: a contract checked by ``mypy`` (strict), never run.

Each function below is a typical use; ``assert_type`` pins what mypy infers, so a change that
loosens a type (to ``Any``) or breaks an overload fails CI. Lines ending in ``type: ignore[...]``
are misuses that must stay type errors: with ``warn_unused_ignores`` (part of strict), an
ignore that is no longer needed fails too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from typing_extensions import assert_type

import minapp_async
from minapp_async import (
    AuthenticationError,
    Batch,
    CallInfo,
    CurrentUser,
    ErrorDetails,
    FileTokenStore,
    FunctionError,
    HError,
    InvalidArgumentError,
    InvokeResult,
    Limits,
    MemoryTokenStore,
    Outcome,
    PoolSizeWarning,
    Promise,
    RateLimitError,
    RequestTimeoutError,
    Retry,
    Session,
    SessionMissingError,
    StoredSession,
    Summary,
    Timeouts,
    TokenStore,
    UserCredentials,
)
from minapp_async.engine import (
    DEFAULT_CLIENT_ID,
    Engine,
    EngineConfig,
    EngineOutbox,
    EngineStats,
    EngineTables,
    FunctionStats,
    Job,
    JobStatus,
)
from minapp_async.testing import HELLO_WORLD_JS, running_engine

# ---------------------------------------------------------------- sessions


async def client_api_session() -> None:
    """A user's Session on the client API, with every option."""
    async with Session(
        "1a2b3c4d5e6f7a8b9c0d",
        base_url="http://127.0.0.1:8000",
        env_id="test-env",
        timeout=Timeouts(sync=8, ack=3, connect=2, pool=1),
        limits=Limits(max_connections=50, max_connections_per_host=10, keepalive_timeout=30),
        retry=Retry(attempts=5, backoff_initial=0.1, retry_executed=True),
        headers={"X-Trace": "1"},
        platform="WEB",
        token_store=FileTokenStore("app-session.json"),
    ) as session:
        assert_type(session, Session)
        assert_type(session.client_id, str)
        assert_type(session.closed, bool)

        user = await session.auth.login(username="allen", password="pw")
        assert_type(user, CurrentUser)
        assert_type(user.id, int | None)
        assert_type(user.anonymous, bool)
        assert_type(user.expires_at, float | None)
        assert_type(user.info, dict[str, Any])
        assert_type(await session.auth.anonymous_login(), CurrentUser)
        assert_type(await session.auth.register(email="a@b.c", password="pw"), CurrentUser)
        assert_type(await session.auth.get_current_user(), CurrentUser)
        assert_type(await session.auth.current_user(), CurrentUser | None)
        await session.auth.set_token("t", user_id=7, expires_in=3600)
        await session.auth.logout()

        session.invoke(42)  # type: ignore[arg-type]
        session.invoke("f", sync="yes")  # type: ignore[arg-type]
        await session.auth.login(username="allen")  # type: ignore[call-arg]


async def timeout_forms() -> None:
    """One number sets both modes; None means no deadline."""
    async with Session("id", timeout=3.5) as a, Session("id", timeout=None) as b:
        assert_type(a, Session)
        assert_type(b, Session)


async def server_session() -> None:
    """The app itself on the Open API: no user login."""
    async with Session("id", client_secret="secret") as session:
        result = await session.invoke("report", {"day": "2024-01-01"})
        assert_type(result, InvokeResult)


def credentials_and_stores() -> list[Session]:
    """Logins the Session redoes by itself, and token stores of the user's own."""

    class RedisStore:
        async def load(self) -> StoredSession | None:
            return None

        async def save(self, session: StoredSession) -> None:
            pass

        async def clear(self) -> None:
            pass

    store: TokenStore = RedisStore()
    memory: TokenStore = MemoryTokenStore()
    creds = UserCredentials(username="svc", password="pw")
    assert_type(creds.kind, str)
    return [
        Session("id", credentials=creds, token_store=store),
        Session("id", credentials=UserCredentials(phone="13800000000", password="pw")),
        Session("id", token="a-token", token_store=memory),
    ]


# ---------------------------------------------------------------- invoke and results


async def invoke_and_results(session: Session) -> None:
    promise = session.invoke("helloWorld", {"name": "allen"})
    assert_type(promise, Promise[InvokeResult])
    result = await promise
    assert_type(result, InvokeResult)
    assert_type(result.code, int)
    assert_type(result.data, Any)
    assert_type(result.error, dict[str, Any])
    assert_type(result.raw, bytes)
    assert_type(result.status, int)
    assert_type(result.request_id, str | None)
    assert_type(result.ok, bool)
    assert_type(result.raise_for_code(), InvokeResult)

    # JS-style positional sync flag, per-call deadline, no params at all.
    assert_type(await session.invoke("helloWorld", {"name": "allen"}, False), InvokeResult)
    assert_type(await session.invoke("ping", timeout=None), InvokeResult)
    assert_type(await session.invoke("ping", [1, "two", None], sync=True, timeout=2), InvokeResult)
    assert_type(await session.invoke_function("helloWorld"), InvokeResult)


async def promise_chains(session: Session) -> None:
    """then/catch/finally_ with plain and async handlers, as in ported mini-program code."""

    async def fetch_name(result: InvokeResult) -> str:
        return str(result.data)

    def describe(err: Exception) -> int:
        return err.code if isinstance(err, HError) else -1

    async def recover(err: Exception) -> None:
        pass

    assert_type(session.invoke("f").then(lambda r: r.code), Promise[int])
    assert_type(session.invoke("f").then(fetch_name), Promise[str])
    assert_type(session.invoke("f").then(fetch_name, describe), Promise[str | int])
    assert_type(session.invoke("f").then(lambda r: r.ok, recover), Promise[bool | None])
    assert_type(session.invoke("f").then(None, describe), Promise[InvokeResult | int])
    assert_type(session.invoke("f").catch(describe), Promise[InvokeResult | int])
    assert_type(session.invoke("f").catch(recover), Promise[InvokeResult | None])
    assert_type(session.invoke("f").finally_(lambda: None), Promise[InvokeResult])

    chained = session.invoke("f").then(fetch_name).then(len).catch(describe)
    assert_type(chained, Promise[int])
    assert_type(await chained, int)

    session.invoke("f").then(lambda r: r.nope)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- views and hooks


def views_and_hooks(session: Session, token: str) -> list[Session]:
    def on_request(info: CallInfo) -> None:
        assert_type(info.function_name, str)
        assert_type(info.sync, bool)
        assert_type(info.attempt, int)
        info.state["started"] = info.elapsed

    def on_response(info: CallInfo) -> None:
        assert_type(info.status, int | None)
        assert_type(info.code, int | None)
        assert_type(info.error, HError | None)
        assert_type(info.request_id, str | None)
        assert_type(info.elapsed, float)

    traced = Session("id", on_request=on_request, on_response=on_response, tracing=True)
    return [
        traced,
        session.with_options(timeout=3, env_id="staging", retry=Retry(attempts=1)),
        session.with_options(headers={"X-Trace": "2"}, on_response=None, tracing=False),
        session.as_user(token),
    ]


# ---------------------------------------------------------------- errors


async def errors(session: Session) -> None:
    try:
        (await session.invoke("f")).raise_for_code()
    except FunctionError as err:
        assert_type(err.error_message, str)
        assert_type(err.stack, str)
        assert_type(err.type, str)
        assert_type(err.error, dict[str, Any])
    except RateLimitError as err:
        assert_type(err.retry_after, float | None)
    except (AuthenticationError, SessionMissingError) as err:
        assert_type(err, AuthenticationError | SessionMissingError)
    except HError as err:
        assert_type(err.code, int)
        assert_type(err.message, str)
        assert_type(err.details, ErrorDetails)
        assert_type(err.details.request_id, str | None)
        assert_type(err.details.status, int | None)
        assert_type(err.attempts, int)
        assert_type(err.may_have_executed, bool)

    # The builtin bases: generic handlers keep working.
    timeout: TimeoutError = RequestTimeoutError()
    bad: ValueError = InvalidArgumentError("no")
    refused: PermissionError = AuthenticationError(401)
    assert_type(minapp_async.__version__, str)
    del timeout, bad, refused


# ---------------------------------------------------------------- fan-out


async def fan_out(session: Session) -> None:
    def rows() -> Iterator[dict[str, int]]:
        yield from ({"n": i} for i in range(10))

    async def arows() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async with session.map("score", rows(), concurrency=8, rate=100.0) as outcomes:
        async for outcome in outcomes:
            assert_type(outcome, Outcome)
            assert_type(outcome.index, int)
            assert_type(outcome.result, InvokeResult | None)
            assert_type(outcome.error, HError | None)
            assert_type(outcome.ok, bool)
    async for outcome in session.map("score", arows(), ordered=False, errors="collect"):
        assert_type(outcome.latency, float)
    batch = await session.invoke_many("score", [1, 2, 3], progress=lambda done, total: None)
    assert_type(batch, Batch)
    assert_type(batch.outcomes, list[Outcome])
    assert_type(batch.summary, Summary)
    assert_type(batch.summary.errors[601], int)
    session.map("score", rows(), errors="ignore")  # type: ignore[arg-type]
    warning: UserWarning = PoolSizeWarning("pool")
    del warning


# ---------------------------------------------------------------- engine and testing


async def local_engine() -> None:
    config = EngineConfig(functions_dir=Path("examples/functions"), allow_anonymous=True)
    async with Engine(config, sync_time_limit=1.0) as engine:
        assert_type(engine.url, str)
        assert_type(engine.client_id, str)
        assert_type(engine.client_secret, str)
        assert_type(engine.create_user(username="allen", password="pw"), int)
        engine.faults.add("status", status=429, retry_after=1, times=2)
        engine.faults.add("explode")  # type: ignore[arg-type]
        async with Session(engine.client_id, base_url=engine.url) as session:
            await session.invoke("helloWorld", {"name": "allen"}, False)
        await engine.drain(timeout=10)
        jobs = await engine.jobs("helloWorld")
        assert_type(jobs, list[Job])
        job = await engine.wait_job(jobs[0].id, timeout=5)
        assert_type(job.status, JobStatus)
        assert_type(job.result, dict[str, Any] | None)
        stats = engine.stats()
        assert_type(stats, EngineStats)
        assert_type(stats.functions["helloWorld"], FunctionStats)
        assert_type(engine.executions("helloWorld"), int)
        assert_type(engine.tables, EngineTables)
        assert_type(engine.tables.seed("prize", [{"name": "mug"}]), int)
        assert_type(engine.tables.rows("prize"), list[dict[str, Any]])
        engine.tables.reset("prize", drop=True)
        engine.tables.reset(1)  # a table id
        engine.tables.seed("prize", "not rows")  # type: ignore[arg-type]
        assert_type(engine.outbox, EngineOutbox)
        assert_type(engine.outbox.messages("email"), list[dict[str, Any]])
    client_id: str = DEFAULT_CLIENT_ID  # a documented constant, usable as a default
    del client_id


async def testing_helper() -> None:
    async with running_engine({"helloWorld.js": HELLO_WORLD_JS}, allow_anonymous=True) as engine:
        assert_type(engine, Engine)
    async with running_engine("examples/functions") as engine:
        assert_type(engine, Engine)
    async with running_engine(None, tables={"prize": [{"name": "mug"}]}) as engine:
        assert_type(engine, Engine)
