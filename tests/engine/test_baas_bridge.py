"""Real functions against the real `BaaS` global: Node runs baas.cjs, whose calls travel as JSON
lines to this test, which answers them with the dispatcher over a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from minapp_async.engine._baas_ops import BaasOps, Outbox
from minapp_async.engine._tables import Tables

pytestmark = [
    pytest.mark.anyio,
]

HOST = Path(__file__).with_name("baas_host.cjs")
BAAS = Path(__file__).parents[2] / "minapp_async" / "engine" / "runtime" / "baas.cjs"


class Bridge:
    """One engine-side store, and a way to run function source against it."""

    def __init__(self, tmp_path: Path, ops: BaasOps) -> None:
        self.tmp_path = tmp_path
        self.ops = ops
        self.tables = ops.tables
        self.outbox = ops.outbox
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._n = 0

    async def run(self, source: str, event: Any = None) -> Any:
        """The function's result; an uncaught error fails the test with its message."""
        kind, value = await self.outcome(source, event)
        assert kind == "result", value
        return value

    async def outcome(self, source: str, event: Any = None) -> tuple[str, Any]:
        self._n += 1
        fn = self.tmp_path / f"fn{self._n}.js"
        fn.write_text(source)
        stderr = self.tmp_path / f"fn{self._n}.stderr"
        argv = ["node", str(HOST), str(BAAS), str(fn), json.dumps(event or {})]
        with stderr.open("wb") as err:
            process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=err)
        async with process:
            assert process.stdout is not None and process.stdin is not None
            reader = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(30):
                while True:
                    try:
                        line = await reader.receive_until(b"\n", 1 << 24)
                    except anyio.EndOfStream:
                        raise AssertionError(stderr.read_text()) from None
                    msg = json.loads(line)
                    if msg["t"] != "call":
                        break
                    self.calls.append((msg["op"], msg["payload"]))
                    answer = await self.ops.handle(msg["op"], msg["payload"])
                    reply = json.dumps({"id": msg["id"], "answer": answer}) + "\n"
                    await process.stdin.send(reply.encode())
                await process.stdin.aclose()
                assert await process.wait() == 0, stderr.read_text()
        return msg["t"], msg.get("result", msg.get("error"))


@contextlib.contextmanager
def open_bridge(tmp_path: Path, **options: Any) -> Iterator[Bridge]:
    """A bridge over tmp_path/state.db; its two connections are closed on the way out."""
    with contextlib.closing(Tables(tmp_path / "state.db")) as tables:
        with contextlib.closing(Outbox(str(tmp_path / "state.db"))) as outbox:
            yield Bridge(tmp_path, BaasOps(tables, outbox, **options))


@pytest.fixture(name="bridge")
def _bridge(tmp_path: Path) -> Iterator[Bridge]:
    with open_bridge(tmp_path) as bridge:
        yield bridge


LOTTERY = """
// A lottery draw: pick one prize still in stock, take one from its stock, record the win and
// tell the winner -- the flow the platform's lottery example runs in its cloud function.
exports.main = async function (event) {
  const Prize = new BaaS.TableObject('prize')
  const inStock = new BaaS.Query()
  inStock.compare('stock', '>', 0)
  const listed = await Prize.setQuery(inStock).limit(1).find()
  const total = listed.data.meta.total_count  // v2: included without withCount
  if (total === 0) return { won: false }
  const k = event.data.seed % total
  const pick = Prize.limit(1).offset(k).orderBy('created_at').getWithoutData(inStock)
  pick.incrementBy('stock', -1)
  const taken = await pick.update()
  const prizeId = taken.data.operation_result[0].success.id
  const prize = await Prize.get(prizeId)
  const Record = new BaaS.TableObject('lottery_record')
  const rec = Record.create()
  rec.set({ prize: Prize.getWithoutData(prizeId), created_by: event.data.user_id })
  const saved = await rec.save()
  const sent = await BaaS.sendTemplateMessage({
    recipient_type: 'user_id',
    user_id: event.data.user_id,
    template_id: 'tpl-win',
    submission_type: 'form_id',
    keywords: { keyword1: { value: prize.data.name } }
  })
  return {
    won: true,
    prize: prize.data.name,
    stock: prize.data.stock,
    total,
    succeed: taken.data.succeed,
    recordStatus: saved.status,
    notified: sent.data.status === 'ok'
  }
}
"""


