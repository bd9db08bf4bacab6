"""Proof 1: retries are safe by default. Under every injected fault each logical call runs the
function at most once, errors say how many tries were made and whether it may have run, and
the failures that show it did not run (429, 503, schedule_failed) are retried to success."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hardening_support import FUNCTIONS
from support import wait_until

import minapp_async
from minapp_async import CallInfo, Retry
from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

FAST = Retry(attempts=3, backoff_initial=0.01, backoff_max=0.02)

#: kind -> (fault arguments, the error it must give, its code). Each one leaves the function
#: unrun (when="before") or run once (when="after"); none of them may make it run twice.
FAULTS: dict[str, tuple[dict[str, Any], type[minapp_async.HError], int | None]] = {
    "slow": ({"delay": 1.0}, minapp_async.RequestTimeoutError, 601),
    "drop": ({}, minapp_async.NetworkError, 600),
    "status-500": ({"status": 500}, minapp_async.ServerError, 500),
    "status-502": ({"status": 502}, minapp_async.ServerError, 502),
    "malformed": (
        {"body": b"<html>oops</html>", "content_type": "text/html"},
        minapp_async.ResponseFormatError,
        200,
    ),
    "reset_mid_body": ({}, minapp_async.NetworkError, 600),
    "trickle": ({"delay": 0.2}, minapp_async.RequestTimeoutError, 601),
}


class Tries:
    """An on_request hook: counts the tries that were sent."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, info: CallInfo) -> None:
        self.count += 1


async def settle(engine: Engine) -> None:
    """Wait until the engine has finished every request and job (a slow fault's included)."""
    await wait_until(lambda: engine.stats().requests_in_flight == 0)
    await engine.drain(timeout=10)


