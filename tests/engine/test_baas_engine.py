"""Real functions using the in-function BaaS against a running engine: calls travel over the
workers' private channel, tables live in the engine's SQLite, the outbox is read from Python."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from engine_api import Api

from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = [
    pytest.mark.anyio,
]

# Modelled on the platform's lottery example (faas/lottery.js): query the prizes in stock, pick
# one, take one from its stock, record the win, notify the winner with a template message.
LOTTERY_JS: Final = """
exports.main = async function (event) {
  const Prize = new BaaS.TableObject('prize')
  const inStock = new BaaS.Query()
  inStock.compare('stock', '>', 0)
  const listed = await Prize.setQuery(inStock).limit(1).find()
  const total = listed.data.meta.total_count
  if (total === 0) return { won: false }
  const k = event.data.seed % total
  const pick = Prize.limit(1).offset(k).orderBy('created_at').getWithoutData(inStock)
  pick.incrementBy('stock', -1)
  const taken = await pick.update()
  const prize = await Prize.get(taken.data.operation_result[0].success.id)
  const rec = new BaaS.TableObject('lottery_record').create()
  rec.set({ prize: prize.data.name, created_by: event.request.user.id })
  await rec.save()
  const sent = await BaaS.sendTemplateMessage({
    recipient_type: 'user_id',
    user_id: event.request.user.id,
    template_id: 'tpl-win',
    submission_type: 'form_id',
    keywords: { keyword1: { value: prize.data.name } }
  })
  return { won: true, prize: prize.data.name, stock: prize.data.stock, notified: sent.data.status === 'ok' }
}
"""

# A function calling another: sync (the callee's envelope) and async ({status: 'ok'}).
CALLER_JS: Final = """
exports.main = async (event) => {
  const sync = await BaaS.invoke('callee', { n: event.data.n })
  const failing = await BaaS.invoke('failing', {})
  const legacy = await BaaS.invokeFunction('callee', { n: 1 })
  const queued = await BaaS.invoke('callee', { n: -1 }, false)
  let missing
  try { await BaaS.invoke('no_such_function') } catch (err) { missing = { code: err.code, message: err.message } }
  return { sync, failing: { code: failing.code, message: failing.error.message }, legacy: legacy.data, queued, missing, mine: event.eventType }
}
"""
CALLEE_JS: Final = """
exports.main = async (event) => ({ doubled: event.data.n * 2, eventType: event.eventType, hasRequest: 'request' in event })
"""
FAILING_JS: Final = "exports.main = async () => { throw new Error('callee broke') }\n"
FOREVER_JS: Final = """
exports.main = async (event) => {
  const res = await BaaS.invoke('forever', {})
  if (res.code !== 0) throw new Error(res.error.message)
  return res.data
}
"""

BAD_QUERY_JS: Final = """
exports.main = async (event) => {
  const T = new BaaS.TableObject('things')
  await T.create().set({ n: 1 }).save()
  const q = new BaaS.Query()
  q.compare('not a field!', '=', 1)
  try {
    await T.setQuery(q).find()
  } catch (err) {
    return { code: err.code, message: err.message, name: err.name }
  }
  return 'no error'
}
"""
BAD_QUERY_UNCAUGHT_JS: Final = """
exports.main = async (event) => {
  const q = new BaaS.Query()
  q.matches('name', /(a+)+$/)
  return new BaaS.TableObject('things').setQuery(q).find()
}
"""
UNSUPPORTED_JS: Final = """
exports.main = async (event) => {
  const out = {}
  for (const [key, fn] of [['pay', () => BaaS.wxPay({})], ['file', () => new BaaS.File()], ['order', () => BaaS.Order.get(1)]]) {
    try { await fn(); out[key] = 'ran' } catch (err) { out[key] = err.message }
  }
  return out
}
"""
STDIN_JS: Final = """
exports.main = function (event, callback) {
  let seen = ''
  // A warm worker's stdin already ended on an earlier call.
  if (process.stdin.readableEnded) return callback(null, { seen, call: event.data.call })
  process.stdin.setEncoding('utf8')
  process.stdin.on('data', (chunk) => { seen += chunk })
  process.stdin.on('end', () => { process.stdin.pause(); callback(null, { seen, call: event.data.call }) })
  process.stdin.resume()
}
"""
STDIN_PY: Final = """
import sys