async def test_lottery_draw(bridge: Bridge) -> None:
    for name, stock in [("mug", 2), ("pen", 0), ("book", 1)]:
        bridge.tables.create("prize", {"name": name, "stock": stock})
    first = await bridge.run(LOTTERY, {"data": {"seed": 0, "user_id": 7}})
    assert first == {
        "won": True,
        "prize": "mug",
        "stock": 1,
        "total": 2,
        "succeed": 1,
        "recordStatus": 201,
        "notified": True,
    }
    second = await bridge.run(LOTTERY, {"data": {"seed": 1, "user_id": 8}})
    assert (second["prize"], second["stock"], second["total"]) == ("book", 0, 2)
    third = await bridge.run(LOTTERY, {"data": {"seed": 5, "user_id": 9}})
    assert (third["prize"], third["stock"], third["total"]) == ("mug", 0, 1)
    assert await bridge.run(LOTTERY, {"data": {"seed": 0, "user_id": 9}}) == {"won": False}
    assert bridge.tables.count("prize", {"stock": {"$gt": 0}}) == 0
    records = bridge.tables.find("lottery_record", order_by="created_at", expand="prize")
    assert [r["created_by"] for r in records["objects"]] == [7, 8, 9]
    assert [r["prize"]["name"] for r in records["objects"]] == ["mug", "book", "mug"]
    sent = bridge.outbox.messages("wechat.template_message")
    assert [m["data"]["user_id"] for m in sent] == [7, 8, 9]
    assert sent[1]["data"]["keywords"] == {"keyword1": {"value": "book"}}


ORDERS = """
exports.main = async (event) => {
  const Order = new BaaS.TableObject('order')
  const made = await Order.createMany([
    { sku: 'a', status: 'pending', price: 10 },
    { sku: 'b', status: 'pending', price: 25 },
    { sku: 'c', status: 'paid', price: 5 }
  ])
  const ids = made.data.operation_result.map(r => r.success.id)
  // Pay one order: the single-record update answers with the whole row.
  const paid = await Order.getWithoutData(ids[0])
    .set('status', 'paid').uAppend('log', ['paid', 'paid']).incrementBy('version', 1)
    .update({ enableTrigger: false })
  // Cancel what is still pending (what a timer's function does).
  const pending = new BaaS.Query()
  pending.compare('status', '=', 'pending')
  const cancel = Order.limit(100).getWithoutData(pending)
  cancel.set('status', 'cancelled')
  const cancelled = await cancel.update()
  const gone = await Order.delete(ids[1])
  const q = new BaaS.Query()
  q.in('status', ['paid', 'cancelled'])
  const left = await Order.setQuery(q).orderBy(['-price', 'sku']).find()
  return {
    created: { status: made.status, succeed: made.data.succeed, total: made.data.total_count },
    paid: { status: paid.status, row: paid.data },
    cancelled: cancelled.data,
    gone: { status: gone.status, statusText: gone.statusText, data: gone.data },
    left: left.data.objects.map(o => [o.sku, o.status]),
    count: await Order.count()
  }
}
"""


async def test_order_updates(bridge: Bridge) -> None:
    out = await bridge.run(ORDERS)
    assert out["created"] == {"status": 201, "succeed": 3, "total": 3}
    row = out["paid"]["row"]
    assert out["paid"]["status"] == 200
    assert (row["sku"], row["status"], row["log"], row["version"]) == ("a", "paid", ["paid"], 1)
    assert row["id"] == row["_id"] and isinstance(row["updated_at"], int)
    bulk = out["cancelled"]
    assert (bulk["succeed"], bulk["limit"], bulk["offset"], bulk["next"]) == (1, 100, 0, None)
    assert bulk["total_count"] == 1  # v2: counted by default
    assert list(bulk["operation_result"][0]["success"]) == ["id", "updated_at"]
    assert out["gone"] == {"status": 204, "statusText": "No Content", "data": ""}
    assert out["left"] == [["a", "paid"], ["c", "paid"]]
    assert out["count"] == 2
    assert ("table.update", {"enable_trigger": False}) in [
        (op, {"enable_trigger": p.get("enable_trigger")}) for op, p in bridge.calls
    ]


DOC_SKETCHES = """
// The sketches of BAAS.md 1.4 and 1.6: atomic ops on one record, a bulk expiry, an OR query.
exports.main = async (event) => {
  const T = new BaaS.TableObject('orders')
  const one = T.getWithoutData(event.data.id).incrementBy('views', 1).uAppend('tags', 'seen')
  const row = (await one.update({ enableTrigger: false })).data
  const q = new BaaS.Query(); q.compare('status', '=', 'pending')
  const many = T.limit(100).getWithoutData(q); many.set('status', 'expired')
  const expired = (await many.update()).data.succeed
  const a = new BaaS.Query(); a.compare('price', '>=', 10)
  const b = new BaaS.Query(); b.in('color', ['red', 'blue'])
  const found = await T.setQuery(BaaS.Query.or(a, b)).orderBy('-created_at').limit(50).find()
  return { views: row.views, tags: row.tags, expired, found: found.data.objects.map(o => o.name).sort() }
}
"""


