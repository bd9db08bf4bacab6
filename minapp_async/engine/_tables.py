"""MinApp data tables in SQLite: records as JSON documents, queried with the platform's `where`.

All tables share one records table (a `tbl` column), so creating and dropping a MinApp table is
a row in `baas_tables`, never DDL, and the store can live in the engine's state database. A
`where` document is translated into SQL whose every user value, field path and regex is a bound
parameter: field names are checked against the platform's key pattern first, and the query's
depth and size are bounded, so a hostile query costs a 400, never an injection or a hang.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

#: `limit` as documented: 20 by default, at most 1000 (also the batch size cap).
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 1000
#: Bounds on a `where` document: nesting of $and/$or, number of conditions, `$in` list size.
MAX_DEPTH: Final = 8
MAX_CONDITIONS: Final = 500
MAX_LIST: Final = 1000
MAX_REGEX: Final = 500
#: A read slower than this is interrupted (a 400): the store shares the engine's event loop.
QUERY_SECONDS: Final = 5.0
#: A quantified group that holds a quantifier, like `(a+)+`: the classic catastrophic pattern.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]")
#: The platform's pattern for table fields and object keys; dots join nested keys.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TABLE_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_RECORD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
USER_TABLE: Final = "_userprofile"
SYSTEM_FIELDS: Final = frozenset({"id", "_id", "created_at", "updated_at", "created_by"})
FIELD_TYPES: Final = frozenset(
    {
        "string",
        "integer",
        "number",
        "boolean",
        "object",
        "array",
        "date",
        "file",
        "geojson",
        "pointer",
    }
)
_SCALAR_OPS: Final = {"$eq": "=", "$ne": "!=", "$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}
_DDL: Final = """
CREATE TABLE IF NOT EXISTS baas_tables (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS baas_records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl INTEGER NOT NULL,
    rid TEXT NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (tbl, rid)
);
CREATE INDEX IF NOT EXISTS baas_records_tbl ON baas_records (tbl, seq);
"""


class TableError(Exception):
    """A failed table operation, with the HTTP-like status the platform would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class Change:
    """One committed write, for trigger wiring: `before` is None on create, `after` on delete."""

    event: str  # "create" | "update" | "delete"
    table: str
    table_id: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    enable_trigger: bool


@attrs.define
class _Table:
    """A table's row in baas_tables: `meta` holds fields, write_perm and default_row_perm."""

    id: int
    name: str
    meta: dict[str, Any]

    @property
    def types(self) -> dict[str, str]:
        """Field name → stored type (the schema's `reference` is a pointer)."""
        out: dict[str, str] = {}
        for field in self.meta["fields"]:
            kind = field["type"]
            out[field["name"]] = "pointer" if kind == "reference" else kind
        return out


