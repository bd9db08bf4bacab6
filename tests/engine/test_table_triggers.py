"""Table triggers from the triggers file: a function's create / update / delete of a record runs
the configured function as an async job with the documented event.data; conditions; writes with
enableTrigger: false fire none; a trigger writing its own table stops at a bounded depth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from engine_api import Api

from minapp_async.engine import TRIGGER_FILE, Engine
from minapp_async.engine._table_triggers import MAX_TRIGGER_DEPTH
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

JOB_TIMEOUT = 30.0
RECORDER_JS = "exports.main = async (event) => event\n"
# Writes to the `note` table as the event asks: create, update, delete, with or without triggers.
WRITE_JS = """\
exports.main = async (event) => {
  const Note = new BaaS.TableObject('note')
  const { op, id, fields, quiet } = event.data
  const opts = { enableTrigger: !quiet }
  if (op === 'create') return (await Note.create().set(fields).save()).data.id
  if (op === 'createMany') return (await Note.createMany(fields, opts)).data.succeed
  if (op === 'update') {
    const rec = Note.getWithoutData(id)
    rec.set(fields)
    return (await rec.update(opts)).data.id
  }
  if (op === 'delete') { await Note.delete(id, opts); return id }
}
"""
# Increments the counter row it was told to, so each update fires its own trigger again.
BUMP_JS = """\
exports.main = async (event) => {
  const row = new BaaS.TableObject('counter').getWithoutData(event.data.id)
  row.incrementBy('n', 1)
  await row.update()
  return 'bumped'
}
"""
TRIGGERS = {
    "table_triggers": [
        {"name": "all", "table": "note", "events": ["create", "update", "delete"],
         "function": "recorder"},
        {"name": "urgentV2", "table": "note", "events": ["create", "update", "delete"],
         "function": "recorderPy", "where": {"urgent": {"$eq": True}}, "format": "v2"},
        {"name": "loop", "table": "counter", "events": ["update"], "function": "bump"},
    ]
}  # fmt: skip


def functions() -> dict[str, str]:
    return {
        "recorder.js": RECORDER_JS,
        "recorderPy.py": "def main(event):\n    return event\n",
        "write.js": WRITE_JS,
        "bump.js": BUMP_JS,
        TRIGGER_FILE: json.dumps(TRIGGERS, indent=2),
    }


@pytest.fixture(name="api")
async def _api(http: aiohttp.ClientSession) -> AsyncIterator[Api]:
    async with running_engine(functions(), allow_anonymous=True) as engine:
        yield Api(engine, http)


async def write(api: Api, **data: Any) -> Any:
    """Run the `write` function and wait until every job it triggered has finished."""
    reply = await api.invoke(await api.anonymous_token(), "write", data)
    assert reply.status == 200, reply
    assert reply.body["code"] == 0, reply.body
    await api.engine.drain(JOB_TIMEOUT)
    return reply.body["data"]


async def triggered(engine: Engine, function: str) -> list[dict[str, Any]]:
    """The events the trigger jobs of *function* received, oldest first."""
    events = []
    for job in await engine.jobs(function):
        assert job.status == "fulfilled", job
        assert job.result is not None
        events.append(job.result["data"])
    return events


async def test_create_update_delete_deliver_the_documented_event(api: Api) -> None:
    engine = api.engine
    rid = await write(api, op="create", fields={"title": "a", "urgent": False})
    await write(api, op="update", id=rid, fields={"title": "b"})
    await write(api, op="delete", id=rid)

    created, updated, deleted = await triggered(engine, "recorder")
    for event in (created, updated, deleted):
        assert event["eventType"] == "flex_schema"
        assert event["flex_schema_name"] == "note"
        assert "request" not in event
    # V1: the record after the change (the deleted record for a delete), ACLs as documented.
    assert (created["data"]["id"], created["data"]["title"]) == (rid, "a")
    assert updated["data"]["title"] == "b"
    assert deleted["data"]["title"] == "b"
    assert "_id" not in created["data"]
    assert "_read_perm" in created["data"] and "_write_perm" in created["data"]
    assert "read_perm" not in created["data"]
    # The urgent-only V2 trigger saw none of these.
    assert await engine.jobs("recorderPy") == []
    assert [j.source for j in await engine.jobs("recorder")] == ["flex_schema"] * 3


async def test_conditions_and_the_v2_format(api: Api) -> None:
    engine = api.engine
    rid = await write(api, op="create", fields={"title": "fire", "urgent": True})
    await write(api, op="update", id=rid, fields={"title": "still"})
    await write(api, op="update", id=rid, fields={"urgent": False})  # no longer matches
    await write(api, op="delete", id=rid)  # the deleted record does not match either

    created, updated = await triggered(engine, "recorderPy")
    assert created["data"]["subject"] == "FlexSchema"
    assert created["data"]["event"] == "on_create"
    assert created["data"]["schema_name"] == "note"
    assert created["data"]["id"] == rid
    assert created["data"]["after"]["title"] == "fire"
    assert "before" not in created["data"]
    assert updated["data"]["event"] == "on_update"
    assert (updated["data"]["before"]["title"], updated["data"]["after"]["title"]) == (
        "fire",
        "still",
    )
    assert len(await engine.jobs("recorder")) == 4  # the unconditional trigger saw every write


async def test_writes_with_triggers_disabled_fire_none(api: Api) -> None:
    engine = api.engine
    many = [{"title": "x", "urgent": True}, {"title": "y", "urgent": True}]
    assert await write(api, op="createMany", fields=many, quiet=True) == 2
    rid = engine.tables.rows("note")[0]["id"]
    await write(api, op="update", id=rid, fields={"title": "z"}, quiet=True)
    await write(api, op="delete", id=rid, quiet=True)
    engine.tables.seed("note", [{"title": "seeded", "urgent": True}])  # seeding fires none
    assert await engine.jobs("recorder") == []
    assert await engine.jobs("recorderPy") == []
    # The same batch with triggers on fires once per record.
    assert await write(api, op="createMany", fields=many) == 2
    assert len(await engine.jobs("recorder")) == 2
    assert len(await engine.jobs("recorderPy")) == 2


async def test_a_trigger_writing_its_own_table_stops_at_the_bound(api: Api) -> None:
    """The `loop` trigger's function updates the row that triggers it: each update fires it
    again, up to MAX_TRIGGER_DEPTH chained jobs, then the chain stops."""
    engine = api.engine
    engine.tables.seed("counter", [{"id": "c1", "n": 0}])
    reply = await api.invoke(await api.anonymous_token(), "bump", {"id": "c1"})
    assert reply.body["code"] == 0, reply.body
    await engine.drain(JOB_TIMEOUT)
    jobs = await engine.jobs("bump")
    assert [j.source for j in jobs] == ["sdk", *["flex_schema"] * MAX_TRIGGER_DEPTH]
    assert all(j.status == "fulfilled" for j in jobs)
    (row,) = engine.tables.rows("counter")
    assert row["n"] == 1 + MAX_TRIGGER_DEPTH


async def test_a_write_storm_past_the_queue_bound_is_refused_without_a_task_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 creates in one call fire 1,000 triggers while the only slot is busy: the async
    queue's bound (5) admits 5 jobs, the rest are refused and logged at once, the writes all
    stand, and the triggers being stored never hold more than a handful of tasks."""
    loop = asyncio.get_running_loop()
    live = peak = 0

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal live, peak
        task = asyncio.Task(coro, loop=loop, **kwargs)
        live += 1
        peak = max(peak, live)

        def done(_: object) -> None:
            nonlocal live
            live -= 1

        task.add_done_callback(done)
        return task

    async with (
        running_engine(
            functions(), allow_anonymous=True, concurrency=1, max_queued_jobs=5
        ) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.anonymous_token()
        items = [{"title": f"n{i}"} for i in range(1000)]
        loop.set_task_factory(counting)
        try:
            reply = await api.invoke(token, "write", {"op": "createMany", "fields": items})
        finally:
            loop.set_task_factory(None)
        assert reply.body["code"] == 0, reply.body
        assert reply.body["data"] == 1000
        await engine.drain(JOB_TIMEOUT)
        assert len(engine.tables.rows("note")) == 1000
        jobs = await engine.jobs("recorder")
        assert [j.status for j in jobs] == ["fulfilled"] * 5
        refused = [r for r in caplog.records if "did not fire" in r.getMessage()]
        assert len(refused) == 995
        assert "queue is full" in refused[0].getMessage()
        assert peak < 50, peak
        assert (
            await api.invoke(token, "write", {"op": "create", "fields": {"t": 1}})
        ).status == 200
        await engine.drain(JOB_TIMEOUT)
        assert len(await engine.jobs("recorder")) == 6