@pytest.fixture(name="session")
async def _session(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> AsyncIterator[minapp_async.Session]:
    """A logged-in Session with fast retries."""
    async with minapp_async.Session(
        engine.client_id, base_url=engine.url, credentials=credentials, retry=FAST
    ) as s:
        await s.auth.login(username=credentials.username or "", password=credentials.password)
        yield s


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("kind", sorted(FAULTS))
async def test_every_fault_runs_the_function_at_most_once(
    engine: Engine, session: minapp_async.Session, kind: str, when: str, sync: bool
) -> None:
    """Each fault kind, before or after the run, sync or async: one try, at most one run."""
    arguments, error, code = FAULTS[kind]
    engine.faults.add(kind.partition("-")[0], when=when, **arguments)  # type: ignore[arg-type]
    tries = Tries()

    with anyio.fail_after(10), pytest.raises(error) as info:
        await session.with_options(on_request=tries).invoke("echo", {"k": kind}, sync, timeout=0.5)
    await settle(engine)

    assert (info.value.code, info.value.attempts, tries.count) == (code, 1, 1)
    assert info.value.may_have_executed  # the body went out: the SDK cannot know it did not run
    ran = engine.executions("echo")
    if kind == "slow" and when == "before":
        assert ran <= 1  # the engine may or may not go on once the caller has left
    else:
        # trickle sends the real reply, slowly: the function has run either way.
        assert ran == (1 if when == "after" or kind == "trickle" else 0)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("status", [429, 503])
async def test_rate_limits_and_unavailable_are_retried_to_success(
    engine: Engine, session: minapp_async.Session, status: int, sync: bool
) -> None:
    """429 and 503 with Retry-After say the job was refused: retried, then it runs once."""
    engine.faults.add("status", status=status, retry_after=0.05, times=2)
    tries = Tries()

    result = await session.with_options(on_request=tries).invoke("echo", "x", sync)
    await settle(engine)

    assert (result.code, tries.count, engine.executions("echo")) == (0, 3, 1)


async def test_a_long_retry_after_ends_the_retries(
    engine: Engine, session: minapp_async.Session
) -> None:
    """A 503 asking for a pause beyond retry_after_max is raised at once, with the hint."""
    engine.faults.add("status", status=503, retry_after=100)

    with pytest.raises(minapp_async.ServerError) as info:
        await session.invoke("echo", "x")

    assert (info.value.retry_after, info.value.attempts) == (100.0, 1)
    assert not info.value.may_have_executed
    assert 0 == engine.executions("echo")


async def test_retries_stop_at_the_attempts_without_running(
    engine: Engine, session: minapp_async.Session
) -> None:
    """Three 429s in a row: three tries, a RateLimitError that says nothing ran."""
    engine.faults.add("status", status=429, retry_after=0.01, times=3)

    with pytest.raises(minapp_async.RateLimitError) as info:
        await session.invoke("echo", "x")

    assert (info.value.attempts, info.value.may_have_executed) == (3, False)
    assert 0 == engine.executions("echo")


GATE = (
    "import os, time\n\n"
    "def main(event):\n"
    "    deadline = time.monotonic() + 30\n"
    "    while not os.path.exists(event['data']):\n"
    "        if time.monotonic() > deadline:\n"
    "            raise TimeoutError('never released')\n"
    "        time.sleep(0.01)\n"
    "    return 'released'\n"
)


async def test_schedule_failed_is_retried_and_runs_once(
    credentials: minapp_async.UserCredentials,
) -> None:
    """A job the engine could not schedule never ran: it is retried and then runs once."""
    release = Path()  # in the functions' folder, once there is one (a function's /tmp is its own)

    def free_the_slot(info: CallInfo) -> None:
        # After the first refusal, let the job holding the only slot finish.
        if info.error is not None:
            assert isinstance(info.error, minapp_async.BadRequestError)
            assert info.error.job_status == "schedule_failed"
            release.touch()

    functions = {**FUNCTIONS, "gate.py": GATE}
    async with running_engine(functions, concurrency=1, schedule_wait=0.2) as engine:
        release = engine.config.functions_dir / "release"
        engine.create_user(username=credentials.username, password=credentials.password)
        async with minapp_async.Session(
            engine.client_id,
            base_url=engine.url,
            credentials=credentials,
            retry=Retry(attempts=5, backoff_initial=0.3, backoff_max=0.3),
            on_response=free_the_slot,
        ) as s:
            await s.invoke("gate", str(release), False)  # holds the only slot
            await wait_until(lambda: engine.stats().functions["gate"].in_flight == 1)
            result = await s.invoke("echo", "after the gate")
        statuses = [job.status for job in engine.jobs("echo")]

    assert "after the gate" == result.data
    assert statuses[0] == "schedule_failed" and statuses[-1] == "fulfilled"
    assert 1 == engine.executions("echo")


async def test_schedule_failed_gives_up_unexecuted(
    credentials: minapp_async.UserCredentials,
) -> None:
    """With the slot never freed, the retries end in a 400 that says nothing ran."""
    functions = {**FUNCTIONS, "gate.py": GATE}
    async with running_engine(functions, concurrency=1, schedule_wait=0.05) as engine:
        release = engine.config.functions_dir / "release"  # (a function's /tmp is its own)
        engine.create_user(username=credentials.username, password=credentials.password)
        async with minapp_async.Session(
            engine.client_id, base_url=engine.url, credentials=credentials, retry=FAST
        ) as s:
            await s.invoke("gate", str(release), False)
            await wait_until(lambda: engine.stats().functions["gate"].in_flight == 1)
            with pytest.raises(minapp_async.BadRequestError) as info:
                await s.invoke("echo", "never")
            release.touch()
            await engine.drain(timeout=10)

    assert (info.value.job_status, info.value.attempts) == ("schedule_failed", 3)
    assert not info.value.may_have_executed
    assert 0 == engine.executions("echo")


@pytest.mark.parametrize("kind", ["drop", "reset_mid_body"])
async def test_opting_in_re_sends_sync_calls_only(
    engine: Engine, credentials: minapp_async.UserCredentials, kind: str
) -> None:
    """retry_executed re-sends a sync call whose reply was lost (so it runs twice), never an
    async one: the default is what keeps runs at one."""
    opt_in = Retry(attempts=2, backoff_initial=0.01, retry_executed=True)
    async with minapp_async.Session(
        engine.client_id, base_url=engine.url, credentials=credentials, retry=opt_in
    ) as s:
        engine.faults.add(kind, when="after")  # type: ignore[arg-type]
        result = await s.invoke("echo", "sync")
        await settle(engine)
        sync_runs = engine.executions("echo")
        engine.faults.add(kind, when="after")  # type: ignore[arg-type]
        with pytest.raises(minapp_async.NetworkError) as info:
            await s.invoke("echo", "async", False)
        await settle(engine)

    assert ("sync", 2) == (result.data, sync_runs)
    assert (info.value.attempts, info.value.may_have_executed) == (1, True)
    assert 3 == engine.executions("echo")