def _check_fields(
    fields: Iterable[Mapping[str, Any]], current: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Validated field metadata merged over `current` by name (a copy)."""
    out = {f["name"]: f for f in current}
    if isinstance(fields, (str, bytes, Mapping)):
        raise TableError(400, "schema fields must be a list of field objects")
    for field in fields:
        if not isinstance(field, Mapping):
            raise TableError(400, f"a field must be an object, not {field!r:.60}")
        fname, kind = field.get("name"), field.get("type")
        if not isinstance(fname, str) or not _KEY.match(fname) or fname in SYSTEM_FIELDS:
            raise TableError(400, f"invalid field name: {fname!r:.60}")
        if kind not in FIELD_TYPES and kind != "reference":
            raise TableError(400, f"invalid type {kind!r:.30} for field {fname!r}")
        if "default" in field and not type_fits(
            "pointer" if kind == "reference" else str(kind), field["default"]
        ):
            raise TableError(400, f"the default of field {fname!r} is not a {kind}")
        out[fname] = {"description": fname, **json.loads(json.dumps(dict(field)))}
    return list(out.values())


def _perms(value: Sequence[str] | None, default: list[str]) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TableError(400, f"a permission list must be a list of strings, not {value!r:.60}")
    return list(value)


def _now() -> int:
    return int(time.time())


def _dumps(value: Any) -> str:
    # Sorted keys and no spaces: the same text SQLite's json() yields, so `=` on objects works.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _field_path(field: Any, what: str = "field") -> str:
    """`a.b` → the JSON path `$.a.b`, after checking every part against the key pattern."""
    if not isinstance(field, str) or not field or len(field) > 200:
        raise TableError(400, f"invalid {what} name: {field!r}")
    parts = field.split(".")
    if len(parts) > 5 or not all(_KEY.match(p) for p in parts):
        raise TableError(400, f"invalid {what} name: {field!r}")
    return "$." + ".".join(parts)


def infer_type(value: Any) -> str | None:
    """The field type a first write implies (None for null: nothing to learn)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"  # not "integer": a later 12.5 must not be dropped as mistyped
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        if "_table" in value and "id" in value:
            return "pointer"
        if value.get("type") in ("Point", "Polygon") and "coordinates" in value:
            return "geojson"
        return "object"
    return None


def type_fits(kind: str, value: Any) -> bool:
    """Whether a value may be stored in a field of this type (null fits every type)."""
    if value is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("string", "date"):
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind in ("object", "geojson"):
        return isinstance(value, dict)
    if kind == "pointer":
        return isinstance(value, (dict, str, int)) and not isinstance(value, bool)
    return True  # file: an id or a file object


class _Where:
    """Translates one `where` document into SQL text plus bound parameters."""

    def __init__(self) -> None:
        self.params: list[Any] = []
        self.conditions = 0

    def build(self, where: Any) -> str:
        if where is None or where == {}:
            return "1"
        return self._node(where, 0)

    def _node(self, node: Any, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise TableError(400, f"query nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            raise TableError(400, f"a query condition must be an object, not {node!r:.60}")
        self._tick()  # nodes count too, so a list of a million `{}` is refused
        parts: list[str] = []
        for key, value in node.items():
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise TableError(400, f"{key} takes a non-empty list of conditions")
                subs = [self._node(v, depth + 1) for v in value]
                joiner = " AND " if key == "$and" else " OR "
                parts.append("(" + joiner.join(subs) + ")")
            else:
                path = _field_path(key)
                if isinstance(value, dict) and value and all(str(k).startswith("$") for k in value):
                    for op, arg in value.items():
                        if op == "$regex":  # {"$regex": p, "$options": "i"}, as the SDK sends
                            both = {"$regex": arg, "$options": value.get("$options", "")}
                            parts.append(self._condition(key, path, op, both))
                        elif op != "$options" or "$regex" not in value:
                            parts.append(self._condition(key, path, op, arg))
                else:  # a bare value means equality
                    parts.append(self._condition(key, path, "$eq", value))
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def _bind(self, *values: Any) -> None:
        self.params.extend(values)

    def _value_expr(self, path: str) -> str:
        # A pointer {id, _table} compares by its id, as the platform's pointer queries do.
        self._bind(path + "._table", path + ".id", path)
        return (
            "(CASE WHEN json_type(doc, ?) = 'text' THEN json_extract(doc, ?) "
            "ELSE json_extract(doc, ?) END)"
        )

    def _tick(self) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise TableError(400, f"query has more than {MAX_CONDITIONS} conditions")

    def _condition(self, field: str, path: str, op: str, arg: Any) -> str:
        self._tick()
        if op in _SCALAR_OPS:
            return self._compare(field, path, op, arg)
        if op in ("$contains", "$icontains"):
            if not isinstance(arg, str):
                raise TableError(400, f"{op} on {field!r} takes a string")
            fn = "instr" if op == "$contains" else "baas_icontains"
            self._bind(path, path, arg)
            return f"(json_type(doc, ?) = 'text' AND {fn}(json_extract(doc, ?), ?) > 0)"
        if op == "$regex":
            return self._regex(field, path, arg, "")
        if op in ("$in", "$nin"):
            values = self._list(field, op, arg)
            # An array field matches when it shares a value; a scalar when it is one of them.
            self._bind(path, path, values)
            arr = (
                "EXISTS (SELECT 1 FROM json_each(doc, ?) e "
                "WHERE e.value IN (SELECT value FROM json_each(?)))"
            )
            val = self._value_expr(path)
            self._bind(values)
            scalar = f"coalesce({val} IN (SELECT value FROM json_each(?)), 0)"
            expr = f"(CASE WHEN json_type(doc, ?) = 'array' THEN {arr} ELSE {scalar} END)"
            return expr if op == "$in" else f"(NOT {expr})"
        if op == "$all":
            values = self._list(field, op, arg)
            self._bind(path, values, path)
            return (
                "(json_type(doc, ?) = 'array' AND NOT EXISTS (SELECT 1 FROM json_each(?) w "
                "WHERE w.value NOT IN (SELECT e.value FROM json_each(doc, ?) e)))"
            )
        if op == "$isnull":
            if not isinstance(arg, bool):
                raise TableError(400, f"$isnull on {field!r} takes true or false")
            self._bind(path)
            null = "coalesce(json_type(doc, ?), 'null') = 'null'"
            return f"({null})" if arg else f"(NOT {null})"
        if op == "$exists":
            if not isinstance(arg, bool):
                raise TableError(400, f"$exists on {field!r} takes true or false")
            self._bind(path)
            present = "coalesce(json_type(doc, ?), 'null') != 'null'"
            return f"({present})" if arg else f"(NOT {present})"
        if op == "$has_key":
            if not isinstance(arg, str) or not _KEY.match(arg):
                raise TableError(400, f"$has_key on {field!r} takes a key name, not {arg!r:.60}")
            self._bind(path, path + "." + arg)
            return "(json_type(doc, ?) = 'object' AND json_type(doc, ?) IS NOT NULL)"
        if op in ("$intersects", "$within", "$center", "$nearsphere", "$range"):
            raise TableError(400, f"query operator {op} is not supported by the local engine")
        raise TableError(400, f"unknown query operator {op!r:.40} on {field!r}")

    def _compare(self, field: str, path: str, op: str, arg: Any) -> str:
        sql_op = _SCALAR_OPS[op]
        if arg is None:
            if op not in ("$eq", "$ne"):
                raise TableError(400, f"{op} on {field!r} cannot compare with null")
            self._bind(path)
            null = "coalesce(json_type(doc, ?), 'null') = 'null'"
            return f"({null})" if op == "$eq" else f"(NOT {null})"
        if isinstance(arg, (dict, list)):
            if op not in ("$eq", "$ne"):
                raise TableError(400, f"{op} on {field!r} takes a number, string or date")
            # Exact match of arrays and objects: compare canonical JSON text.
            self._bind(path, path, _dumps(arg))
            same = "(json_type(doc, ?) IN ('array', 'object') AND json_extract(doc, ?) = json(?))"
            return same if op == "$eq" else f"(NOT coalesce({same}, 0))"
        if isinstance(arg, bool):
            kinds = "('true', 'false')"
        elif isinstance(arg, (int, float)):
            kinds = "('integer', 'real')"
        elif isinstance(arg, str):
            kinds = "('text')"
        else:
            raise TableError(400, f"cannot compare {field!r} with {arg!r:.60}")
        if isinstance(arg, str) and op in ("$eq", "$ne"):
            val = self._value_expr(path)  # a string may name a pointer's target
            self._bind(arg)
            same = f"coalesce({val} = ?, 0)"
        else:
            self._bind(path, path, arg)
            cmp = "=" if op == "$ne" else sql_op
            same = f"(json_type(doc, ?) IN {kinds} AND json_extract(doc, ?) {cmp} ?)"
        return f"(NOT coalesce({same}, 0))" if op == "$ne" else same

    def _regex(self, field: str, path: str, arg: Any, options: str) -> str:
        if isinstance(arg, dict):
            options = arg.get("$options", "")
            arg = arg.get("$regex")
        if not isinstance(arg, str) or not isinstance(options, str):
            raise TableError(400, f"$regex on {field!r} takes a pattern string")
        if len(arg) > MAX_REGEX:
            raise TableError(400, f"$regex pattern on {field!r} is longer than {MAX_REGEX}")
        if _NESTED_QUANTIFIER.search(arg):
            raise TableError(400, f"$regex pattern on {field!r} nests quantifiers (too slow)")
        try:
            re.compile(arg, _regex_flags(options))
        except re.error as exc:
            raise TableError(400, f"bad $regex pattern on {field!r}: {exc}") from None
        self._bind(path, path, arg, options)
        return "(json_type(doc, ?) = 'text' AND baas_regexp(json_extract(doc, ?), ?, ?))"

    def _list(self, field: str, op: str, arg: Any) -> str:
        if not isinstance(arg, list):
            raise TableError(400, f"{op} on {field!r} takes a list")
        if len(arg) > MAX_LIST:
            raise TableError(400, f"{op} on {field!r} has more than {MAX_LIST} values")
        if not all(v is None or isinstance(v, (str, int, float)) for v in arg):
            raise TableError(400, f"{op} on {field!r} takes a list of strings or numbers")
        return _dumps(arg)


def check_where(where: Any) -> None:
    """Raise TableError (400) if *where* is not a query the store accepts."""
    _Where().build(where)


def _regex_flags(options: str) -> int:
    flags = 0
    for ch in options:
        if ch == "i":
            flags |= re.IGNORECASE
        elif ch == "m":
            flags |= re.MULTILINE
        elif ch == "s":
            flags |= re.DOTALL
        elif ch not in "guy":  # JS flags with no meaning for a single match
            raise re.error(f"unknown regex option {ch!r}")
    return flags


def _sql_regexp(value: Any, pattern: str, options: str) -> int:
    if not isinstance(value, str):
        return 0
    return 1 if re.search(pattern, value, _regex_flags(options)) else 0


def _sql_icontains(value: Any, needle: str) -> int:
    if not isinstance(value, str):
        return 0
    return value.casefold().find(needle.casefold()) + 1


def _order_sql(order_by: str | Sequence[str] | None) -> tuple[str, list[Any]]:
    keys = [order_by] if isinstance(order_by, str) else list(order_by or [])
    if not keys:
        keys = ["-created_at"]
    if len(keys) > 10:
        raise TableError(400, "orderBy takes at most 10 fields")
    parts: list[str] = []
    params: list[Any] = []
    desc = False
    for key in keys:
        if not isinstance(key, str):
            raise TableError(400, f"invalid orderBy field: {key!r:.60}")
        desc = key.startswith("-")
        params.append(_field_path(key[1:] if desc else key, "orderBy field"))
        parts.append("json_extract(doc, ?)" + (" DESC" if desc else ""))
    # Rows alike on every key keep insertion order, in the direction of the last key.
    parts.append("seq DESC" if desc else "seq")
    return ", ".join(parts), params


def _check_page(limit: Any, offset: Any) -> tuple[int, int]:
    limit = DEFAULT_LIMIT if limit is None else limit
    offset = 0 if offset is None else offset
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_LIMIT:
        raise TableError(400, f"limit must be an integer from 0 to {MAX_LIMIT}, not {limit!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise TableError(400, f"offset must be a non-negative integer, not {offset!r}")
    return limit, offset


def _set_path(doc: dict[str, Any], field: str, value: Any) -> None:
    parts = field.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _get_path(doc: Mapping[str, Any], field: str) -> Any:
    node: Any = doc
    for part in field.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _del_path(doc: dict[str, Any], field: str) -> None:
    parts = field.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def apply_update(doc: dict[str, Any], update: Mapping[str, Any]) -> list[str]:
    """Apply a REST-style update document in place; return the fields that changed.

    A plain value sets the field; `{"$op": arg}` is an atomic op: `$unset`, `$incr_by`,
    `$append`, `$append_unique`, `$remove`, `$update` (shallow object merge), `$pop`, `$shift`.
    """
    if not isinstance(update, Mapping):
        raise TableError(400, "an update must be an object of fields")
    changed: list[str] = []
    for field, spec in update.items():
        _field_path(field)
        if field in ("id", "_id"):
            continue
        if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)).startswith("$"):
            op, arg = next(iter(spec.items()))
            _apply_op(doc, field, op, arg)
        else:
            _set_path(doc, field, spec)
        changed.append(field)
    return changed


def _apply_op(doc: dict[str, Any], field: str, op: str, arg: Any) -> None:
    current = _get_path(doc, field)
    if op == "$unset":
        _del_path(doc, field)
    elif op == "$incr_by":
        if not isinstance(arg, (int, float)) or isinstance(arg, bool):
            raise TableError(400, f"incrementBy on {field!r} takes a number")
        if current is None:
            current = 0
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise TableError(400, f"incrementBy on {field!r}: the field is not a number")
        _set_path(doc, field, current + arg)
    elif op in ("$append", "$append_unique", "$remove"):
        items = arg if isinstance(arg, list) else [arg]
        if current is None:
            current = []
        if not isinstance(current, list):
            raise TableError(400, f"{op[1:]} on {field!r}: the field is not an array")
        if op == "$append":
            result = current + items
        elif op == "$append_unique":
            result = list(current)
            for item in items:
                if item not in result:
                    result.append(item)
        else:
            result = [x for x in current if x not in items]
        _set_path(doc, field, result)
    elif op in ("$pop", "$shift"):
        if current is None:
            return
        if not isinstance(current, list):
            raise TableError(400, f"{op[1:]} on {field!r}: the field is not an array")
        _set_path(doc, field, current[:-1] if op == "$pop" else current[1:])
    elif op == "$update":
        if not isinstance(arg, dict) or not all(isinstance(k, str) and _KEY.match(k) for k in arg):
            raise TableError(400, f"patchObject on {field!r} takes an object with plain keys")
        if current is None:
            current = {}
        if not isinstance(current, dict):
            raise TableError(400, f"patchObject on {field!r}: the field is not an object")
        _set_path(doc, field, {**current, **arg})
    else:
        raise TableError(400, f"unknown update operator {op!r:.40} on {field!r}")


def _select(row: dict[str, Any], select: str | Sequence[str] | None) -> dict[str, Any]:
    keys = [select] if isinstance(select, str) else list(select or [])
    if not keys:
        return row
    for key in keys:
        if not isinstance(key, str):
            raise TableError(400, f"invalid select field: {key!r:.60}")
        _field_path(key.lstrip("-"), "select field")
    excluded = [k[1:] for k in keys if k.startswith("-")]
    included = [k for k in keys if not k.startswith("-")]
    if excluded and included:
        return row  # documented: mixing the two forms is ignored
    if excluded:
        drop = {k.split(".")[0] for k in excluded}
        return {k: v for k, v in row.items() if k not in drop}
    out: dict[str, Any] = {}
    for key in included:
        top, _, rest = key.partition(".")
        if top not in row:
            continue
        if rest and isinstance(row[top], dict):
            sub = out.setdefault(top, {})
            if isinstance(sub, dict):
                sub[rest] = _get_path(row[top], rest)
        else:
            out[top] = row[top]
    return out


class Tables:
    """The data tables of one app, kept in an SQLite database.

    Args:
        db: an open sqlite3 connection (shared, e.g. the engine's state database) or a path.
        auto_create: a first write to an unknown table creates it (and unknown fields are
            added to its schema); False makes unknown tables a 404 and unknown fields a 400,
            as on the platform where tables are made in the console.
        on_change: called after each committed write, for table triggers.
    """

    def __init__(
        self,
        db: sqlite3.Connection | str | Path,
        *,
        auto_create: bool = True,
        on_change: Callable[[Change], None] | None = None,
    ) -> None:
        if isinstance(db, sqlite3.Connection):
            self._db = db
            self._owned = False
        else:
            self._db = sqlite3.connect(str(db), isolation_level=None)
            self._owned = True
        self.auto_create = auto_create
        self.on_change = on_change
        try:
            self._db.create_function("baas_regexp", 3, _sql_regexp, deterministic=True)
            self._db.create_function("baas_icontains", 2, _sql_icontains, deterministic=True)
            self._db.executescript(_DDL)
        except BaseException:
            self.close()  # a connection opened here is not left to the garbage collector
            raise

    def close(self) -> None:
        if self._owned:
            self._db.close()

    # -- transactions -------------------------------------------------------------------

    def _txn(self) -> _Txn:
        return _Txn(self._db)

    # -- schema ---------------------------------------------------------------------------

    def _table_row(self, table: str | int) -> _Table | None:
        if isinstance(table, bool) or not isinstance(table, (str, int)):
            raise TableError(400, f"invalid table name: {table!r:.60}")
        if isinstance(table, int) or table.isdigit():
            cur = self._db.execute(
                "SELECT id, name, meta FROM baas_tables WHERE id = ?", (int(table),)
            )
        else:
            cur = self._db.execute(
                "SELECT id, name, meta FROM baas_tables WHERE name = ?", (table,)
            )
        found = cur.fetchone()
        if found is None:
            return None
        return _Table(int(found[0]), str(found[1]), dict(json.loads(found[2])))

    def _resolve(self, table: str | int, *, write: bool) -> _Table:
        found = self._table_row(table)
        if found is not None:
            return found
        if write and self.auto_create and isinstance(table, str) and not table.isdigit():
            self.create_table(table)
            found = self._table_row(table)
            assert found is not None
            return found
        raise TableError(404, f"table not found: {table!r}")

    def create_table(
        self,
        name: str,
        fields: Iterable[Mapping[str, Any]] = (),
        *,
        write_perm: Sequence[str] | None = None,
        row_read_perm: Sequence[str] | None = None,
        row_write_perm: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create a table (fields as in the schema docs: name, type, default, constraints…).

        400 if the name is taken or invalid, or a field is malformed.
        """
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise TableError(400, f"invalid table name: {name!r:.60}")
        anyone = ["user:anonymous"]
        meta = {
            "fields": _check_fields(fields, []),
            "write_perm": _perms(write_perm, anyone),
            "default_row_perm": {
                "_read_perm": _perms(row_read_perm, anyone),
                "_write_perm": _perms(row_write_perm, anyone),
            },
        }
        now = _now()
        try:
            with self._txn():
                self._db.execute(
                    "INSERT INTO baas_tables (name, meta, created_at, updated_at) VALUES (?,?,?,?)",
                    (name, json.dumps(meta), now, now),
                )
        except sqlite3.IntegrityError:
            raise TableError(400, f"table already exists: {name!r}") from None
        return self.get_table(name)

    def get_table(self, table: str | int) -> dict[str, Any]:
        """The table as `TableSchema.getSchema` documents it."""
        found = self._table_row(table)
        if found is None:
            raise TableError(404, f"table not found: {table!r}")
        row = self._db.execute(
            "SELECT created_at, updated_at FROM baas_tables WHERE id = ?", (found.id,)
        ).fetchone()
        return {
            "id": found.id,
            "name": found.name,
            "protected_fields": None,
            "schema": {"fields": found.meta["fields"]},
            "write_perm": found.meta["write_perm"],
            "default_row_perm": found.meta["default_row_perm"],
            "created_at": row[0],
            "updated_at": row[1],
        }

    def list_tables(self, *, limit: int | None = None, offset: int | None = None) -> dict[str, Any]:
        """`{meta, objects}` as `TableSchema.getSchemaList` documents it (oldest first)."""
        lim, off = _check_page(limit, offset)
        total = int(self._db.execute("SELECT count(*) FROM baas_tables").fetchone()[0])
        ids = self._db.execute(
            "SELECT id FROM baas_tables ORDER BY id LIMIT ? OFFSET ?", (lim, off)
        ).fetchall()
        meta = {
            "limit": lim,
            "offset": off,
            "next": f"/dserve/v2.4/schema/?limit={lim}&offset={off + lim}"
            if off + lim < total
            else None,
            "previous": f"/dserve/v2.4/schema/?limit={lim}&offset={max(off - lim, 0)}"
            if off > 0
            else None,
            "total_count": total,
        }
        return {"meta": meta, "objects": [self.get_table(int(r[0])) for r in ids]}

    def update_table(
        self,
        table: str | int,
        *,
        name: str | None = None,
        fields: Iterable[Mapping[str, Any]] = (),
        write_perm: Sequence[str] | None = None,
        row_read_perm: Sequence[str] | None = None,
        row_write_perm: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Rename a table, add or replace fields (matched by name), change permissions."""
        found = self._resolve(table, write=False)
        meta = found.meta
        meta["fields"] = _check_fields(fields, meta["fields"])
        meta["write_perm"] = _perms(write_perm, meta["write_perm"])
        rows = meta["default_row_perm"]
        rows["_read_perm"] = _perms(row_read_perm, rows["_read_perm"])
        rows["_write_perm"] = _perms(row_write_perm, rows["_write_perm"])
        new = found.name if name is None else name
        if not isinstance(new, str) or not _TABLE_NAME.match(new):
            raise TableError(400, f"invalid table name: {new!r:.60}")
        try:
            with self._txn():
                self._db.execute(
                    "UPDATE baas_tables SET name = ?, meta = ?, updated_at = ? WHERE id = ?",
                    (new, json.dumps(meta), _now(), found.id),
                )
        except sqlite3.IntegrityError:
            raise TableError(400, f"table already exists: {new!r}") from None
        return self.get_table(found.id)

    def delete_table(self, table: str | int) -> None:
        found = self._resolve(table, write=False)
        with self._txn():
            self._db.execute("DELETE FROM baas_records WHERE tbl = ?", (found.id,))
            self._db.execute("DELETE FROM baas_tables WHERE id = ?", (found.id,))

    def _learn_fields(self, table: _Table, row: Mapping[str, Any]) -> None:
        """Unknown fields: add them to the schema (auto_create) or refuse them."""
        known = table.types
        new: list[dict[str, Any]] = []
        for key, value in row.items():
            if key in SYSTEM_FIELDS or key in known or key in ("read_perm", "write_perm"):
                continue
            if not self.auto_create:
                raise TableError(400, f"unknown field {key!r} (the table has no such column)")
            kind = infer_type(value)
            if kind is not None:
                new.append({"name": key, "type": kind, "description": key})
        if new:
            table.meta["fields"].extend(new)
            self._db.execute(
                "UPDATE baas_tables SET meta = ? WHERE id = ?", (json.dumps(table.meta), table.id)
            )

    # -- records --------------------------------------------------------------------------

    def _new_id(self, table: _Table, given: Any) -> tuple[str, Any]:
        if table.name != USER_TABLE and given is not None:  # an imported record keeps its id
            if not isinstance(given, str) or not _RECORD_ID.match(given):
                raise TableError(400, f"invalid record id: {given!r:.60}")
            return given, None
        if table.name == USER_TABLE:
            if given is None:
                top = self._db.execute(
                    "SELECT max(CAST(rid AS INTEGER)) FROM baas_records WHERE tbl = ?", (table.id,)
                ).fetchone()[0]
                given = int(top or 0) + 1
            if not isinstance(given, int) or isinstance(given, bool) or given <= 0:
                raise TableError(400, f"a user id is a positive integer, not {given!r:.40}")
            return str(given), given
        return secrets.token_hex(12), None

    def _prepare(self, table: _Table, data: Any, *, keep_id: bool = False) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise TableError(400, "a record must be an object of fields")
        given_id = data.get("id") if table.name == USER_TABLE or keep_id else None
        row: dict[str, Any] = {}
        apply_update(row, {k: v for k, v in data.items() if k not in ("id", "_id")})
        types = table.types
        for key in [k for k, v in row.items() if k in types and not type_fits(types[k], v)]:
            del row[key]  # documented: a mistyped field is dropped on create
        for field in table.meta["fields"]:
            fname = field["name"]
            if row.get(fname) is None and "default" in field:
                row[fname] = field["default"]
            required = isinstance(field.get("constraints"), dict) and field["constraints"].get(
                "required"
            )
            if required and row.get(fname) is None:
                raise TableError(400, f"field {fname!r} is required")
        self._learn_fields(table, row)
        rid, int_id = self._new_id(table, given_id)
        now = _now()
        row["id"] = int_id if int_id is not None else rid
        row.setdefault("created_at", now)
        row.setdefault("updated_at", now)
        row.setdefault("created_by", None)
        if table.name != USER_TABLE:
            perms = table.meta["default_row_perm"]
            row.setdefault("read_perm", list(perms["_read_perm"]))
            row.setdefault("write_perm", list(perms["_write_perm"]))
        return row

    def _insert(self, tid: int, row: dict[str, Any]) -> None:
        try:
            self._db.execute(
                "INSERT INTO baas_records (tbl, rid, doc) VALUES (?,?,?)",
                (tid, str(row["id"]), _dumps(row)),
            )
        except sqlite3.IntegrityError:
            raise TableError(400, f"record already exists: {row['id']!r}") from None

    def _emit(self, change: Change) -> None:
        if self.on_change is not None:
            self.on_change(change)

    def create(self, table: str | int, data: Mapping[str, Any]) -> dict[str, Any]:
        """Create one record; returns the stored row (201 on the platform)."""
        with self._txn():
            t = self._resolve(table, write=True)
            tid, name = t.id, t.name
            row = self._prepare(t, data)
            self._insert(tid, row)
        self._emit(Change("create", name, tid, None, _out(row), True))
        return _out(row)

    def create_many(
        self, table: str | int, items: Sequence[Any], *, enable_trigger: bool = True
    ) -> dict[str, Any]:
        """Batch create (≤1000); each item succeeds or fails alone, as documented."""
        if not isinstance(items, list) or not items:
            raise TableError(400, "createMany takes a non-empty list of records")
        if len(items) > MAX_LIMIT:
            raise TableError(400, f"createMany takes at most {MAX_LIMIT} records")
        results: list[dict[str, Any]] = []
        made: list[dict[str, Any]] = []
        with self._txn():
            t = self._resolve(table, write=True)
            tid, name = t.id, t.name
            for item in items:
                try:
                    row = self._prepare(t, item)
                    self._insert(tid, row)
                except TableError as exc:
                    results.append({"error": {"code": exc.status, "err_msg": exc.message}})
                    continue
                made.append(row)
                results.append({"success": {"id": row["id"], "created_at": row["created_at"]}})
        for row in made:
            self._emit(Change("create", name, tid, None, _out(row), enable_trigger))
        return {"succeed": len(made), "total_count": len(items), "operation_result": results}

    def _load(self, tid: int, rid: Any) -> dict[str, Any] | None:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or len(str(rid)) > 64:
            raise TableError(400, f"invalid record id: {rid!r:.60}")
        found = self._db.execute(
            "SELECT doc FROM baas_records WHERE tbl = ? AND rid = ?", (tid, str(rid))
        ).fetchone()
        return None if found is None else dict(json.loads(found[0]))

    def get(
        self,
        table: str | int,
        record_id: str | int,
        *,
        select: str | Sequence[str] | None = None,
        expand: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        t = self._resolve(table, write=False)
        tid, name = t.id, t.name
        row = self._load(tid, record_id)
        if row is None:
            raise TableError(404, f"record not found: {record_id!r} in table {name!r}")
        return _select(self._expand(_out(row), expand), select)

    def _query(
        self,
        tid: int,
        where: Any,
        limit: int,
        offset: int,
        order_by: str | Sequence[str] | None,
        extra: int = 0,
    ) -> list[tuple[int, dict[str, Any]]]:
        builder = _Where()
        cond = builder.build(where)
        order, order_params = _order_sql(order_by)
        sql = (
            f"SELECT seq, doc FROM baas_records WHERE tbl = ? AND {cond} "
            f"ORDER BY {order} LIMIT ? OFFSET ?"
        )
        params = [tid, *builder.params, *order_params, limit + extra, offset]
        rows = self._select_rows(sql, params)
        return [(int(seq), dict(json.loads(doc))) for seq, doc in rows]

    def _select_rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run a read with a deadline, so one query cannot stall the engine's event loop."""
        deadline = time.monotonic() + QUERY_SECONDS
        self._db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise TableError(400, f"query took longer than {QUERY_SECONDS} s") from None
            raise TableError(400, f"bad query: {exc}") from None
        finally:
            self._db.set_progress_handler(None, 0)

    def count(self, table: str | int, where: Any = None) -> int:
        tid = self._resolve(table, write=False).id
        builder = _Where()
        cond = builder.build(where)
        found = self._select_rows(
            f"SELECT count(*) FROM baas_records WHERE tbl = ? AND {cond}", [tid, *builder.params]
        )
        return int(found[0][0])

    def matches(self, where: Any, row: Mapping[str, Any]) -> bool:
        """Whether *row* (a record, not stored) satisfies the query *where* (table triggers'
        conditions use the same query language as ``find``)."""
        builder = _Where()
        cond = builder.build(where)
        found = self._select_rows(
            f"SELECT {cond} FROM (SELECT ? AS doc)", [*builder.params, _dumps(dict(row))]
        )
        return bool(found[0][0])

    def find(
        self,
        table: str | int,
        where: Any = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
        order_by: str | Sequence[str] | None = None,
        select: str | Sequence[str] | None = None,
        expand: str | Sequence[str] | None = None,
        with_count: bool = False,
    ) -> dict[str, Any]:
        """`{meta, objects}` as the platform lists records; total_count only if with_count."""
        t = self._resolve(table, write=False)
        tid, name = t.id, t.name
        lim, off = _check_page(limit, offset)
        rows = self._query(tid, where, lim, off, order_by, extra=1)
        more = len(rows) > lim
        objects = [_select(self._expand(_out(r), expand), select) for _, r in rows[:lim]]
        meta: dict[str, Any] = {
            "limit": lim,
            "offset": off,
            "next": _page_link(name, lim, off + lim) if more else None,
            "previous": _page_link(name, lim, max(off - lim, 0)) if off > 0 else None,
        }
        if with_count:
            meta["total_count"] = self.count(tid, where)
        return {"meta": meta, "objects": objects}

    def _expand(self, row: dict[str, Any], expand: str | Sequence[str] | None) -> dict[str, Any]:
        keys = [expand] if isinstance(expand, str) else list(expand or [])
        for key in keys:
            if not isinstance(key, str):
                raise TableError(400, f"invalid expand field: {key!r:.60}")
            _field_path(key, "expand field")
            value = row.get(key)
            if key == "created_by" and isinstance(value, int) and not isinstance(value, bool):
                user = self._lookup(USER_TABLE, value) or {}
                row[key] = {
                    "id": value,
                    "nickname": user.get("nickname", ""),
                    "avatar": user.get("avatar", ""),
                }
            elif isinstance(value, dict) and "_table" in value and "id" in value:
                target = self._lookup(value["_table"], value["id"])
                if target is not None:
                    row[key] = {**target, "_table": value["_table"]}
        return row

    def _lookup(self, table: Any, rid: Any) -> dict[str, Any] | None:
        if not isinstance(table, (str, int)):
            return None
        found = self._table_row(table)
        if found is None:
            return None
        row = self._load(found.id, rid)
        return None if row is None else _out(row)

    def _save(self, tid: int, row: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE baas_records SET doc = ? WHERE tbl = ? AND rid = ?",
            (_dumps(row), tid, str(row["id"])),
        )

    def _apply(self, t: _Table, row: dict[str, Any], update: Any) -> dict[str, Any]:
        new: dict[str, Any] = json.loads(json.dumps(row))
        changed = apply_update(new, update)
        top = {f.split(".")[0] for f in changed}
        spec = t.types
        bad = [f for f in top if f in spec and not type_fits(spec[f], new.get(f))]
        if bad and len(bad) == len(top):
            raise TableError(
                400, "Failed to save record, type conflict on fields: " + ", ".join(bad)
            )
        for f in bad:  # documented: with several fields, the good ones still save
            if f in row:
                new[f] = row[f]
            else:
                new.pop(f, None)
        self._learn_fields(t, {f: new.get(f) for f in top if f in new})
        if "updated_at" not in top:
            new["updated_at"] = _now()
        if t.name == USER_TABLE:
            new["id"] = row["id"]
        return new

    def update(
        self,
        table: str | int,
        record_id: str | int,
        update: Mapping[str, Any],
        *,
        enable_trigger: bool = True,
    ) -> dict[str, Any]:
        """Update one record with a REST-style update document; returns the whole new row."""
        with self._txn():
            t = self._resolve(table, write=False)
            tid, name = t.id, t.name
            row = self._load(tid, record_id)
            if row is None:
                raise TableError(404, f"record not found: {record_id!r} in table {name!r}")
            new = self._apply(t, row, update)
            self._save(tid, new)
        self._emit(Change("update", name, tid, _out(row), _out(new), enable_trigger))
        return _out(new)

    def update_many(
        self,
        table: str | int,
        where: Any,
        update: Mapping[str, Any],
        *,
        limit: int | None = None,
        offset: int | None = None,
        order_by: str | Sequence[str] | None = None,
        enable_trigger: bool = True,
        with_count: bool = False,
    ) -> dict[str, Any]:
        """Update the rows a query matches: one page of them (≤1000), in `order_by` order."""
        # Documented: a bulk operation touches at most the first 1000 matches by default.
        lim, off = _check_page(MAX_LIMIT if limit is None else limit, offset)
        changes: list[Change] = []
        results: list[dict[str, Any]] = []
        with self._txn():
            t = self._resolve(table, write=False)
            tid, name = t.id, t.name
            total = self.count(tid, where) if with_count else None  # matched, before the change
            rows = self._query(tid, where, lim, off, order_by, extra=1)
            more = len(rows) > lim
            for _, row in rows[:lim]:
                new = self._apply(t, row, update)
                self._save(tid, new)
                changes.append(Change("update", name, tid, _out(row), _out(new), enable_trigger))
                results.append({"success": {"id": new["id"], "updated_at": new["updated_at"]}})
        for change in changes:
            self._emit(change)
        reply: dict[str, Any] = {
            "succeed": len(results),
            "offset": off,
            "limit": lim,
            "next": _page_link(name, lim, off + lim) if more else None,
            "operation_result": results,
        }
        if total is not None:
            reply["total_count"] = total
        return reply

    def delete(
        self, table: str | int, record_id: str | int, *, enable_trigger: bool = True
    ) -> None:
        with self._txn():
            t = self._resolve(table, write=False)
            tid, name = t.id, t.name
            row = self._load(tid, record_id)
            if row is None:
                raise TableError(404, f"record not found: {record_id!r} in table {name!r}")
            self._db.execute(
                "DELETE FROM baas_records WHERE tbl = ? AND rid = ?", (tid, str(record_id))
            )
        self._emit(Change("delete", name, tid, _out(row), None, enable_trigger))

    def delete_many(
        self,
        table: str | int,
        where: Any,
        *,
        limit: int | None = None,
        offset: int | None = None,
        order_by: str | Sequence[str] | None = None,
        enable_trigger: bool = True,
        with_count: bool = False,
    ) -> dict[str, Any]:
        lim, off = _check_page(MAX_LIMIT if limit is None else limit, offset)
        with self._txn():
            t = self._resolve(table, write=False)
            tid, name = t.id, t.name
            total = self.count(tid, where) if with_count else None
            rows = self._query(tid, where, lim, off, order_by, extra=1)
            more = len(rows) > lim
            gone = rows[:lim]
            self._db.executemany("DELETE FROM baas_records WHERE seq = ?", [(s,) for s, _ in gone])
        for _, row in gone:
            self._emit(Change("delete", name, tid, _out(row), None, enable_trigger))
        reply: dict[str, Any] = {
            "succeed": len(gone),
            "offset": off,
            "limit": lim,
            "next": _page_link(name, lim, off + lim) if more else None,
        }
        if total is not None:
            reply["total_count"] = total
        return reply

    # -- seeding and inspection (tests, the CLI) ------------------------------------------

    def import_records(self, table: str | int, rows: Iterable[Any]) -> int:
        """Insert records as given (their `id` and system fields are kept), fire no triggers;
        all or nothing. Returns how many were inserted."""
        count = 0
        with self._txn():
            t = self._resolve(table, write=True)
            for row in rows:
                self._insert(t.id, self._prepare(t, row, keep_id=True))
                count += 1
        return count

    def export_records(self, table: str | int) -> list[dict[str, Any]]:
        """Every record of a table, oldest first, as stored (no `_id` copy)."""
        tid = self._resolve(table, write=False).id
        rows = self._db.execute(
            "SELECT doc FROM baas_records WHERE tbl = ? ORDER BY seq", (tid,)
        ).fetchall()
        return [dict(json.loads(doc)) for (doc,) in rows]

    def reset(self, table: str | int | None = None, *, drop: bool = False) -> None:
        """Delete the records of one table (or of all); with drop, the tables themselves too."""
        with self._txn():
            if table is None:
                self._db.execute("DELETE FROM baas_records")
                if drop:
                    self._db.execute("DELETE FROM baas_tables")
                return
            tid = self._resolve(table, write=False).id
            self._db.execute("DELETE FROM baas_records WHERE tbl = ?", (tid,))
            if drop:
                self._db.execute("DELETE FROM baas_tables WHERE id = ?", (tid,))


def _out(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the SDK returns it: `_id` mirrors `id` (a copy, safe to change)."""
    out = json.loads(json.dumps(row))
    out["_id"] = row["id"]
    return dict(out)


def _page_link(table: str, limit: int, offset: int) -> str:
    # The platform's `next`/`previous` are request paths; their exact form is undocumented.
    return f"/dserve/v2.4/table/{table}/record/?limit={limit}&offset={offset}"


class _Txn:
    """BEGIN IMMEDIATE … COMMIT (a savepoint when a transaction is already open)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._nested = False

    def __enter__(self) -> None:
        self._nested = self._db.in_transaction
        self._db.execute("SAVEPOINT baas" if self._nested else "BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("RELEASE baas" if self._nested else "COMMIT")
        elif self._nested:
            self._db.execute("ROLLBACK TO baas")
            self._db.execute("RELEASE baas")
        else:
            self._db.execute("ROLLBACK")