async def test_documented_sketches(bridge: Bridge) -> None:
    t = bridge.tables
    target = t.create("orders", {"name": "t", "views": 4, "tags": ["seen"], "status": "paid"})
    t.create("orders", {"name": "cheap-red", "price": 1, "color": "red", "status": "pending"})
    t.create("orders", {"name": "dear", "price": 20, "color": "green", "status": "pending"})
    t.create("orders", {"name": "cheap-green", "price": 2, "color": "green", "status": "paid"})
    out = await bridge.run(DOC_SKETCHES, {"data": {"id": target["id"]}})
    assert out == {"views": 5, "tags": ["seen"], "expired": 2, "found": ["cheap-red", "dear"]}
    assert t.count("orders", {"status": "expired"}) == 2


VERSIONED = """
BaaS.useVersion('v3.2')
exports.main = async () => {
  const T = new BaaS.TableObject('nums')
  const plain = await T.find()
  const counted = await T.find({ withCount: true })
  const q = new BaaS.Query(); q.compare('n', '>=', 3)
  const n = await T.setQuery(q).count()
  const bulk = await T.getWithoutData(q).set('big', true).update()
  return {
    version: BaaS.VERSION,
    plainMeta: plain.data.meta,
    total: counted.data.meta.total_count,
    n,
    bulkHasTotal: 'total_count' in bulk.data
  }
}
"""


async def test_use_version_drops_total_count(bridge: Bridge) -> None:
    bridge.tables.create_many("nums", [{"n": i} for i in range(5)])
    out = await bridge.run(VERSIONED)
    assert out["version"] == "3.2.0"
    assert out["plainMeta"] == {"limit": 20, "offset": 0, "next": None, "previous": None}
    assert (out["total"], out["n"], out["bulkHasTotal"]) == (5, 2, False)


ERRORS = """
exports.main = async () => {
  const T = new BaaS.TableObject('things')
  await T.create().set('a', 1).save()
  const caught = {}
  try { await T.get('0123456789abcdef01234567') } catch (e) { caught.missing = e.toJSON() }
  try { await new BaaS.TableObject('nope').find() } catch (e) { caught.table = e.toJSON() }
  const bad = new BaaS.Query(); bad.compare("a') OR 1=1 --", '=', 1)
  try { await T.setQuery(bad).find() } catch (e) { caught.query = e.toJSON() }
  try { T.setQuery(123) } catch (e) { caught.sync = [e.name, e.code] }
  try { T.getWithoutData('x').set('a', 1).unset('a') } catch (e) { caught.setUnset = e.code }
  try { await BaaS.File.upload('x') } catch (e) { caught.file = e.message }
  try { new BaaS.ContentGroup(1) } catch (e) { caught.content = e.message }
  try { await BaaS.wechat.decryptData({}) } catch (e) { caught.decrypt = e.message }
  try { await BaaS.invoke('other', { a: 1 }) } catch (e) { caught.invoke = e.toJSON() }
  caught.fileType = typeof BaaS.File
  caught.count = await T.count()
  return caught
}
"""


async def test_errors_are_herrors_and_gaps_say_so(bridge: Bridge) -> None:
    out = await bridge.run(ERRORS)
    assert out["missing"]["code"] == 404
    assert out["missing"]["message"].startswith("404: record not found")
    assert out["table"] == {"code": 404, "message": "404: table not found: 'nope'"}
    assert out["query"]["code"] == 400 and "invalid field name" in out["query"]["message"]
    assert out["sync"] == ["HError", 605]
    assert out["setUnset"] == 605
    assert out["file"] == "not supported by the local engine: BaaS.File.upload"
    assert out["content"] == "not supported by the local engine: BaaS.ContentGroup"
    assert out["decrypt"] == "not supported by the local engine: BaaS.wechat.decryptData"
    assert out["invoke"]["code"] == 501 and "not wired yet" in out["invoke"]["message"]
    assert (out["fileType"], out["count"]) == ("function", 1)


async def test_an_uncaught_rejection_fails_the_function(bridge: Bridge) -> None:
    source = "exports.main = async () => new BaaS.TableObject('nope').get('x')"
    kind, error = await bridge.outcome(source)
    assert kind == "error"
    assert (error["name"], error["code"]) == ("HError", 404)


