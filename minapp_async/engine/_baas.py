"""The engine's side of the in-function ``BaaS``: data tables and the outbox on one dedicated
thread, nested ``BaaS.invoke`` through the job board, and the Python API tests use.

Every SQLite statement runs on the service's single "tables" thread, the only user of its
connection, so a slow query never blocks the event loop and no two statements interleave.
The Python API (``Engine.tables``, ``Engine.outbox``) hands its work to the same thread and
waits for it. ``service.tables.on_change`` (for table triggers) is called on that thread after
each committed write: hand the change to the event loop with ``call_soon_threadsafe``, never
wait on the loop there.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from .._logs import get_logger
from ._baas_ops import BaasOps, Outbox
from ._jobs import Job, JobBoard, QueueFull
from ._store import StoreError
from ._tables import USER_TABLE, TableError, Tables
from .runtime import FunctionFile

__all__ = ["TABLES_FILE", "BaasService", "EngineOutbox", "EngineTables"]

#: The schema file in the functions folder: tables (and seed rows) the engine creates at start.
TABLES_FILE: Final = "minapp.tables.json"
#: Nested BaaS.invoke calls deeper than this fail (400): a function calling itself forever.
MAX_INVOKE_DEPTH: Final = 8
#: Nested depths remembered, by job id (a nested job's own calls look theirs up).
_MAX_DEPTHS: Final = 10_000
#: How long the Python API waits for the tables thread (queries have their own 5 s deadline).
_API_TIMEOUT: Final = 30.0
#: A write waits this long for another connection's lock on the same file (the CLI, say).
_BUSY_TIMEOUT_MS: Final = 5000

T = TypeVar("T")
logger = get_logger("minapp_async.engine")


def _connect(state: str | Path) -> sqlite3.Connection:
    where = str(state)
    if where != ":memory:":
        Path(where).parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: opened here, then used only by the tables thread.
    db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    except BaseException:
        db.close()
        raise
    return db


class BaasService:
    """Answers functions' BaaS calls for one engine (see the module docstring).

    Args:
        state: The SQLite file the tables live in (the engine's state file), or ``":memory:"``.
        strict_tables: Unknown tables are a 404 and unknown fields a 400, as on the platform;
            by default a first write creates the table (and learns new fields).
    """

    def __init__(self, state: str | Path = ":memory:", *, strict_tables: bool = False) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="minapp-tables"
        )
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._executor.submit(_connect, state).result()
            self.tables = self._executor.submit(
                Tables, self._db, auto_create=not strict_tables
            ).result()
            self.outbox = self._executor.submit(Outbox, self._db).result()
            self._executor.submit(_ensure_user_table, self.tables).result()
        except BaseException:
            self.close()
            raise
        self.ops = BaasOps(self.tables, self.outbox)
        self._board: JobBoard | None = None
        self._locate: Callable[[str], FunctionFile | None] | None = None
        self._miniapp_id = 0
        self._memory_limit_mb = 0
        self._depths: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: The job whose BaaS call the tables thread is running (read by table triggers).
        self.writer: str | None = None
        #: Called on the loop with (caller job id, nested job id) for each nested invoke.
        self.on_nested: Callable[[str, str], None] | None = None

    def bind(
        self,
        board: JobBoard,
        locate: Callable[[str], FunctionFile | None],
        *,
        miniapp_id: int,
        memory_limit_mb: int,
    ) -> None:
        """Where nested invokes go: the engine's job board and function lookup."""
        self._board = board
        self._locate = locate
        self._miniapp_id = miniapp_id
        self._memory_limit_mb = memory_limit_mb

    def close(self) -> None:
        """Close the database (after the thread's last statement). Idempotent."""
        db, self._db = self._db, None
        if db is not None:
            self._executor.submit(db.close).result()
        self._executor.shutdown(wait=True)

    def add_user(self, profile: Mapping[str, Any]) -> None:
        """Mirror an app user into ``_userprofile`` (what ``BaaS.User`` reads). Queued on the
        tables thread, so a function called after the user exists sees the row."""
        with contextlib.suppress(RuntimeError):  # closed: the engine is stopping
            self._executor.submit(_upsert_user, self.tables, dict(profile))

    # -- the thread ----------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn* on the tables thread and await its result."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn* on the tables thread and wait for it (the Python API; bounded)."""
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError as exc:  # submit after shutdown
            raise RuntimeError("the engine's tables are closed") from exc
        return future.result(timeout=_API_TIMEOUT)

    # -- calls from functions ------------------------------------------------------------

    async def handle(self, context: Any, op: str, payload: Any) -> dict[str, Any]:
        """One call from a function (the runtime's BaasHandler)."""
        if op == "function.invoke":
            try:
                return await self._invoke(context, payload)
            except TableError as exc:
                return {"error": {"code": exc.status, "message": exc.message}}
        return await self.run(self._answer, context, op, payload)

    def _answer(self, context: Any, op: str, payload: Any) -> dict[str, Any]:
        # On the tables thread: `writer` names the calling job while its write runs, so the
        # table triggers (called back on this thread) know whose write it was.
        self.writer = context if isinstance(context, str) else None
        try:
            return self.ops.answer(op, payload)
        finally:
            self.writer = None

    async def _invoke(self, context: Any, p: Any) -> dict[str, Any]:
        if not isinstance(p, dict):
            raise TableError(400, "BaaS.invoke: the payload must be an object")
        name, params, sync = p.get("name"), p.get("params"), p.get("sync", True)
        if not isinstance(name, str) or not name:
            raise TableError(400, "BaaS.invoke: the function name must be a non-empty string")
        if not isinstance(sync, bool):
            raise TableError(400, "BaaS.invoke: sync must be true or false")
        board, locate = self._board, self._locate
        if board is None or locate is None:
            raise TableError(501, "not supported by the local engine: BaaS.invoke")
        caller = context if isinstance(context, str) else ""  # the calling job's id
        depth = self._depths.get(caller, 0) + 1
        if depth > MAX_INVOKE_DEPTH:
            raise TableError(
                400,
                f"BaaS.invoke({name!r:.60}): nested invokes are more than "
                f"{MAX_INVOKE_DEPTH} deep (does a function call itself forever?)",
            )
        function = locate(name)
        if function is None:
            raise TableError(404, f"cloud function {name!r:.60} not found")
        done = await self._run_nested(
            board, function, params, sync=sync, depth=depth, caller=caller
        )
        if done is None:
            return {"status": 200, "data": {"status": "ok"}}  # queued
        if done.result is not None:
            return {"status": 200, "data": done.result}
        # Platform failures (scheduling, time limit, a dead worker) are HTTP 400s there.
        raise TableError(400, done.error_msg or f"cloud function {name!r} failed")

    async def _run_nested(
        self,
        board: JobBoard,
        function: FunctionFile,
        params: Any,
        *,
        sync: bool,
        depth: int,
        caller: str,
    ) -> Job | None:
        """Run a nested job (sync: the finished job) or queue it (async: None). The job
        board's calls are all here: its API is the engine's, not ours."""
        # The job board keeps params as JSON text (queued async jobs stay small).
        data_json = _to_json(params)
        if not sync:
            try:
                board.admit(len(data_json))  # the async queue's bounds hold here too
            except (QueueFull, RuntimeError) as exc:
                raise TableError(503, str(exc)) from None
        try:
            job = board.create(function.name, sync=sync, source="cloud_function", request_id=caller)
        except RuntimeError as exc:  # shutting down
            if not sync:
                board.unadmit(len(data_json))
            raise TableError(503, str(exc)) from None
        self._depths[job.id] = depth  # before it runs: its own calls look it up
        if self.on_nested is not None:
            self.on_nested(caller, job.id)
        while len(self._depths) > _MAX_DEPTHS:  # the oldest entries are long finished
            self._depths.popitem(last=False)
        # Decision: the callee's event has no `request` (the docs leave open whether the
        # caller's user propagates); eventType is "cloud_function" as documented.
        event = _event(
            job,
            time_limit=board.time_limit(sync=sync),
            miniapp_id=self._miniapp_id,
            memory_limit_mb=self._memory_limit_mb,
        )
        if not sync:
            try:
                await board.accept(job, function, event, data_json)  # committed, then queued
            except (StoreError, RuntimeError) as exc:
                raise TableError(503, str(exc)) from None
            return None
        return await board.run_sync(job.id, function, event, data_json)

    # -- the schema file -----------------------------------------------------------------

    def load_schema_file(self, functions_dir: Path) -> None:
        """Create the tables ``minapp.tables.json`` lists (and seed their rows) unless they
        exist already; ValueError naming the file (and line) when it is malformed."""
        path = functions_dir / TABLES_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read it: {exc}") from None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {exc.lineno}: not valid JSON: {exc.msg}") from None
        self.run_blocking(_apply_schema, self.tables, spec, path)