def main(event):
    return {"seen": sys.stdin.read(), "call": event["data"]["call"]}
"""
SCHEMA_JS: Final = """
exports.main = async (event) => {
  const schema = new BaaS.TableSchema()
  const made = await schema.createSchema({ name: 'book', schema: { fields: [{ name: 'title', type: 'string' }] } })
  const book = await new BaaS.TableObject('book').create().set({ title: 'Dune', pages: 412 }).save()
  const list = await schema.getSchemaList()
  return { status: made.status, id: made.data.id, title: book.data.title, names: list.data.objects.map(t => t.name) }
}
"""
WRITE_JS: Final = """
exports.main = async (event) => {
  try {
    const row = await new BaaS.TableObject(event.data.table).create().set({ x: 1 }).save()
    return { status: row.status, x: row.data.x }
  } catch (err) { return { code: err.code, message: err.message } }
}
"""
READ_SEEDED_JS: Final = """
exports.main = async (event) => {
  const T = new BaaS.TableObject('order')
  const q = new BaaS.Query()
  q.compare('status', '=', 'pending')
  const res = await T.setQuery(q).orderBy('price').find()
  return res.data.objects.map(o => [o.id, o.price])
}
"""
WHOAMI_JS: Final = """
exports.main = async (event) => {
  const me = await new BaaS.User().get(event.request.user.id)
  const q = new BaaS.Query()
  q.compare('_username', '=', 'allen')
  const found = await new BaaS.User().setQuery(q).find()
  return { me: me.data, found: found.data.objects.map(u => u.id) }
}
"""
MANY_JS: Final = """
exports.main = async (event) => {
  const T = new BaaS.TableObject('many')
  const made = await Promise.all(Array.from({ length: 300 }, (_, i) => T.create().set({ i }).save()))
  return { created: made.filter(r => r.status === 201).length, count: await T.count() }
}
"""
STRAY_JS: Final = """
exports.main = async (event) => {
  if (event.data.step === 1) {
    // Work left running after the job ended: its BaaS call has no job to belong to.
    global.stray = new Promise(resolve => setTimeout(resolve, 20))
      .then(() => new BaaS.TableObject('stray').create().set({ late: true }).save())
      .then(() => 'saved', (err) => err.code + ' ' + err.message)
    return 'started'
  }
  return global.stray
}
"""
# Starts a nested invoke, then dies before it answers.
ABANDON_JS: Final = """
exports.main = async (event) => {
  BaaS.invoke('gate', { release: event.data.release })  // the call is sent at once
  setImmediate(() => process.exit(3))
  return new Promise(() => {})
}
"""
# Holds until the test creates the file named in data.release (bounded wait).
GATE_PY: Final = """
import os, time

def main(event):
    deadline = time.monotonic() + 8
    while not os.path.exists(event["data"]["release"]):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return "released"
"""
# A Python function doing the same data calls through its BaaS builtin (our extension).
LOTTERY_PY: Final = """
async def main(event):
    prizes = BaaS.table("prize")
    in_stock = {"stock": {"$gt": 0}}
    listed = await prizes.find(in_stock, limit=1, with_count=True)
    total = listed["meta"]["total_count"]
    if total == 0:
        return {"won": False}
    picked = await prizes.update_many(
        in_stock, {"stock": {"$incr_by": -1}}, limit=1, offset=event["data"]["seed"] % total,
        order_by="created_at",
    )
    prize = await prizes.get(picked["operation_result"][0]["success"]["id"])
    await BaaS.table("lottery_record").create({"prize": prize["name"]})
    sent = await BaaS.send_template_message({
        "recipient_type": "user_id", "user_id": 7, "template_id": "tpl-win",
        "submission_type": "form_id", "keywords": {"keyword1": {"value": prize["name"]}},
    })
    callee = await BaaS.invoke("callee", {"n": 4})
    try:
        await prizes.find({"stock": {"$nope": 1}})
    except BaaS.Error as exc:
        bad = [exc.code, exc.message]
    try:
        await BaaS.wxPay({"total_cost": 1})
    except BaaS.Error as exc:
        unsupported = str(exc)
    try:
        BaaS.File.upload("x")
    except BaaS.Error as exc:
        unsupported_file = exc.message
    count = await prizes.count({"stock": {"$gt": 0}})
    return {"prize": prize["name"], "stock": prize["stock"], "sent": sent, "callee": callee,
            "bad": bad, "unsupported": unsupported, "unsupported_file": unsupported_file,
            "count": count}
