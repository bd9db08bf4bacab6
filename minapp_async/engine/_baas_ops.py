"""The engine's side of the in-function `BaaS` object: one `op` + payload in, one answer out.

`baas.cjs` (the Node `BaaS` global) sends `call(op, payload)` over the worker's private channel;
`BaasOps.handle` answers `{"status": int, "data": ...}` on success and
`{"error": {"code": int, "message": str}}` on failure, which `baas.cjs` turns into an HError
rejection. Messages a function sends (template messages, SMS, email …) land in the `Outbox`, an
SQLite table that tests and the CLI read; nothing leaves the machine.

Ops and payloads (snake_case keys; `table` is a name or an integer table id; `where` is the
platform's JSON query; `update` is the REST update document, e.g. `{"n": {"$incr_by": 1}}`):

    table.create       {table, data}                                            → 201 row
    table.create_many  {table, items, enable_trigger}                           → 201 {succeed, total_count, operation_result}
    table.get          {table, id, select?, expand?}                            → 200 row
    table.find         {table, where, limit, offset, order_by, select, expand, with_count} → 200 {meta, objects}
    table.count        {table, where}                                           → 200 int
    table.update       {table, id, update, enable_trigger}                      → 200 row
    table.update_many  {table, where, update, limit, offset, order_by, enable_trigger, with_count} → 200 bulk reply
    table.delete       {table, id, enable_trigger}                              → 204 ""
    table.delete_many  {table, where, limit, offset, order_by, enable_trigger, with_count} → 200 bulk reply
    schema.create      {name, schema: {fields}, write_perm, row_read_perm, row_write_perm} → 201 table
    schema.get / schema.delete {id};  schema.list {limit, offset};  schema.update {id, name?, schema?, …}
    message.send       {kind, data}   (kind in MESSAGE_KINDS)                  → 200 {status: "ok"}
    sms.send_code      {phone, …};  sms.verify_code {phone, code}               → 201 {status: "ok"}
    wechat.access_token {};  server.date {}
    function.invoke    {name, params, sync}   → 200 envelope (needs an `invoke` callable)
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ._tables import TableError, Tables

#: invoke(name, params, sync) → the callee's `{code, data, error}` envelope (or `{status:'ok'}`
#: for an async call). The engine answers `function.invoke` itself (engine/_baas.py), where
#: the calling job is known; this hook serves standalone uses such as the bridge test.
Invoker = Callable[[str, Any, bool], Awaitable[dict[str, Any]]]

_OUTBOX_DDL: Final = """
CREATE TABLE IF NOT EXISTS baas_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""
#: Message kinds the outbox accepts (the `kind` of a `message.send` op).
MESSAGE_KINDS: Final = frozenset(
    {
        "wechat.template_message",
        "alipay.template_message",
        "qq.template_message",
        "baidu.template_message",
        "bytedance.template_message",
        "wechat.subscribe_message",
        "qq.subscribe_message",
        "sms_message",
        "email",
    }
)
_RECIPIENT_TYPES: Final = frozenset(
    {"user_id", "user_list", "user_group", "schema_user", "user_profile", "phone_number"}
)
#: The app's timezone for getServerDate (the platform's apps default to China time).
_APP_TZ: Final = dt.timezone(dt.timedelta(hours=8))