#: The built-in fields of _userprofile rows (user.md), so strict_tables accepts them.
_USER_FIELDS: Final = [
    *(
        {"name": name, "type": "string"}
        for name in (
            "nickname",
            "avatar",
            "_username",
            "_email",
            "_phone",
            "city",
            "province",
            "country",
            "language",
            "openid",
            "unionid",
        )
    ),
    *(
        {"name": name, "type": "boolean"}
        for name in ("_email_verified", "_phone_verified", "_anonymous", "is_authorized")
    ),
    {"name": "gender", "type": "integer"},
    {"name": "_provider", "type": "object"},
]


def _event(job: Job, *, time_limit: float, miniapp_id: int, memory_limit_mb: int) -> dict[str, Any]:
    """A nested job's ``event``: the fields of PROTOCOL.md §7.2, ``eventType`` its source;
    its ``data`` is spliced in by the runtime from the job's JSON text."""
    return {
        "eventType": job.source,
        "jobId": job.id,
        "miniappId": miniapp_id,
        "timeLimitInMS": round(time_limit * 1000),
        "memoryLimitInMB": memory_limit_mb,
        "signKey": secrets.token_hex(16),  # stands in for BaaS.wxAccessToken()'s key
        "timezone": "Asia/Shanghai",
        "debug": False,
    }


