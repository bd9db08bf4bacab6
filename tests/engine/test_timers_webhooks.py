"""Timers and incoming webhooks from the triggers file (minapp.triggers.json): fired now, fired
on schedule by the engine's own tick (no real minute waited for), webhooks over HTTP, and the
errors a bad file gives, naming the file and the line."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from minapp_async.engine import TRIGGER_FILE, Engine, EngineConfig, TriggerFileError
from minapp_async.engine._jobs import JobBoard
from minapp_async.engine._schedule import TriggerRunner
from minapp_async.engine._store import Store
from minapp_async.engine._trigger_file import load
from minapp_async.engine.runtime import Runtime
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
JOB_TIMEOUT = 30.0
# Records its whole event, so a test can read what the trigger delivered.
RECORDER_JS = """\
exports.main = async (event) => {
  console.log('fired by', event.eventType)
  return event
}
"""
RECORDER_PY = "def main(event):\n    return event\n"
# Never due in real time during a test: 04:00 on January 1st.
YEARLY = "0 4 1 1 *"
TRIGGERS = {
    "timers": [
        {"name": "nightly", "function": "recorder", "cron": YEARLY},
        {
            "name": "cancelOrders",
            "function": "recorderPy",
            "cron": "*/10 * 1 1 *",
            "params": {"older_than_minutes": 30},
        },
        {"name": "orphan", "function": "missing", "cron": YEARLY},
    ],
    "incoming_webhooks": [
        {"key": "7YnQmaClzc", "function": "recorder"},
        {"key": "orphanKey", "function": "missing"},
    ],
}


def functions(triggers: Any) -> dict[str, str]:
    return {
        "recorder.js": RECORDER_JS,
        "recorderPy.py": RECORDER_PY,
        TRIGGER_FILE: json.dumps(triggers, indent=2),
    }


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    async with running_engine(functions(TRIGGERS)) as engine:
        yield engine


async def finished_event(engine: Engine, job_id: str) -> dict[str, Any]:
    job = await engine.wait_job(job_id, timeout=JOB_TIMEOUT)
    assert job.status == "fulfilled", job
    assert job.result is not None
    event: dict[str, Any] = job.result["data"]
    return event


async def test_fire_a_timer_now(engine: Engine) -> None:
    job = await engine.fire_timer("cancelOrders")
    assert (job.source, job.service_type, job.function_name) == ("timer", "batch", "recorderPy")
    event = await finished_event(engine, job.id)
    assert event["eventType"] == "timer"
    assert event["data"] == {"older_than_minutes": 30}
    assert event["jobId"] == job.id
    assert "request" not in event

    job = await engine.fire_timer("nightly")  # no params: the platform's empty data
    event = await finished_event(engine, job.id)
    assert event["data"] == {}
    assert "fired by timer" in (await engine.job(job.id)).log


async def test_fire_now_refuses_unknown_timers_and_missing_functions(engine: Engine) -> None:
    with pytest.raises(LookupError, match=r"no timer named 'nope' \(timers: cancelOrders, "):
        await engine.fire_timer("nope")
    with pytest.raises(LookupError, match="cloud function 'missing' not found"):
        await engine.fire_timer("orphan")
    assert await engine.jobs() == []


async def test_the_schedule_fires_due_timers_once_per_tick(engine: Engine) -> None:
    """The scheduler's tick, given a clock reading: what is due fires once, then waits for
    its next time."""
    timers = {t.name: t for t in engine.timers()}
    assert timers["nightly"].cron == YEARLY
    nightly = timers["nightly"].next_fire
    assert (nightly.month, nightly.day, nightly.hour, nightly.minute) == (1, 1, 4, 0)
    assert nightly.utcoffset() == dt.timedelta(hours=8)

    cancel = timers["cancelOrders"].next_fire
    assert (cancel.month, cancel.day, cancel.hour, cancel.minute) == (1, 1, 0, 0)
    assert cancel.year == nightly.year
    assert await engine.tick_timers(cancel - dt.timedelta(seconds=1)) == []
    # Just before 04:00: the 24 runs cancelOrders missed since midnight make one job.
    (late,) = await engine.tick_timers(nightly - dt.timedelta(seconds=1))
    assert late.function_name == "recorderPy"
    fired = [late, *await engine.tick_timers(nightly)]
    assert sorted(j.function_name for j in fired) == ["recorder", "recorderPy", "recorderPy"]
    assert all(j.source == "timer" for j in fired)
    for job in fired:
        await finished_event(engine, job.id)
    assert await engine.tick_timers(nightly) == []  # not twice for one time

    after = {t.name: t.next_fire for t in engine.timers()}
    assert after["nightly"] == nightly.replace(year=nightly.year + 1)
    assert after["cancelOrders"] == nightly + dt.timedelta(minutes=10)
    with pytest.raises(ValueError, match="timezone-aware"):
        await engine.tick_timers(dt.datetime(2030, 1, 1))


async def test_an_incoming_webhook_runs_its_function(engine: Engine) -> None:
    url = f"{engine.url}/oserve/v1/incoming-webhook/7YnQmaClzc/"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            json={"order": 42},
            headers={"X-Hydrogen-Customize-Header": "yes", "Authorization": "Bearer s3cret"},
        ) as response,
    ):
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    (job,) = await engine.jobs("recorder")
    assert job.source == "incoming_webhook"
    event = await finished_event(engine, job.id)
    assert event["eventType"] == "incoming_webhook"
    data = event["data"]
    assert data["payload"] == {"order": 42}
    assert data["meta"]["request_method"] == "POST"
    assert data["meta"]["remote_address"] == "127.0.0.1"
    headers = data["meta"]["headers"]
    assert headers["X_HYDROGEN_CUSTOMIZE_HEADER"] == "yes"
    assert headers["CONTENT_TYPE"] == "application/json"
    assert "AUTHORIZATION" not in headers
    assert "s3cret" not in json.dumps(event)


@pytest.mark.parametrize(
    ("key", "body", "status", "message"),
    [
        ("unknownKey", {}, 404, "incoming webhook 'unknownKey' not found"),
        ("orphanKey", {}, 404, "cloud function 'missing' not found"),
        ("7YnQmaClzc", "not json", 400, "not valid JSON"),
    ],
)
async def test_webhook_errors(
    engine: Engine, key: str, body: Any, status: int, message: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{engine.url}/oserve/v1/incoming-webhook/{key}/",
            data=body if isinstance(body, str) else json.dumps(body),
        ) as response,
    ):
        assert response.status == status
        reply = await response.json()
    assert message in reply["error_msg"]
    assert await engine.jobs() == []


async def test_no_triggers_file_means_no_timers_and_no_webhooks() -> None:
    async with running_engine({"recorder.js": RECORDER_JS}) as engine:
        assert engine.timers() == []
        assert await engine.tick_timers(dt.datetime(2030, 1, 1, tzinfo=SHANGHAI)) == []
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{engine.url}/oserve/v1/incoming-webhook/any/") as response,
        ):
            assert response.status == 404


BAD_FILES = [
    ('{\n  "timers": [\n    {"name": "a", "function": "f", "cron": "61 * * * *"}\n  ]\n}', 3,
     "timer 'a': minute 61 is out of range (0-59)"),
    ('{\n  "timers": [\n    {"name": "a", "function": "f"}\n  ]\n}', 3, "missing cron"),
    ('{\n  "timers": [\n\n    {"name": "a", "function": "f", "cron": "* * *"}]}', 4,
     "has 3 fields"),
    ('{\n  "timers": [\n    {"name": "a", "function": "../f", "cron": "* * * * *"}]}', 3,
     "function must be"),
    (('{"timers": [\n {"name": "a", "function": "f", "cron": "* * * * *"},\n'
     ' {"name": "a", "function": "g", "cron": "* * * * *"}]}'), 3, "a second timer named 'a'"),
    ('{"timers": [], "tables": []}', 1, "unknown section 'tables'"),
    ('{\n"incoming_webhooks": [\n {"key": "k", "function": "f", "extra": 1}]}', 3,
     "unknown field 'extra'"),
    ('{\n  "timers": [\n    {"name": "a",}\n  ]\n}', 3, "not valid JSON"),
    ("[]", 1, "the file must hold one JSON object"),
    # table triggers
    ('{"table_triggers": [\n {"name": "t", "table": "note", "function": "f"}]}', 2,
     "missing events"),
    (('{"table_triggers": [\n\n {"name": "t", "table": "note", "events": ["insert"], '
     '"function": "f"}]}'), 3, "events must be a non-empty list"),
    (('{"table_triggers": [\n {"name": "t", "table": "no such", "events": ["create"], '
     '"function": "f"}]}'), 2, "bad table name"),
    (('{"table_triggers": [\n {"name": "t", "table": "note", "events": ["create"], '
     '"function": "f", "where": {"n": {"$near": 1}}}]}'), 2, "where: unknown query operator"),
    (('{"table_triggers": [\n {"name": "t", "table": "note", "events": ["create"], '
     '"function": "f", "format": "v3"}]}'), 2, "format must be 'v1' or 'v2'"),
    (('{"table_triggers": [\n {"name": "t", "table": "note", "events": ["create"], '
     '"function": "f"},\n {"name": "t", "table": "x", "events": ["delete"], "function": "g"}]}'),
     3, "a second table trigger named 't'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "message"), BAD_FILES)
async def test_a_bad_triggers_file_stops_the_engine(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    (tmp_path / TRIGGER_FILE).write_text(text)
    engine = Engine(functions_dir=tmp_path)
    with pytest.raises(TriggerFileError) as caught:
        await engine.start()
    assert str(caught.value).startswith(f"{tmp_path / TRIGGER_FILE}:{line}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{\n  "timers": [\n    {"name": "a", "function": "f", "cron": "0 0 30 2 *"}\n  ]\n}',
         "never fires"),
        (('{\n  "table_triggers": [\n    {"name": "t", "table": "note", "events": "create",'
         ' "function": "f"}\n  ]\n}'), "events must be"),
    ],
)  # fmt: skip
async def test_serve_stops_on_a_bad_entry_naming_file_and_line(
    tmp_path: Path, text: str, pattern: str
) -> None:
    (tmp_path / TRIGGER_FILE).write_text(text)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "minapp_async", "serve", "--functions", str(tmp_path),
             "--port", "0"],
            check=False,
        )  # fmt: skip
    assert done.returncode == 2
    stderr = done.stderr.decode()
    assert re.search(re.escape(f"{tmp_path / TRIGGER_FILE}:3: ") + ".*" + pattern, stderr)
    assert "Traceback" not in stderr


async def test_the_scheduler_loop_fires_on_its_clock(tmp_path: Path) -> None:
    """The loop the engine runs, on a scripted clock: 0.1 s before midnight nothing is due and it
    sleeps until midnight; its next readings are past midnight and cancelOrders fires."""
    for name, source in functions(TRIGGERS).items():
        (tmp_path / name).write_text(source)
    before = dt.datetime(2031, 12, 31, 23, 59, 59, 900000, tzinfo=SHANGHAI)
    after = dt.datetime(2032, 1, 1, 0, 0, 0, 100000, tzinfo=SHANGHAI)
    runtime = Runtime(tmp_path)
    store = await Store.open(":memory:")
    board = JobBoard(
        runtime,
        store,
        concurrency=2,
        schedule_wait=1.0,
        sync_time_limit=5.0,
        async_time_limit=30.0,
    )
    runner = TriggerRunner(
        load(tmp_path), board, runtime.locate, EngineConfig(functions_dir=tmp_path), now=before
    )
    # The loop reads the clock to tick, then to size its sleep: reads 1-2 are before midnight,
    # read 3 is the tick after the sleep; by read 4 that tick has fired. Each read notes when
    # cancelOrders is due next: still midnight while nothing has fired.
    reads: list[dt.datetime] = []
    ticked = anyio.Event()
    midnight = after.replace(second=0, microsecond=0)

    def clock() -> dt.datetime:
        reads.append(runner.statuses()[1].next_fire)
        if len(reads) == 4:
            ticked.set()
        return before if len(reads) <= 2 else after

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(board.serve)
            tg.start_soon(runner.run, clock)
            with anyio.fail_after(JOB_TIMEOUT):
                await ticked.wait()
            assert reads[:3] == [midnight] * 3  # nothing fired before midnight
            (job,) = await board.jobs()
            assert (job.function_name, job.source) == ("recorderPy", "timer")
            done = await board.wait(job.id, JOB_TIMEOUT)
            tg.cancel_scope.cancel()
        assert done.result is not None
        assert done.result["data"]["data"] == {"older_than_minutes": 30}
        assert runner.statuses()[1].next_fire == after.replace(minute=10, microsecond=0)
    finally:
        board.close()
        await runtime.aclose()
        await store.aclose()
