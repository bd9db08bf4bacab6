"""Jobs: concurrency slots, queueing, time limits, counters, and shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import anyio
import pytest
from engine_api import FUNCTIONS, Api, Reply
from support import wait_until

from minapp_async.engine import Engine, EngineConfig
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio


def in_flight(engine: Engine, name: str) -> int:
    stats = engine.stats().functions.get(name)
    return 0 if stats is None else stats.in_flight


async def test_sync_job_fails_to_schedule_when_all_slots_are_busy() -> None:
    """With every slot held, a sync call waits schedule_wait, then gets 400 schedule_failed."""
    async with (
        running_engine(FUNCTIONS, concurrency=2, schedule_wait=0.2) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        release = engine.config.functions_dir / "release"  # (a function has its own /tmp)
        token = await api.login()
        for _ in range(2):
            reply = await api.invoke(token, "gate", {"release": str(release)}, sync=False)
            assert reply.body == {"status": "ok"}
        await wait_until(lambda: in_flight(engine, "gate") == 2, within=20)
        started = time.monotonic()
        refused = await api.invoke(token, "echo", {})
        assert time.monotonic() - started < 5
        assert refused.status == 400
        assert "could not be scheduled" in refused.error_msg
        assert refused.body["job_status"] == "schedule_failed"
        (job,) = await engine.jobs("echo")
        assert job.status == "schedule_failed"
        assert job.started_at is None
        assert engine.executions("echo") == 0
        release.touch()
        await engine.drain(timeout=30)
        assert [j.status for j in (await engine.jobs("gate"))] == ["fulfilled", "fulfilled"]
        assert (await api.invoke(token, "echo", {})).status == 200


async def test_async_jobs_queue_and_run_when_a_slot_frees() -> None:
    """Async jobs beyond the limit wait in the queue, then all run, one slot at a time."""
    async with (
        running_engine(FUNCTIONS, concurrency=1) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        release = engine.config.functions_dir / "release"  # (a function has its own /tmp)
        token = await api.login()
        await api.invoke(token, "gate", {"release": str(release)}, sync=False)
        await wait_until(lambda: in_flight(engine, "gate") == 1, within=20)
        for i in range(3):
            assert (await api.invoke(token, "echo", {"i": i}, sync=False)).status == 200
        assert [j.status for j in (await engine.jobs("echo"))] == ["waiting"] * 3
        release.touch()
        await engine.drain(timeout=30)
        (gate,) = await engine.jobs("gate")
        echoes = await engine.jobs("echo")
        assert [j.status for j in echoes] == ["fulfilled"] * 3
        assert gate.finished_at is not None
        assert all(j.started_at is not None and j.started_at >= gate.finished_at for j in echoes)
        assert engine.stats().functions["echo"].peak_in_flight == 1


async def test_async_jobs_without_a_slot_for_their_time_limit_fail_to_schedule() -> None:
    """Queued async jobs that get no slot within async_time_limit end schedule_failed, never
    started, in queue order; once the slot is free, new async jobs run."""
    async with (
        running_engine(FUNCTIONS, concurrency=1, async_time_limit=0.5) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        release = engine.config.functions_dir / "release"  # (a function has its own /tmp)
        token = await api.login()
        replies: list[Reply] = []

        async def hold_the_slot() -> None:  # a sync call: the async limit does not cut it
            replies.append(await api.invoke(token, "gate", {"release": str(release)}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_the_slot)
            await wait_until(lambda: in_flight(engine, "gate") == 1, within=20)
            for i in range(3):
                assert (await api.invoke(token, "echo", {"i": i}, sync=False)).status == 200
            with anyio.fail_after(20):
                while [j.status for j in await engine.jobs("echo")] != ["schedule_failed"] * 3:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            release.touch()
        assert replies[0].status == 200
        for job in await engine.jobs("echo"):
            assert job.started_at is None
            assert "could not be scheduled" in (job.error_msg or "")
        assert engine.executions("echo") == 0
        assert (await api.invoke(token, "echo", {"i": 3}, sync=False)).status == 200
        await engine.drain(timeout=30)
        assert [j.status for j in await engine.jobs("echo")][-1] == "fulfilled"


async def test_queued_async_jobs_hold_no_task_each() -> None:
    """A long async queue is data, not one waiting task per job: the event loop's task
    count stays near the concurrency while hundreds of jobs wait, and all of them run."""
    async with (
        running_engine(FUNCTIONS, concurrency=2) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        release = engine.config.functions_dir / "release"  # (a function has its own /tmp)
        token = await api.login()
        for _ in range(2):
            await api.invoke(token, "gate", {"release": str(release)}, sync=False)
        await wait_until(lambda: in_flight(engine, "gate") == 2, within=20)
        before = len(asyncio.all_tasks())
        for i in range(300):
            assert (await api.invoke(token, "echo", {"i": i}, sync=False)).status == 200
        assert engine.stats().queued_jobs == 300
        assert len(asyncio.all_tasks()) < before + 20
        release.touch()
        await engine.drain(timeout=60)
        assert [j.status for j in await engine.jobs("echo")] == ["fulfilled"] * 300


async def test_a_freed_slot_goes_to_a_waiting_sync_call_first() -> None:
    """A sync call waiting for a slot is served before async jobs queued earlier."""
    async with (
        running_engine(FUNCTIONS, concurrency=1, schedule_wait=20) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        release = engine.config.functions_dir / "release"  # (a function has its own /tmp)
        token = await api.login()
        await api.invoke(token, "gate", {"release": str(release)}, sync=False)
        await wait_until(lambda: in_flight(engine, "gate") == 1, within=20)
        for i in range(2):
            await api.invoke(token, "echo", {"i": i}, sync=False)
        replies: list[Reply] = []

        async def sync_call() -> None:
            replies.append(await api.invoke(token, "helloWorld", {"name": "first"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(sync_call)
            with anyio.fail_after(20):
                # The job board lives in the server: poll it until the sync call waits.
                while len(await engine.jobs("helloWorld")) != 1:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            release.touch()
        assert replies[0].body["data"] == "hello first"
        await engine.drain(timeout=30)
        (sync_job,) = await engine.jobs("helloWorld")
        assert sync_job.started_at is not None
        assert all(
            j.started_at is not None and j.started_at >= sync_job.started_at
            for j in (await engine.jobs("echo"))
        )


async def test_sync_time_limit_kills_the_job_while_others_succeed() -> None:
    """A sync job over its limit is a 400 naming the limit; a concurrent call still works."""
    async with (
        running_engine(FUNCTIONS, sync_time_limit=0.5) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        results: dict[str, Reply] = {}

        async def call(key: str, name: str, data: dict[str, object]) -> None:
            results[key] = await api.invoke(token, name, data)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "slow", "sleepy", {"seconds": 60})
            tg.start_soon(call, "hello", "helloWorld", {"name": "meanwhile"})
        assert time.monotonic() - started < 5  # killed at the limit, not hung
        assert results["hello"].body == {"code": 0, "data": "hello meanwhile", "error": {}}
        assert results["slow"].status == 400
        assert results["slow"].error_msg == "cloud function 'sleepy' timed out after 500 ms"
        assert results["slow"].body["job_status"] == "deadline_exceeded"
        (job,) = await engine.jobs("sleepy")
        assert job.status == "deadline_exceeded"
        assert job.result is None
        # The function's worker was replaced: it runs again at once.
        quick = await api.invoke(token, "sleepy", {"seconds": 0})
        assert quick.body["data"] == "slept"


async def test_the_backstop_ends_a_sync_job_the_runtime_does_not_end(tmp_path: Path) -> None:
    """The runtime's own limit starts once a worker is up; a worker that never comes up (a
    "node" that never says it is ready) is cut off by the board's backstop, the limit plus
    its grace: the call ends deadline_exceeded, its record is kept and its slot freed."""
    hung_node = tmp_path / "node"
    hung_node.write_text("#!/bin/sh\nexec sleep 60\n")
    hung_node.chmod(0o755)
    functions = {
        "stuck.js": "exports.main = async () => 'never'\n",
        "greet.py": "def main(event, callback):\n    callback(None, 'hi')\n",
    }
    async with (
        running_engine(
            functions, node=str(hung_node), sync_time_limit=0.2, concurrency=1
        ) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        reply = await api.invoke(token, "stuck", {})
        assert reply.status == 400
        assert reply.body["job_status"] == "deadline_exceeded"
        assert reply.error_msg == "cloud function 'stuck' timed out after 200 ms"
        (job,) = await engine.jobs("stuck")
        assert (job.status, job.result) == ("deadline_exceeded", None)
        # Its only slot was given back: the next call runs.
        assert (await api.invoke(token, "greet", {})).body["data"] == "hi"


async def test_async_time_limit_kills_the_job() -> None:
    """An async job over its limit ends deadline_exceeded and is readable afterwards."""
    async with (
        running_engine(FUNCTIONS, async_time_limit=0.5) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.login()
        reply = await api.invoke(token, "sleepy", {"seconds": 60}, sync=False)
        assert reply.body == {"status": "ok"}
        (job,) = await engine.jobs("sleepy")
        assert job.service_type == "batch"
        assert (await api.invoke(token, "helloWorld", {"name": "x"})).status == 200
        finished = await engine.wait_job(job.id, timeout=10)
        assert finished.status == "deadline_exceeded"
        assert finished.error_msg is not None and "timed out" in finished.error_msg


async def test_worker_crash_is_400_and_the_engine_keeps_serving(api: Api) -> None:
    """A worker that dies gives 400 with the runtime's message; the next call works."""
    token = await api.login()
    reply = await api.invoke(token, "crash", {})
    assert reply.status == 400
    (job,) = await api.engine.jobs("crash")
    assert job.status == "execution_failed"
    assert job.error_msg == reply.error_msg
    assert reply.body["job_status"] == "execution_failed"
    assert (await api.invoke(token, "helloWorld", {"name": "after"})).body["data"] == "hello after"