async def test_invoke_returns_the_callee_envelope(tmp_path: Path) -> None:
    seen: list[tuple[str, Any, bool]] = []

    async def invoke(name: str, params: Any, sync: bool) -> dict[str, Any]:
        seen.append((name, params, sync))
        return {"code": 0, "data": {"echo": params}, "error": {}}

    source = """
    exports.main = async () => {
      const env = await BaaS.invoke('child', { n: 1 })
      const old = await BaaS.invokeFunction('child', { n: 2 }, false)
      return { env, old: { status: old.status, data: old.data } }
    }
    """
    with open_bridge(tmp_path, invoke=invoke) as bridge:
        out = await bridge.run(source)
    assert out["env"] == {"code": 0, "data": {"echo": {"n": 1}}, "error": {}}
    assert out["old"] == {
        "status": 200,
        "data": {"code": 0, "data": {"echo": {"n": 2}}, "error": {}},
    }
    assert seen == [("child", {"n": 1}, True), ("child", {"n": 2}, False)]


SCHEMA = """
exports.main = async () => {
  const tableSchema = new BaaS.TableSchema()
  const made = await tableSchema.createSchema({
    name: 'Table199',
    schema: { fields: [{ name: 'String', type: 'string' }, { name: 'n', type: 'integer', default: 3 }] },
    row_read_perm: ['user:anonymous'],
    row_write_perm: ['user:*'],
    write_perm: ['user:*']
  })
  const row = await new BaaS.TableObject(made.data.id).create().set('String', 'hi').save()
  const got = await tableSchema.getSchema(made.data.id)
  const renamed = await tableSchema.updateSchema(made.data.id, { name: 'table' })
  const list = await tableSchema.getSchemaList({ limit: 20, offset: 0 })
  const gone = await tableSchema.deleteSchema(made.data.id)
  return { made: made.status, perms: made.data.default_row_perm, row: row.data, got: got.data.name,
           renamed: renamed.data.name, listed: list.data.objects.map(o => o.name),
           total: list.data.meta.total_count, gone: gone.status }
}
"""


async def test_table_schema_calls(bridge: Bridge) -> None:
    out = await bridge.run(SCHEMA)
    assert (out["made"], out["got"], out["renamed"], out["gone"]) == (201, "Table199", "table", 204)
    assert out["perms"] == {"_read_perm": ["user:anonymous"], "_write_perm": ["user:*"]}
    assert (out["row"]["String"], out["row"]["n"]) == ("hi", 3)
    assert out["row"]["write_perm"] == ["user:*"]
    assert (out["listed"], out["total"]) == (["table"], 1)
    assert bridge.tables.list_tables()["objects"] == []


USERS = """
exports.main = async (event) => {
  const User = new BaaS.User()
  const one = await User.get(event.data.uid)
  const q = new BaaS.Query(); q.contains('nickname', 'ar')
  const found = await User.setQuery(q).orderBy('id').find()
  const upd = await new BaaS.User().getWithoutData(event.data.uid).set('city', 'Guangzhou').update()
  const T = new BaaS.TableObject('post')
  const post = await T.create().set({ title: 't', author: new BaaS.User().getWithoutData(event.data.uid) }).save()
  const expanded = await T.expand(['author']).get(post.data.id)
  return { one: one.data.nickname, found: found.data.objects.map(u => u.id), city: upd.data.city,
           author: expanded.data.author.nickname, table: expanded.data.author._table }
}
"""


async def test_users(bridge: Bridge) -> None:
    for uid, nick in [(3, "Larry"), (5, "Mary"), (9, "Bob")]:
        bridge.tables.create("_userprofile", {"id": uid, "nickname": nick, "gender": 1})
    out = await bridge.run(USERS, {"data": {"uid": 5}})
    assert out == {
        "one": "Mary",
        "found": [3, 5],
        "city": "Guangzhou",
        "author": "Mary",
        "table": "_userprofile",
    }


