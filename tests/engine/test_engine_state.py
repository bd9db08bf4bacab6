"""The engine's state and bounds, in process: what a restart keeps, the bounded async queue,
the bounded warm-worker pool, and big results read in linear time."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import anyio
import pytest
from engine_api import FUNCTIONS, Api

from minapp_async.engine import Engine
from minapp_async.engine.runtime import Runtime
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

ECHO_JOBS = "/oserve/v1.3/cloud-function/echo/job/"


async def until_queued(engine: Engine, count: int) -> None:
    with anyio.fail_after(20):
        # The queue lives in the server, with no event to await from here: poll it.
        while engine.stats().queued_jobs != count:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_users_tokens_and_jobs_survive_a_restart(tmp_path: Path) -> None:
    """A user, their session token, an Open API token pair and finished job records are
    all there after the engine is stopped and started again on the same state file."""
    state = tmp_path / "state" / "engine.sqlite3"
    async with aiohttp.ClientSession() as http:
        async with running_engine(FUNCTIONS, state=state) as engine:
            api = Api(engine, http)
            token = await api.login()
            pair = await api.token_pair()
            reply = await api.invoke(token, "echo", {"before": True})
            assert reply.status == 200
        async with running_engine(FUNCTIONS, state=state) as engine:
            api = Api(engine, http)
            again = await api.invoke(token, "echo", {"after": True})
            assert again.status == 200, again.body
            listing = await api.oserve("GET", ECHO_JOBS, "not-a-token")
            assert listing.status == 401
            listing = await api.oserve("GET", ECHO_JOBS, pair["access_token"])
            assert listing.status == 200, listing.body
            assert listing.body["meta"]["total_count"] == 2
            jobs = await engine.jobs("echo")
            assert [j.result["data"]["data"] for j in jobs if j.result] == [
                {"before": True},
                {"after": True},
            ]
    assert state.exists()


async def test_a_memory_engine_forgets_everything(tmp_path: Path) -> None:
    """The default state is ':memory:': nothing is written next to the functions."""
    async with aiohttp.ClientSession() as http:
        async with running_engine(FUNCTIONS) as engine:
            assert engine.config.state == ":memory:"
            token = await Api(engine, http).login()
        async with running_engine(FUNCTIONS) as engine:
            reply = await Api(engine, http).invoke(token, "echo", {})
            assert reply.status == 401


async def test_a_full_queue_answers_503_with_retry_after_and_keeps_serving(
    tmp_path: Path,
) -> None:
    """Past max_queued_jobs an async invoke gets 503, Retry-After and error_msg; the
    engine keeps answering, and accepts again once the queue drains."""
    release = tmp_path / "release"
    async with (
        running_engine(FUNCTIONS, concurrency=1, max_queued_jobs=2) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        assert (await api.invoke(token, "gate", {"release": str(release)}, sync=False)).status
        await until_queued(engine, 0)  # running, so no longer queued
        for i in range(2):
            reply = await api.invoke(token, "echo", {"i": i}, sync=False)
            assert reply.body == {"status": "ok"}
        assert engine.stats().queued_jobs == 2
        refused = await api.invoke(token, "echo", {"i": 2}, sync=False)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert "queue is full" in refused.error_msg
        # Still serving: logins and the job list answer.
        assert await api.login("second")
        assert len(await engine.jobs("echo")) == 2
        release.touch()
        await engine.drain(timeout=30)
        assert engine.stats().queued_jobs == 0
        assert (await api.invoke(token, "echo", {"i": 3}, sync=False)).status == 200
        await engine.drain(timeout=30)
        statuses = [j.status for j in await engine.jobs("echo")]
        assert statuses == ["fulfilled"] * 3


async def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    """A job whose params would take the queue past max_queued_bytes is refused; a small
    one still fits."""
    release = tmp_path / "release"
    async with (
        running_engine(FUNCTIONS, concurrency=1, max_queued_bytes=64 * 1024) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        await api.invoke(token, "gate", {"release": str(release)}, sync=False)
        await until_queued(engine, 0)
        assert (await api.invoke(token, "echo", {"s": "x" * 40_000}, sync=False)).status == 200
        refused = await api.invoke(token, "echo", {"s": "y" * 40_000}, sync=False)
        assert refused.status == 503
        assert "Retry-After" in refused.headers
        assert "bytes" in refused.error_msg
        assert (await api.invoke(token, "echo", {"s": "small"}, sync=False)).status == 200
        assert engine.stats().queued_bytes < 64 * 1024
        release.touch()
        await engine.drain(timeout=30)


async def test_the_sdk_retries_a_full_queue_after_the_hint(tmp_path: Path) -> None:
    """The SDK honours the 503 + Retry-After: its async invoke lands once a slot frees."""
    from minapp_async import Session

    release = tmp_path / "release"
    async with (
        running_engine(FUNCTIONS, concurrency=1, max_queued_jobs=1) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        engine.create_user(username="sdk", password="pw")
        token = await api.login()
        await api.invoke(token, "gate", {"release": str(release)}, sync=False)
        await until_queued(engine, 0)
        assert (await api.invoke(token, "echo", {"i": 0}, sync=False)).status == 200
        async with Session(engine.client_id, base_url=engine.url) as session:
            await session.auth.login(username="sdk", password="pw")
            served = engine.stats().requests_served

            async def invoke() -> None:
                await session.invoke("echo", {"i": 1}, False)

            async with anyio.create_task_group() as tg:
                tg.start_soon(invoke)
                # The first try is refused while the queue is full; then let the gate go.
                with anyio.fail_after(20):
                    while engine.stats().requests_served == served:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                assert engine.stats().queued_jobs == 1
                release.touch()
        await engine.drain(timeout=30)
        assert len(await engine.jobs("echo")) == 2


async def test_idle_workers_are_bounded_across_functions(tmp_path: Path) -> None:
    """Calling many distinct functions keeps at most max_idle_workers warm; the least
    recently used go first, the most recent stays warm."""
    functions = {f"f{i}.py": f"def main(event):\n    return {i}\n" for i in range(7)}
    async with (
        running_engine(functions, concurrency=2, max_idle_workers=3) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        for i in range(7):
            reply = await api.invoke(token, f"f{i}", {})
            assert reply.body["data"] == i
            assert engine.stats().idle_workers == min(i + 1, 3)
        assert engine.stats().idle_workers == 3


async def test_idle_worker_default_bound_follows_concurrency(tmp_path: Path) -> None:
    async with running_engine(FUNCTIONS, concurrency=3) as engine:
        assert engine.config.idle_workers_bound == 6


# ---- big results ----

BIG = 31 * 1024 * 1024


@pytest.mark.parametrize("filename", ["big.py", "big.js"])
async def test_a_31_mib_result_is_read_whole(tmp_path: Path, filename: str) -> None:
    """A result just under the 32 MiB cap arrives intact (read in linear time: see
    benchmarks/README.md for the figure)."""
    if filename.endswith(".py"):
        source = "def main(event):\n    return 'a' * event['data']['n']\n"
    else:
        source = "exports.main = async (event) => 'a'.repeat(event.data.n)\n"
    (tmp_path / filename).write_text(source)
    runtime = Runtime(tmp_path, memory_limit_mb=512)
    try:
        outcome = await runtime.run(
            "big", {"eventType": "sdk"}, time_limit=60, data_json=json.dumps({"n": BIG})
        )
    finally:
        await runtime.aclose()
    assert outcome.status == "fulfilled", outcome.error_msg
    assert outcome.result is not None
    data = outcome.result["data"]
    assert len(data) == BIG and data == "a" * BIG


async def test_finished_records_are_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    """The engine keeps at most max_finished_jobs finished records, and no more bytes of
    params, results and logs than max_finished_bytes; the newest stay."""
    async with (
        running_engine(FUNCTIONS, max_finished_jobs=30, max_finished_bytes=200_000) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        for i in range(40):
            assert (await api.invoke(token, "echo", {"i": i})).status == 200
        kept = await engine.jobs("echo")
        assert [j.result["data"]["data"]["i"] for j in kept if j.result] == list(range(10, 40))
        # Each of these records holds ~2 x 20 kB (params, and the echoed event as result).
        for i in range(10):
            reply = await api.invoke(token, "echo", {"i": 100 + i, "pad": "x" * 20_000})
            assert reply.status == 200
        kept = await engine.jobs("echo")
        assert 3 <= len(kept) < 30
        assert kept[-1].result is not None and kept[-1].result["data"]["data"]["i"] == 109