async def test_execution_counter_counts_started_runs_only(api: Api) -> None:
    """executions() counts runs that started, not refused or unknown calls."""
    token = await api.login()
    anonymous = await api.anonymous_token()
    for _ in range(3):
        assert (await api.invoke(token, "helloWorld", {"name": "n"})).status == 200
    assert (await api.invoke(anonymous, "helloWorld", {"name": "n"})).status == 403
    assert (await api.invoke(token, "helloWorld", {"name": "n"}, sync="yes")).status == 400
    assert api.engine.executions("helloWorld") == 3
    assert api.engine.executions("never-called") == 0
    stats = api.engine.stats()
    assert stats.functions["helloWorld"].executions == 3
    assert stats.functions["helloWorld"].in_flight == 0
    assert stats.requests_served >= 7
    assert stats.requests_in_flight == 0


async def test_stats_report_peak_concurrency() -> None:
    """Peak in-flight runs and peak concurrent HTTP requests are measured server-side."""
    async with (
        running_engine(FUNCTIONS, concurrency=4) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        release = engine.config.functions_dir / "release"  # (a function has its own /tmp)
        token = await api.login()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(api.invoke, token, "gate", {"release": str(release)})
            await wait_until(lambda: in_flight(engine, "gate") == 4, within=20)
            assert engine.stats().requests_in_flight == 4
            release.touch()
        stats = engine.stats()
        assert stats.functions["gate"].peak_in_flight == 4
        assert stats.peak_concurrent_requests >= 4


async def test_wait_job_times_out_and_knows_no_unknown_ids(api: Api) -> None:
    """wait_job raises TimeoutError at its deadline and KeyError for unknown ids."""
    release = api.engine.config.functions_dir / "release"  # (a function has its own /tmp)
    token = await api.login()
    await api.invoke(token, "gate", {"release": str(release)}, sync=False)
    (job,) = await api.engine.jobs("gate")
    with pytest.raises(TimeoutError):
        await api.engine.wait_job(job.id, timeout=0.1)
    with pytest.raises(TimeoutError):
        await api.engine.drain(timeout=0.1)
    with pytest.raises(KeyError):
        await api.engine.wait_job("0" * 32, timeout=1)
    release.touch()
    assert (await api.engine.wait_job(job.id, timeout=30)).status == "fulfilled"


async def test_shutdown_keeps_running_and_queued_async_jobs_for_the_next_start(
    tmp_path: Path,
) -> None:
    """aclose() ends quickly; the async job cut off mid-run and the queued one stay in the
    state file, and the next engine on it runs both (the first marked as a rerun)."""
    release = tmp_path / "release"
    functions = tmp_path / "functions"
    functions.mkdir()
    for filename, source in FUNCTIONS.items():
        (functions / filename).write_text(source)
    state = tmp_path / "state.sqlite3"
    engine = Engine(functions_dir=functions, concurrency=1, state=state)
    await engine.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(engine, http)
            token = await api.login()
            await api.invoke(token, "gate", {"release": str(release)}, sync=False)
            await wait_until(lambda: in_flight(engine, "gate") == 1, within=20)
            await api.invoke(token, "echo", {"i": 1}, sync=False)
    finally:
        started = time.monotonic()
        await engine.aclose()
        assert time.monotonic() - started < 10
    await engine.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await engine.start()
    release.touch()
    async with Engine(functions_dir=functions, concurrency=1, state=state) as again:
        await again.drain(timeout=30)
        (running,) = await again.jobs("gate")
        (queued,) = await again.jobs("echo")
    assert (running.status, running.rerun, running.attempts) == ("fulfilled", True, 2)
    assert (queued.status, queued.rerun, queued.attempts) == ("fulfilled", False, 1)
    assert queued.result is not None and queued.result["data"]["data"] == {"i": 1}


async def test_shutdown_answers_a_sync_call_in_flight(tmp_path: Path) -> None:
    """A sync caller waiting on a running job gets a 400 saying the engine shut down, and
    its record says so."""
    release = tmp_path / "never-created"
    state = tmp_path / "state.sqlite3"
    replies: list[Reply] = []
    async with aiohttp.ClientSession() as http, running_engine(FUNCTIONS, state=state) as engine:
        api = Api(engine, http)
        token = await api.login()
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                replies.append(await api.invoke(token, "gate", {"release": str(release)}))

            tg.start_soon(call)
            await wait_until(lambda: in_flight(engine, "gate") == 1, within=20)
            await engine.aclose()
    (reply,) = replies
    assert reply.status == 400
    assert "shut down" in reply.error_msg
    async with running_engine(FUNCTIONS, state=state) as again:
        assert (await again.jobs("gate"))[0].status == "execution_failed"


async def test_engine_lifecycle_errors(tmp_path: Path) -> None:
    """url before start, a missing folder and bad config values fail clearly."""
    engine = Engine(functions_dir=tmp_path)
    with pytest.raises(RuntimeError, match="start"):
        _ = engine.url
    with pytest.raises(FileNotFoundError, match="functions_dir"):
        await Engine(functions_dir=tmp_path / "missing").start()
    with pytest.raises(ValueError, match="concurrency"):
        EngineConfig(functions_dir=tmp_path, concurrency=0)
    with pytest.raises(ValueError, match="port"):
        EngineConfig(functions_dir=tmp_path, port=70000)
    with pytest.raises(TypeError, match="async with"):
        with engine:  # type: ignore[attr-defined]
            pass
    config = EngineConfig(functions_dir=tmp_path, concurrency=3)
    assert Engine(config, concurrency=5).config.concurrency == 5