MESSAGES = """
exports.main = async () => {
  const sub = await BaaS.wechat.sendSubscribeMessage({
    recipient_type: 'user_list', user_list: [1, 2], template_id: 'sub-1',
    keywords: { thing1: { value: 'x' } }, page: 'pages/index'
  })
  const mail = await BaaS.sendEmail({ recipient: 'a@example.com', subject: 'Hi', body: 'Hello' })
  const sms = await BaaS.sendSmsMessage({ recipient_type: 'phone_number', phone_number: '13800000000', template_name: 'notice' })
  const code = await BaaS.sendSmsCode({ phone: '13800000000' })
  const token = await BaaS.wxAccessToken()
  const date = await BaaS.getServerDate()
  let bad
  try { await BaaS.sendTemplateMessage({ template_id: 't' }) } catch (e) { bad = e.code }
  return { sub: sub.data, mail: mail.status, sms: sms.data, code: [code.status, code.data],
           token: [typeof token.access_token, token.expires_in, token.data.expires_in],
           date: date.data.time, bad }
}
"""


async def test_messages_land_in_the_outbox(bridge: Bridge) -> None:
    out = await bridge.run(MESSAGES)
    assert out["sub"] == {"status": "ok"} and out["sms"] == {"status": "ok"}
    assert out["mail"] == 200
    assert out["code"] == [201, {"status": "ok"}]
    assert out["token"] == ["string", 5400, 5400]
    assert out["date"].endswith("+08:00")
    assert out["bad"] == 400  # no recipient_type
    kinds = [m["kind"] for m in bridge.outbox.messages()]
    assert kinds == ["wechat.subscribe_message", "email", "sms_message", "sms_code"]
    code = bridge.outbox.messages("sms_code")[0]["data"]["code"]
    verify = """
    exports.main = async (event) => {
      let wrong
      try { await BaaS.verifySmsCode({ phone: '13800000000', code: 'nope' }) } catch (e) { wrong = e.code }
      const right = await BaaS.verifySmsCode({ phone: '13800000000', code: event.data.code })
      return [wrong, right.data.status]
    }
    """
    assert await bridge.run(verify, {"data": {"code": code}}) == [400, "ok"]


async def test_dispatcher_refuses_bad_ops_without_raising(bridge: Bridge) -> None:
    ops = bridge.ops
    assert (await ops.handle("nope", {}))["error"]["code"] == 400
    assert (await ops.handle("table.find", []))["error"]["code"] == 400  # type: ignore[arg-type]
    answer = await ops.handle("table.find", {"table": "x", "limit": "5"})
    assert answer["error"]["code"] == 400
    answer = await ops.handle("table.create", {"table": "x", "data": {"a": 1}})
    assert answer["status"] == 201 and answer["data"]["a"] == 1


QUERY_SETTINGS = """
exports.main = async (event) => {
  const Shop = new BaaS.TableObject('shop')
  const made = await Shop.createMany([
    { name: 'a', loc: new BaaS.GeoPoint(113.3, 23.1), at: new Date(Date.UTC(2020, 0, 2)), rank: 2 },
    { name: 'b', area: new BaaS.GeoPolygon([[0, 0], [0, 1], [1, 1]]), rank: 1 }
  ])
  const byId = await Shop.select(['name', 'loc']).get(made.data.operation_result[0].success.id)
  // Settings are used once: the next find sees none of them.
  const narrowed = await Shop.limit(1).orderBy('rank').find()
  const plain = await Shop.find()
  const errors = {}
  try { Shop.limit(-1) } catch (e) { errors.negative = e.code }
  try { await Shop.limit(1001).find() } catch (e) { errors.tooMany = [e.code, e.message] }
  const near = new BaaS.Query(); near.withinCircle('loc', new BaaS.GeoPoint(113, 23), 10)
  try { await Shop.setQuery(near).find() } catch (e) { errors.geo = e.message }
  const re = new BaaS.Query(); re.matches('name', /^A$/i)
  const matched = await Shop.setQuery(re).find()
  return { byId: byId.data, narrowed: narrowed.data.objects.map(o => o.name),
           plain: plain.data.objects.length, errors, matched: matched.data.objects.map(o => o.name),
           area: plain.data.objects.find(o => o.name === 'b').area }
}
"""


async def test_query_settings_geo_values_and_limits(bridge: Bridge) -> None:
    out = await bridge.run(QUERY_SETTINGS)
    assert out["byId"] == {"name": "a", "loc": {"type": "Point", "coordinates": [113.3, 23.1]}}
    assert out["narrowed"] == ["b"]
    assert out["plain"] == 2
    assert out["errors"]["negative"] == 605
    assert out["errors"]["tooMany"][0] == 400 and "limit" in out["errors"]["tooMany"][1]
    assert "$center is not supported by the local engine" in out["errors"]["geo"]
    assert out["matched"] == ["a"]
    assert out["area"] == {"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [0, 0]]]}
    [stored] = bridge.tables.find("shop", {"name": "a"})["objects"]
    assert stored["at"] == "2020-01-02T00:00:00.000Z"