_to_json: Final = json.JSONEncoder(separators=(",", ":")).encode


def _ensure_user_table(tables: Tables) -> None:
    # A system table on the platform: it exists even with strict_tables.
    with contextlib.suppress(TableError):
        tables.get_table(USER_TABLE)
        return
    tables.create_table(USER_TABLE, _USER_FIELDS)


def _upsert_user(tables: Tables, profile: dict[str, Any]) -> None:
    try:
        tables.import_records(USER_TABLE, [profile])
    except TableError:  # already there (a state file kept from an earlier run): refresh it
        try:
            fields = {k: v for k, v in profile.items() if k not in ("id", "created_at")}
            tables.update(USER_TABLE, profile["id"], fields, enable_trigger=False)
        except TableError:
            logger.exception("could not mirror user %s into %s", profile.get("id"), USER_TABLE)


def _bad(path: Path, message: str) -> ValueError:
    """A malformed file: the error names it."""
    return ValueError(f"{path}: {message}")


def _apply_schema(tables: Tables, spec: Any, path: Path) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("tables"), dict):
        raise _bad(path, 'expected {"tables": {"<name>": {"fields": [...], "rows": [...]}}}')
    existing = {t["name"] for t in tables.list_tables(limit=1000)["objects"]}
    for name, table in spec["tables"].items():
        if not isinstance(table, dict):
            raise _bad(path, f"table {name!r}: expected an object with fields/rows")
        unknown = set(table) - {"fields", "rows", "write_perm", "row_read_perm", "row_write_perm"}
        if unknown:
            raise ValueError(f"{path}: table {name!r}: unknown keys {sorted(unknown)}")
        if name in existing:
            continue  # a state file that outlives restarts keeps its tables and rows
        rows = table.get("rows", [])
        if not isinstance(rows, list):
            raise _bad(path, f"table {name!r}: rows must be a list of records")
        try:
            tables.create_table(
                name,
                table.get("fields", []),
                write_perm=table.get("write_perm"),
                row_read_perm=table.get("row_read_perm"),
                row_write_perm=table.get("row_write_perm"),
            )
            tables.import_records(name, rows)
        except TableError as exc:
            raise ValueError(f"{path}: table {name!r}: {exc.message}") from None


class EngineTables:
    """The engine's data tables from Python (tests, seeding): ``engine.tables``.

    Rows are plain dicts as functions see them. Unknown tables raise KeyError; bad input
    ValueError. Each call runs on the engine's tables thread and blocks until it is done
    (milliseconds; at most a function's running query, which has a 5 s deadline).
    """

    def __init__(self, service: BaasService) -> None:
        self._service = service

    def _do(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def call() -> T:
            try:
                return fn(*args, **kwargs)
            except TableError as exc:
                if exc.status == 404:
                    raise KeyError(exc.message) from None
                raise ValueError(exc.message) from None

        return self._service.run_blocking(call)

    def names(self) -> list[str]:
        """The tables, sorted by name."""
        listing = self._do(self._service.tables.list_tables, limit=1000)
        return sorted(t["name"] for t in listing["objects"])

    def create(self, name: str, fields: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Create a table (fields as ``BaaS.TableSchema`` takes them: name, type …)."""
        return self._do(self._service.tables.create_table, name, list(fields))

    def schema(self, table: str | int) -> dict[str, Any]:
        return self._do(self._service.tables.get_table, table)

    def seed(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows as given (ids and system fields kept, defaults filled), all or nothing;
        creates the table if it does not exist. Fires no triggers. Returns the count."""
        return self._do(self._service.tables.import_records, table, list(rows))

    def rows(self, table: str | int) -> list[dict[str, Any]]:
        """Every row of a table, oldest first."""
        return self._do(self._service.tables.export_records, table)

    def reset(self, table: str | int | None = None, *, drop: bool = False) -> None:
        """Delete a table's rows (or every table's); with drop=True the tables too (the
        system table ``_userprofile`` is then made again, empty)."""
        tables = self._service.tables

        def reset() -> None:
            tables.reset(table, drop=drop)
            _ensure_user_table(tables)

        self._do(reset)

    def import_jsonl(self, table: str, path: str | Path) -> int:
        """Seed from a JSON-lines file (one record per line)."""
        return self.seed(table, read_jsonl(Path(path)))

    def export_jsonl(self, table: str | int, path: str | Path) -> int:
        """Write every row to a JSON-lines file; returns the count."""
        rows = self.rows(table)
        write_jsonl(Path(path), rows)
        return len(rows)


class EngineOutbox:
    """Messages functions sent (template/subscribe messages, SMS, email): ``engine.outbox``.
    Nothing leaves the machine; each message is ``{seq, kind, data, created_at}``."""

    def __init__(self, service: BaasService) -> None:
        self._service = service

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; *kind* filters, e.g. ``"wechat.template_message"``, ``"email"``."""
        return self._service.run_blocking(self._service.outbox.messages, kind)

    def clear(self) -> None:
        self._service.run_blocking(self._service.outbox.clear)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON-lines file; ValueError naming the file and line when malformed."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise _bad(path, f"line {number}: a record must be a JSON object")
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