"""

# A plain (sync) Python function: each call's .result() waits for the engine's answer.
SYNC_PY: Final = """
def main(event):
    notes = BaaS.table("notes")
    row = notes.create({"text": event["data"]["text"]}).result()
    found = notes.find({"text": {"$eq": event["data"]["text"]}}).result()
    gone = notes.delete(row["id"]).result()
    try:
        notes.get(row["id"]).result()
    except BaaS.Error as exc:
        missing = [exc.code, exc.message]
    deep = []
    for _ in range(20_000):  # deeper than json.dumps goes: refused before it is sent
        deep = [deep]
    try:
        notes.create({"deep": deep})
    except BaaS.Error as exc:
        too_deep = [exc.code, exc.message]
    return {
        "too_deep": too_deep,
        "found": [r["id"] for r in found["objects"]] == [row["id"]],
        "gone": gone,
        "missing": missing,
        "count": notes.count().result(),
    }
"""

FUNCTIONS: Final = {
    "lottery.js": LOTTERY_JS,
    "caller.js": CALLER_JS,
    "callee.js": CALLEE_JS,
    "failing.js": FAILING_JS,
    "forever.js": FOREVER_JS,
    "bad_query.js": BAD_QUERY_JS,
    "bad_query_uncaught.js": BAD_QUERY_UNCAUGHT_JS,
    "unsupported.js": UNSUPPORTED_JS,
    "stdin_js.js": STDIN_JS,
    "stdin_py.py": STDIN_PY,
    "schema.js": SCHEMA_JS,
    "write.js": WRITE_JS,
    "read_seeded.js": READ_SEEDED_JS,
    "lottery_py.py": LOTTERY_PY,
    "many.js": MANY_JS,
    "stray.js": STRAY_JS,
    "abandon.js": ABANDON_JS,
    "gate.py": GATE_PY,
    "sync_py.py": SYNC_PY,
}


@pytest.fixture(name="api")
async def _api(http: aiohttp.ClientSession) -> AsyncIterator[Api]:
    async with running_engine(
        FUNCTIONS, sync_time_limit=10.0, async_time_limit=10.0, allow_anonymous=True
    ) as engine:
        yield Api(engine, http)


async def _ok(api: Api, token: str | None, name: str, data: Any = None) -> Any:
    """The function's data from a successful call (an anonymous user's when token is None)."""
    if token is None:
        token = await api.anonymous_token()
    reply = await api.invoke(token, name, {} if data is None else data)
    assert reply.status == 200, reply
    assert reply.body["code"] == 0, reply.body
    return reply.body["data"]


async def test_lottery_draw_with_a_logged_in_user(api: Api) -> None:
    api.engine.tables.seed("prize", [{"name": "mug", "stock": 2}, {"name": "pen", "stock": 0}])
    api.engine.tables.seed("prize", [{"name": "book", "stock": 1}])
    token = await api.login()
    assert await _ok(api, token, "lottery", {"seed": 0}) == {
        "won": True,
        "prize": "mug",
        "stock": 1,
        "notified": True,
    }
    second = await _ok(api, token, "lottery", {"seed": 1})
    assert (second["prize"], second["stock"]) == ("book", 0)
    third = await _ok(api, token, "lottery", {"seed": 0})
    assert (third["prize"], third["stock"]) == ("mug", 0)
    assert await _ok(api, token, "lottery", {"seed": 0}) == {"won": False}
    stock = {row["name"]: row["stock"] for row in api.engine.tables.rows("prize")}
    assert stock == {"mug": 0, "pen": 0, "book": 0}
    records = api.engine.tables.rows("lottery_record")
    assert [r["prize"] for r in records] == ["mug", "book", "mug"]
    sent = api.engine.outbox.messages("wechat.template_message")
    assert [m["data"]["keywords"]["keyword1"]["value"] for m in sent] == ["mug", "book", "mug"]
    # event.request.user is the caller: the record and the message name the same user.
    assert {r["created_by"] for r in records} == {m["data"]["user_id"] for m in sent}
    assert len({r["created_by"] for r in records}) == 1
    assert isinstance(records[0]["created_by"], int)


async def test_nested_invoke(api: Api) -> None:
    out = await _ok(api, None, "caller", {"n": 21})
    assert out["sync"] == {
        "code": 0,
        "data": {"doubled": 42, "eventType": "cloud_function", "hasRequest": False},
        "error": {},
    }
    assert out["failing"] == {"code": 1, "message": "callee broke"}  # a code, not a rejection
    assert out["legacy"]["data"]["doubled"] == 2
    assert out["queued"] == {"status": "ok"}
    assert out["missing"]["code"] == 404
    assert "no_such_function" in out["missing"]["message"]
    assert out["mine"] == "sdk"
    await api.engine.drain(timeout=30)
    callee_jobs = await api.engine.jobs("callee")
    assert [j.source for j in callee_jobs] == ["cloud_function"] * 3
    assert {j.service_type for j in callee_jobs} == {"time_sensitive", "batch"}
    assert all(j.status == "fulfilled" for j in callee_jobs)


async def test_a_nested_job_outlives_its_caller(api: Api, tmp_path: Path) -> None:
    release = tmp_path / "release"
    reply = await api.invoke(await api.anonymous_token(), "abandon", {"release": str(release)})
    assert reply.status == 400 and reply.body["job_status"] == "execution_failed", reply
    (gate,) = await api.engine.jobs("gate")  # the call reached the engine before the caller died
    release.touch()
    done = await api.engine.wait_job(gate.id, timeout=30)
    assert (done.status, done.source) == ("fulfilled", "cloud_function")
    assert done.result == {"code": 0, "data": "released", "error": {}}


async def test_runaway_recursion_is_stopped(api: Api) -> None:
    reply = await api.invoke(await api.anonymous_token(), "forever", {})
    assert reply.status == 200, reply
    assert reply.body["code"] == 1
    assert "nested invokes are more than 8 deep" in reply.body["error"]["message"]


async def test_bad_query_rejects_with_400_and_the_engine_keeps_serving(api: Api) -> None:
    out = await _ok(api, None, "bad_query")
    assert (out["code"], out["name"]) == (400, "HError"), out
    assert out["message"].startswith("400: ") and "not a field!" in out["message"], out
    reply = await api.invoke(await api.anonymous_token(), "bad_query_uncaught", {})
    assert reply.status == 200 and reply.body["code"] == 1, reply
    assert reply.body["error"]["message"].startswith("400: "), reply.body
    assert reply.body["error"]["type"] == "HError"
    # Still serving, and the table written before the bad query is intact.
    assert [r["n"] for r in api.engine.tables.rows("things")] == [1]
    assert await _ok(api, None, "callee", {"n": 1}) == {
        "doubled": 2,
        "eventType": "sdk",
        "hasRequest": True,
    }


async def test_unsupported_calls_say_so(api: Api) -> None:
    out = await _ok(api, None, "unsupported")
    assert out == {
        "pay": "not supported by the local engine: BaaS.wxPay",
        "file": "not supported by the local engine: BaaS.File",
        "order": "not supported by the local engine: BaaS.Order.get",
    }


@pytest.mark.parametrize("name", ["stdin_js", "stdin_py"])
async def test_stdin_holds_no_job_requests(api: Api, name: str) -> None:
    # Issue 12: user code reading (and pausing) stdin sees an empty stream, and the next call
    # on the same warm worker still gets its job.
    for call in range(3):
        assert await _ok(api, None, name, {"call": call}) == {"seen": "", "call": call}
    assert api.engine.executions(name) == 3


async def test_many_concurrent_calls_all_answered(api: Api) -> None:
    # More than the 50 a job may have running at once: the rest wait their turn.
    assert await _ok(api, None, "many") == {"created": 300, "count": 300}


async def test_a_call_after_its_job_ended_is_refused(api: Api) -> None:
    token = await api.anonymous_token()
    assert await _ok(api, token, "stray", {"step": 1}) == "started"
    out = await _ok(api, token, "stray", {"step": 2})
    assert out == "400 400: table.create: the job that made this call has finished"
    assert api.engine.executions("stray") == 2
    with pytest.raises(KeyError):
        api.engine.tables.rows("stray")


async def test_table_schema_calls(api: Api) -> None:
    out = await _ok(api, None, "schema")
    assert (out["status"], out["title"]) == (201, "Dune")
    assert "book" in out["names"] and "book" in api.engine.tables.names()
    fields = {f["name"]: f["type"] for f in api.engine.tables.schema("book")["schema"]["fields"]}
    assert fields["title"] == "string"
    assert fields["pages"] == "number"  # learned from the first write


async def test_seed_read_reset_from_python(api: Api, tmp_path: Path) -> None:
    tables = api.engine.tables
    rows = [
        {"id": "a" * 24, "status": "pending", "price": 30},
        {"id": "b" * 24, "status": "paid", "price": 10},
        {"id": "c" * 24, "status": "pending", "price": 20},
    ]
    source = tmp_path / "orders.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert tables.import_jsonl("order", source) == 3
    assert await _ok(api, None, "read_seeded") == [["c" * 24, 20], ["a" * 24, 30]]
    target = tmp_path / "out.jsonl"
    assert tables.export_jsonl("order", target) == 3
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["id"], r["price"]) for r in exported] == [(r["id"], r["price"]) for r in rows]
    tables.reset("order")
    assert tables.rows("order") == []
    assert await _ok(api, None, "read_seeded") == []
    tables.reset(drop=True)
    assert tables.names() == ["_userprofile"]
    with pytest.raises(KeyError):
        tables.rows("order")
    with pytest.raises(ValueError, match="invalid table name"):
        tables.create("no spaces allowed")


async def test_python_function_uses_baas(api: Api) -> None:
    api.engine.tables.seed("prize", [{"name": "mug", "stock": 1}, {"name": "pen", "stock": 3}])
    out = await _ok(api, None, "lottery_py", {"seed": 1})
    assert (out["prize"], out["stock"]) == ("pen", 2)
    assert out["sent"] == {"status": "ok"}
    assert out["callee"]["data"]["doubled"] == 8
    assert out["bad"][0] == 400
    assert out["unsupported"] == "501: not supported by the local engine: BaaS.wxPay"
    assert out["unsupported_file"] == "not supported by the local engine: BaaS.File.upload"
    assert out["count"] == 2
    assert [r["prize"] for r in api.engine.tables.rows("lottery_record")] == ["pen"]
    assert len(api.engine.outbox.messages()) == 1


@pytest.mark.parametrize("strict", [False, True])
async def test_users_are_in_userprofile(http: aiohttp.ClientSession, strict: bool) -> None:
    async with running_engine({"whoami.js": WHOAMI_JS}, strict_tables=strict) as engine:
        early = engine.create_user(username="early", password="pw")  # before any function ran
        api = Api(engine, http)
        token = await api.login("allen", "pw-allen")
        out = await _ok(api, token, "whoami")
        me = out["me"]
        assert (me["_username"], me["nickname"], me["is_authorized"]) == ("allen", "allen", True)
        assert out["found"] == [me["id"]] and me["id"] != early
        assert {u["_username"] for u in engine.tables.rows("_userprofile")} == {"early", "allen"}


async def test_plain_python_function_waits_for_results(api: Api) -> None:
    out = await _ok(api, None, "sync_py", {"text": "hi"})
    assert out["found"] is True and out["gone"] is None and out["count"] == 0
    assert out["missing"][0] == 404, out
    assert out["too_deep"][0] == 605 and "payload is not JSON" in out["too_deep"][1], out


async def test_unknown_tables_are_created_unless_strict(http: aiohttp.ClientSession) -> None:
    async with running_engine({"write.js": WRITE_JS}, allow_anonymous=True) as engine:
        api = Api(engine, http)
        assert await _ok(api, None, "write", {"table": "fresh"}) == {"status": 201, "x": 1}
        assert engine.tables.names() == ["_userprofile", "fresh"]
    async with running_engine(
        {"write.js": WRITE_JS}, strict_tables=True, allow_anonymous=True
    ) as engine:
        api = Api(engine, http)
        out = await _ok(api, None, "write", {"table": "fresh"})
        assert out["code"] == 404 and "fresh" in out["message"]
        engine.tables.create("fresh", [{"name": "x", "type": "integer"}])
        assert await _ok(api, None, "write", {"table": "fresh"}) == {"status": 201, "x": 1}


async def test_schema_file_and_state_file(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "read_seeded.js").write_text(READ_SEEDED_JS)
    (functions / "minapp.tables.json").write_text(
        json.dumps(
            {
                "tables": {
                    "order": {
                        "fields": [
                            {"name": "status", "type": "string"},
                            {"name": "price", "type": "integer"},
                        ],
                        "rows": [{"id": "d" * 24, "status": "pending", "price": 5}],
                    }
                }
            }
        )
    )
    state = tmp_path / "state" / "state.sqlite3"
    async with Engine(functions_dir=functions, state=state, allow_anonymous=True) as engine:
        api = Api(engine, http)
        assert await _ok(api, None, "read_seeded") == [["d" * 24, 5]]
        engine.tables.seed("order", [{"status": "pending", "price": 1}])
        assert [r["name"] for r in engine.tables.schema("order")["schema"]["fields"]] == [
            "status",
            "price",
        ]
    # The state file keeps the rows; the schema file does not seed them again.
    async with Engine(functions_dir=functions, state=state) as engine:
        assert [r["price"] for r in engine.tables.rows("order")] == [5, 1]
    # The function lister ignores the schema file.
    async with Engine(functions_dir=functions, allow_anonymous=True) as engine:
        api = Api(engine, http)
        reply = await api.invoke(await api.anonymous_token(), "minapp.tables", {})
        assert reply.status == 404


async def test_a_malformed_schema_file_stops_the_engine(tmp_path: Path) -> None:
    (tmp_path / "minapp.tables.json").write_text('{"tables": {\n  "order": [1,]\n}}')
    with pytest.raises(ValueError, match=r"minapp\.tables\.json, line 2: not valid JSON"):
        async with Engine(functions_dir=tmp_path):
            pass
    (tmp_path / "minapp.tables.json").write_text('{"tables": {"order": {"colour": 1}}}')
    with pytest.raises(ValueError, match=r"minapp\.tables\.json: table 'order': unknown keys"):
        async with Engine(functions_dir=tmp_path):
            pass


def test_readme_worked_example_runs(tmp_path: Path) -> None:
    """The README's "Run your real functions locally" example, as a user's project."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Run your real functions locally") :]
    js = re.search(r"```js\n(.*?)```", section, re.DOTALL)
    py = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert js and py
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "lottery.js").write_text(js.group(1))
    (tmp_path / "test_lottery.py").write_text(py.group(1))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["minapp_async.testing"]\n')
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p anyio -p no:asyncio -p no:cacheprovider\nfilterwarnings = error\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def test_a_nested_call_has_the_callees_own_limit(http: aiohttp.ClientSession) -> None:
    """An async caller (5 s) invokes a sync callee (1 s) that never ends: the callee is stopped
    at its own limit and the caller's BaaS.invoke rejects with HError 400."""
    functions = {
        "patient.js": (
            "exports.main = async (event) => {\n"
            "  try { await BaaS.invoke('endless', {}) } catch (err) {\n"
            "    return { code: err.code, message: err.message, limit: event.timeLimitInMS }\n"
            "  }\n"
            "}\n"
        ),
        "endless.js": "exports.main = (event, callback) => {}\n",
    }
    async with running_engine(
        functions, sync_time_limit=1.0, async_time_limit=5.0, allow_anonymous=True
    ) as engine:
        api = Api(engine, http)
        reply = await api.invoke(await api.anonymous_token(), "patient", {}, sync=False)
        assert reply.body == {"status": "ok"}
        (job,) = await engine.jobs("patient")
        done = await engine.wait_job(job.id, timeout=30)
        assert done.result is not None, done
        assert done.result["data"] == {
            "code": 400,
            "message": "400: cloud function 'endless' timed out after 1000 ms",
            "limit": 5000,
        }
        (endless,) = await engine.jobs("endless")
        assert (endless.status, endless.source) == ("deadline_exceeded", "cloud_function")