class Outbox:
    """Messages sent from functions, kept in SQLite (the engine's state database)."""

    def __init__(self, db: sqlite3.Connection | str | Path) -> None:
        # A connection given is shared and stays open; one opened here is closed by close().
        if isinstance(db, sqlite3.Connection):
            self._db, self._owned = db, False
        else:
            self._db, self._owned = sqlite3.connect(str(db)), True
        try:
            self._db.executescript(_OUTBOX_DDL)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection this outbox opened (a shared one is its owner's to close)."""
        if self._owned:
            self._db.close()

    def record(self, kind: str, data: Mapping[str, Any]) -> int:
        with self._db:
            cur = self._db.execute(
                "INSERT INTO baas_outbox (kind, data, created_at) VALUES (?,?,?)",
                (kind, json.dumps(data, ensure_ascii=False), int(time.time())),
            )
        return int(cur.lastrowid or 0)

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Oldest first: `{seq, kind, data, created_at}`."""
        sql = "SELECT seq, kind, data, created_at FROM baas_outbox"
        rows = (
            self._db.execute(sql + " WHERE kind = ? ORDER BY seq", (kind,))
            if kind is not None
            else self._db.execute(sql + " ORDER BY seq")
        )
        return [
            {"seq": seq, "kind": k, "data": json.loads(data), "created_at": at}
            for seq, k, data, at in rows.fetchall()
        ]

    def clear(self) -> None:
        with self._db:
            self._db.execute("DELETE FROM baas_outbox")


def _str(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise TableError(400, f"{key} must be a non-empty string")
    return value


def _table(payload: Mapping[str, Any]) -> str | int:
    value = payload.get("table")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TableError(400, f"invalid table: {value!r:.60}")
    return value


def _opt_int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TableError(400, f"{key} must be an integer, not {value!r:.40}")
    return value


def _flag(payload: Mapping[str, Any], key: str, default: bool) -> bool:
    value = payload.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TableError(400, f"{key} must be true or false, not {value!r:.40}")
    return value


def _fields(payload: Mapping[str, Any], key: str) -> str | list[str] | None:
    value = payload.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise TableError(400, f"{key} must be a field name or a list of them")


def _obj(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise TableError(400, f"{key} must be an object")
    return value


class BaasOps:
    """Answers the ops `baas.cjs` sends. One instance per engine; the engine runs `answer` on
    its one tables thread (each op is a short SQLite transaction), so ops are serialised and
    need no lock, and the event loop never waits on disk."""

    def __init__(self, tables: Tables, outbox: Outbox, *, invoke: Invoker | None = None) -> None:
        self.tables = tables
        self.outbox = outbox
        self.invoke = invoke
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "table.create": self._create,
            "table.create_many": self._create_many,
            "table.get": self._get,
            "table.find": self._find,
            "table.count": self._count,
            "table.update": self._update,
            "table.update_many": self._update_many,
            "table.delete": self._delete,
            "table.delete_many": self._delete_many,
            "schema.create": self._schema_create,
            "schema.get": self._schema_get,
            "schema.list": self._schema_list,
            "schema.update": self._schema_update,
            "schema.delete": self._schema_delete,
            "message.send": self._send,
            "sms.send_code": self._sms_send_code,
            "sms.verify_code": self._sms_verify_code,
            "wechat.access_token": self._access_token,
            "server.date": self._server_date,
        }

    async def handle(self, op: str, payload: Any) -> dict[str, Any]:
        """One op → `{status, data}` or `{error: {code, message}}`; never raises for bad input."""
        if op == "function.invoke":
            try:
                if not isinstance(payload, dict):
                    raise TableError(400, f"the payload of {op!r:.40} must be an object")
                return await self._invoke(payload)
            except TableError as exc:
                return {"error": {"code": exc.status, "message": exc.message}}
        return self.answer(op, payload)

    def answer(self, op: str, payload: Any) -> dict[str, Any]:
        """Any op but `function.invoke`, synchronously: the engine runs this on its tables
        thread (the SQLite connection's only user), so the event loop never waits on disk."""
        try:
            if not isinstance(payload, dict):
                raise TableError(400, f"the payload of {op!r:.40} must be an object")
            handler = self._ops.get(op)
            if handler is None:
                raise TableError(400, f"not supported by the local engine: op {op!r:.60}")
            status, data = handler(payload)
            return {"status": status, "data": data}
        except TableError as exc:
            return {"error": {"code": exc.status, "message": exc.message}}
        except sqlite3.Error as exc:  # e.g. a locked or full database: the function sees a 500
            return {"error": {"code": 500, "message": f"storage error: {exc}"}}

    # -- records --------------------------------------------------------------------------

    def _create(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 201, self.tables.create(_table(p), _obj(p, "data"))

    def _create_many(self, p: dict[str, Any]) -> tuple[int, Any]:
        items = p.get("items")
        if not isinstance(items, list):
            raise TableError(400, "items must be a list of records")
        reply = self.tables.create_many(
            _table(p), items, enable_trigger=_flag(p, "enable_trigger", True)
        )
        return 201, reply

    def _get(self, p: dict[str, Any]) -> tuple[int, Any]:
        rid = p.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise TableError(400, f"invalid record id: {rid!r:.60}")
        row = self.tables.get(
            _table(p), rid, select=_fields(p, "select"), expand=_fields(p, "expand")
        )
        return 200, row

    def _find(self, p: dict[str, Any]) -> tuple[int, Any]:
        reply = self.tables.find(
            _table(p),
            p.get("where"),
            limit=_opt_int(p, "limit"),
            offset=_opt_int(p, "offset"),
            order_by=_fields(p, "order_by"),
            select=_fields(p, "select"),
            expand=_fields(p, "expand"),
            with_count=_flag(p, "with_count", False),
        )
        return 200, reply

    def _count(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, self.tables.count(_table(p), p.get("where"))

    def _update(self, p: dict[str, Any]) -> tuple[int, Any]:
        rid = p.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise TableError(400, f"invalid record id: {rid!r:.60}")
        row = self.tables.update(
            _table(p), rid, _obj(p, "update"), enable_trigger=_flag(p, "enable_trigger", True)
        )
        return 200, row

    def _update_many(self, p: dict[str, Any]) -> tuple[int, Any]:
        reply = self.tables.update_many(
            _table(p),
            p.get("where"),
            _obj(p, "update"),
            limit=_opt_int(p, "limit"),
            offset=_opt_int(p, "offset"),
            order_by=_fields(p, "order_by"),
            enable_trigger=_flag(p, "enable_trigger", True),
            with_count=_flag(p, "with_count", False),
        )
        return 200, reply

    def _delete(self, p: dict[str, Any]) -> tuple[int, Any]:
        rid = p.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise TableError(400, f"invalid record id: {rid!r:.60}")
        self.tables.delete(_table(p), rid, enable_trigger=_flag(p, "enable_trigger", True))
        return 204, ""

    def _delete_many(self, p: dict[str, Any]) -> tuple[int, Any]:
        reply = self.tables.delete_many(
            _table(p),
            p.get("where"),
            limit=_opt_int(p, "limit"),
            offset=_opt_int(p, "offset"),
            order_by=_fields(p, "order_by"),
            enable_trigger=_flag(p, "enable_trigger", True),
            with_count=_flag(p, "with_count", False),
        )
        return 200, reply

    # -- TableSchema ----------------------------------------------------------------------

    @staticmethod
    def _schema_args(p: dict[str, Any]) -> dict[str, Any]:
        schema = p.get("schema") or {}
        if not isinstance(schema, dict):
            raise TableError(400, "schema must be an object with a fields list")
        fields = schema.get("fields", [])
        if not isinstance(fields, list):
            raise TableError(400, "schema.fields must be a list")
        return {
            "fields": fields,
            "write_perm": p.get("write_perm"),
            "row_read_perm": p.get("row_read_perm"),
            "row_write_perm": p.get("row_write_perm"),
        }

    def _schema_create(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 201, self.tables.create_table(_str(p, "name"), **self._schema_args(p))

    def _schema_get(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, self.tables.get_table(_table({"table": p.get("id")}))

    def _schema_list(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, self.tables.list_tables(
            limit=_opt_int(p, "limit"), offset=_opt_int(p, "offset")
        )

    def _schema_update(self, p: dict[str, Any]) -> tuple[int, Any]:
        name = p.get("name")
        if name is not None and not isinstance(name, str):
            raise TableError(400, "name must be a string")
        table = self.tables.update_table(
            _table({"table": p.get("id")}), name=name, **self._schema_args(p)
        )
        return 200, table

    def _schema_delete(self, p: dict[str, Any]) -> tuple[int, Any]:
        self.tables.delete_table(_table({"table": p.get("id")}))
        return 204, ""

    # -- messaging and services -----------------------------------------------------------

    def _send(self, p: dict[str, Any]) -> tuple[int, Any]:
        kind = _str(p, "kind")
        if kind not in MESSAGE_KINDS:
            raise TableError(400, f"not supported by the local engine: message kind {kind!r:.40}")
        data = _obj(p, "data")
        if kind.endswith("_message") and kind != "sms_message":
            if data.get("recipient_type") not in _RECIPIENT_TYPES:
                raise TableError(400, f"invalid recipient_type: {data.get('recipient_type')!r:.40}")
            _str(data, "template_id")
        elif kind == "sms_message":
            _str(data, "template_name")
            if data.get("recipient_type") not in _RECIPIENT_TYPES:
                raise TableError(400, f"invalid recipient_type: {data.get('recipient_type')!r:.40}")
        elif kind == "email":
            for key in ("recipient", "subject", "body"):
                _str(data, key)
        self.outbox.record(kind, data)
        return 200, {"status": "ok"}

    def _sms_send_code(self, p: dict[str, Any]) -> tuple[int, Any]:
        phone = _str(p, "phone")
        code = f"{secrets.randbelow(10**6):06d}"
        self.outbox.record("sms_code", {**p, "phone": phone, "code": code})
        return 201, {"status": "ok"}

    def _sms_verify_code(self, p: dict[str, Any]) -> tuple[int, Any]:
        phone, code = _str(p, "phone"), p.get("code")
        sent = [m for m in self.outbox.messages("sms_code") if m["data"].get("phone") == phone]
        if not sent or str(sent[-1]["data"]["code"]) != str(code):
            raise TableError(400, f"invalid sms code for {phone}")
        return 201, {"status": "ok"}

    def _access_token(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"access_token": "local-" + secrets.token_hex(16), "expires_in": 5400}

    def _server_date(self, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"time": dt.datetime.now(_APP_TZ).isoformat()}

    async def _invoke(self, p: dict[str, Any]) -> dict[str, Any]:
        name = _str(p, "name")
        sync = _flag(p, "sync", True)
        if self.invoke is None:
            raise TableError(501, "not wired yet: BaaS.invoke (the engine has no invoker)")
        return {"status": 200, "data": await self.invoke(name, p.get("params"), sync)}
