"""Fan-out against the real local engine: Node and Python functions, the engine's own gauges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import minapp_async
from minapp_async.engine import Engine
from minapp_async.testing import HELLO_WORLD_JS, running_engine

pytestmark = pytest.mark.anyio

FUNCTIONS = {
    "helloWorld.js": HELLO_WORLD_JS,
    "slow.py": "import time\n\ndef main(event):\n    time.sleep(0.05)\n    return event['data']\n",
    "picky.js": (
        "exports.main = async function (event) {\n"
        "  if (event.data % 3 === 0) throw new RangeError('multiple of 3')\n"
        "  return event.data * 2\n"
        "}\n"
    ),
}


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """An engine running up to 10 jobs at once, with user allen."""
    async with running_engine(FUNCTIONS, concurrency=10) as engine:
        engine.create_user(username="allen", password="pw")
        yield engine


@pytest.fixture(name="session")
async def _session(engine: Engine) -> AsyncIterator[minapp_async.Session]:
    """A Session logged in as allen."""
    creds = minapp_async.UserCredentials(username="allen", password="pw")
    async with minapp_async.Session(engine.client_id, base_url=engine.url, credentials=creds) as s:
        yield s


async def test_engine_never_runs_more_than_the_concurrency(
    session: minapp_async.Session, engine: Engine
) -> None:
    """The engine's own counters: at most 4 runs and 4 job requests at once, all 24 done."""
    async with session.map("slow", range(24), concurrency=4) as outcomes:
        got = [o.result.data async for o in outcomes if o.result]

    stats = engine.stats()
    assert list(range(24)) == got
    assert 24 == stats.functions["slow"].executions
    assert 1 <= stats.functions["slow"].peak_in_flight <= 4
    assert stats.peak_concurrent_requests <= 4
    assert 0 == session.pool_stats.in_use


async def test_hello_world_node_in_order(session: minapp_async.Session) -> None:
    """The seed's helloWorld for 30 names, results in input order."""
    names = [f"user{i}" for i in range(30)]
    batch = await session.invoke_many("helloWorld", ({"name": n} for n in names), concurrency=8)

    assert [f"hello {n}" for n in names] == [o.result.data for o in batch.outcomes if o.result]
    assert (30, 30) == (batch.summary.total, batch.summary.ok)


async def test_function_failures_are_counted_not_raised(session: minapp_async.Session) -> None:
    """A Node function throwing for some items: those are failed results, the rest data."""
    batch = await session.invoke_many("picky", range(1, 10), concurrency=3)

    assert (9, 6, 3, {}) == (
        batch.summary.total,
        batch.summary.ok,
        batch.summary.failed,
        batch.summary.errors,
    )
    failed = [o for o in batch.outcomes if not o.ok]
    assert [3, 6, 9] == [o.params for o in failed]
    assert all(o.result and "multiple of 3" in str(o.result.error) for o in failed)
    assert [2, 4, 8, 10, 14, 16] == [o.result.data for o in batch.outcomes if o.ok and o.result]


async def test_async_mode_fan_out(session: minapp_async.Session, engine: Engine) -> None:
    """sync=False: every job is acknowledged, then runs on the engine."""
    batch = await session.invoke_many("slow", range(12), sync=False, concurrency=6)
    await engine.drain(timeout=30)

    assert 12 == batch.summary.ok
    assert all({"status": "ok"} == o.result.data for o in batch.outcomes if o.result)
    assert 12 == engine.stats().functions["slow"].executions
