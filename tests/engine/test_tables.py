"""Data tables against a real SQLite file: queries, ordering, paging, atomic updates, errors."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minapp_async.engine._tables import Change, TableError, Tables


@pytest.fixture(name="tables")
def _tables(tmp_path: Path) -> Iterator[Tables]:
    t = Tables(tmp_path / "state.db")
    yield t
    t.close()


def _seed(tables: Tables) -> list[dict[str, Any]]:
    rows = [
        {"name": "apple", "price": 5, "tags": ["red", "fruit"], "meta": {"k": 1}, "ok": True},
        {"name": "Banana", "price": 12.5, "tags": ["yellow", "fruit"], "meta": {"j": 2}},
        {"name": "cherry pie", "price": 30, "tags": [], "ok": False, "note": None},
        {"name": "durian", "price": 100, "tags": ["fruit"], "meta": {"k": 3}},
    ]
    return [tables.create("goods", r) for r in rows]


def _names(reply: dict[str, Any]) -> list[str]:
    return sorted(o["name"] for o in reply["objects"])


def _error(fn: Any, *args: Any, **kw: Any) -> TableError:
    with pytest.raises(TableError) as info:
        fn(*args, **kw)
    return info.value


def test_create_sets_the_system_fields(tables: Tables) -> None:
    row = tables.create("goods", {"name": "x"})
    assert re.fullmatch(r"[0-9a-f]{24}", row["id"])
    assert row["_id"] == row["id"]
    assert isinstance(row["created_at"], int)
    assert row["updated_at"] == row["created_at"]
    assert row["created_by"] is None
    assert tables.get("goods", row["id"]) == row


def test_explicit_system_fields_are_honoured(tables: Tables) -> None:
    row = tables.create("goods", {"name": "x", "created_by": 42, "created_at": 1000})
    assert (row["created_by"], row["created_at"]) == (42, 1000)


def test_first_write_creates_the_table_and_learns_fields(tables: Tables) -> None:
    tables.create("fresh", {"n": 1, "s": "a", "l": [1], "o": {"a": 1}, "b": True, "f": 1.5})
    fields = {f["name"]: f["type"] for f in tables.get_table("fresh")["schema"]["fields"]}
    assert fields == {
        "n": "number",
        "s": "string",
        "l": "array",
        "o": "object",
        "b": "boolean",
        "f": "number",
    }


def test_reads_of_unknown_tables_and_records_are_404(tables: Tables) -> None:
    assert _error(tables.find, "nope").status == 404
    tables.create("goods", {"name": "x"})
    err = _error(tables.get, "goods", "0" * 24)
    assert err.status == 404
    assert "record not found" in err.message


def test_strict_mode_makes_unknown_tables_404_and_unknown_fields_400(tmp_path: Path) -> None:
    with contextlib.closing(Tables(tmp_path / "s.db", auto_create=False)) as strict:
        assert _error(strict.create, "goods", {"a": 1}).status == 404
        strict.create_table("goods", [{"name": "a", "type": "integer"}])
        assert strict.create("goods", {"a": 1})["a"] == 1
        err = _error(strict.create, "goods", {"b": 1})
        assert (err.status, "'b'" in err.message) == (400, True)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"price": {"$eq": 5}}, ["apple"]),
        ({"price": 5}, ["apple"]),
        ({"price": {"$ne": 5}}, ["Banana", "cherry pie", "durian"]),
        ({"price": {"$lt": 12.5}}, ["apple"]),
        ({"price": {"$lte": 12.5}}, ["Banana", "apple"]),
        ({"price": {"$gt": 30}}, ["durian"]),
        ({"price": {"$gte": 30}}, ["cherry pie", "durian"]),
        ({"name": {"$contains": "an"}}, ["Banana", "durian"]),
        ({"name": {"$contains": "BAN"}}, []),
        ({"name": {"$icontains": "BAN"}}, ["Banana"]),
        ({"name": {"$regex": "^[a-c]"}}, ["apple", "cherry pie"]),
        ({"name": {"$regex": "^b", "$options": "i"}}, ["Banana"]),
        ({"name": {"$in": ["apple", "durian", "zzz"]}}, ["apple", "durian"]),
        ({"name": {"$nin": ["apple", "durian"]}}, ["Banana", "cherry pie"]),
        ({"tags": {"$in": ["red", "yellow"]}}, ["Banana", "apple"]),
        ({"tags": {"$nin": ["fruit"]}}, ["cherry pie"]),
        ({"tags": {"$all": ["fruit", "red"]}}, ["apple"]),
        ({"tags": {"$eq": ["fruit"]}}, ["durian"]),
        ({"tags": ["yellow", "fruit"]}, ["Banana"]),
        ({"meta": {"$eq": {"k": 1}}}, ["apple"]),
        ({"meta": {"$has_key": "k"}}, ["apple", "durian"]),
        ({"ok": {"$eq": True}}, ["apple"]),
        ({"ok": {"$ne": True}}, ["Banana", "cherry pie", "durian"]),
        ({"note": {"$isnull": True}}, ["Banana", "apple", "cherry pie", "durian"]),
        ({"meta": {"$isnull": False}}, ["Banana", "apple", "durian"]),
        ({"ok": {"$exists": True}}, ["apple", "cherry pie"]),
        ({"ok": {"$exists": False}}, ["Banana", "durian"]),
        ({"price": {"$gt": 1, "$lt": 50}}, ["Banana", "apple", "cherry pie"]),
        (
            {"$or": [{"price": {"$lt": 10}}, {"$and": [{"price": {"$gt": 20}}, {"ok": False}]}]},
            ["apple", "cherry pie"],
        ),
        ({}, ["Banana", "apple", "cherry pie", "durian"]),
    ],
)
def test_query_operators(tables: Tables, where: dict[str, Any], expected: list[str]) -> None:
    _seed(tables)
    assert _names(tables.find("goods", where)) == expected
    assert tables.count("goods", where) == len(expected)


def test_pointers_compare_by_the_target_id(tables: Tables) -> None:
    [apple, banana, *_] = _seed(tables)
    tables.create("orders", {"item": {"id": apple["id"], "_table": "goods"}, "n": 1})
    tables.create("orders", {"item": {"id": banana["id"], "_table": "goods"}, "n": 2})
    found = tables.find("orders", {"item": {"$eq": apple["id"]}})["objects"]
    assert [o["n"] for o in found] == [1]
    found = tables.find("orders", {"item": {"$in": [banana["id"]]}})["objects"]
    assert [o["n"] for o in found] == [2]
    found = tables.find("orders", {"item": {"$ne": apple["id"]}})["objects"]
    assert [o["n"] for o in found] == [2]


def test_expand_inlines_pointers_and_created_by(tables: Tables) -> None:
    [apple, *_] = _seed(tables)
    tables.create("_userprofile", {"id": 7, "nickname": "Larry", "avatar": "a.png"})
    order = tables.create(
        "orders", {"item": {"id": apple["id"], "_table": "goods"}, "created_by": 7}
    )
    plain = tables.get("orders", order["id"])
    assert plain["item"] == {"id": apple["id"], "_table": "goods"}
    full = tables.get("orders", order["id"], expand=["item", "created_by"])
    assert full["item"]["name"] == "apple"
    assert full["item"]["_table"] == "goods"
    assert full["created_by"] == {"id": 7, "nickname": "Larry", "avatar": "a.png"}


def test_select_includes_or_excludes(tables: Tables) -> None:
    [apple, *_] = _seed(tables)
    assert tables.get("goods", apple["id"], select=["name", "price"]) == {
        "name": "apple",
        "price": 5,
    }
    rest = tables.get("goods", apple["id"], select="-tags")
    assert "tags" not in rest and rest["name"] == "apple"
    mixed = tables.get("goods", apple["id"], select=["name", "-tags"])
    assert "tags" in mixed and "price" in mixed  # documented: mixing is ignored


def test_default_order_is_newest_first_and_order_by_takes_several_keys(tables: Tables) -> None:
    _seed(tables)
    # All rows share a second: insertion order breaks the tie, newest first.
    names = [o["name"] for o in tables.find("goods")["objects"]]
    assert names == ["durian", "cherry pie", "Banana", "apple"]
    tables.create("goods", {"name": "egg", "price": 5})
    by_price = tables.find("goods", order_by=["price", "-name"])["objects"]
    assert [o["name"] for o in by_price] == ["egg", "apple", "Banana", "cherry pie", "durian"]
    by_desc = tables.find("goods", order_by="-price", limit=2)["objects"]
    assert [o["name"] for o in by_desc] == ["durian", "cherry pie"]


def test_paging_meta_and_total_count(tables: Tables) -> None:
    tables.create_many("nums", [{"n": i} for i in range(25)])
    first = tables.find("nums", order_by="n")
    assert [o["n"] for o in first["objects"]] == list(range(20))
    assert first["meta"]["limit"] == 20 and first["meta"]["offset"] == 0
    assert first["meta"]["next"] is not None and first["meta"]["previous"] is None
    assert "total_count" not in first["meta"]
    second = tables.find("nums", order_by="n", offset=20, with_count=True)
    assert [o["n"] for o in second["objects"]] == list(range(20, 25))
    assert second["meta"]["next"] is None and second["meta"]["previous"] is not None
    assert second["meta"]["total_count"] == 25
    assert len(tables.find("nums", limit=1000)["objects"]) == 25
    assert tables.find("nums", limit=0)["objects"] == []


@pytest.mark.parametrize("limit", [1001, -1, "5", True])
def test_limit_out_of_bounds_is_400(tables: Tables, limit: Any) -> None:
    tables.create("nums", {"n": 1})
    err = _error(tables.find, "nums", limit=limit)
    assert err.status == 400 and "limit" in err.message


def test_atomic_updates(tables: Tables) -> None:
    row = tables.create(
        "rec", {"n": 1, "tags": ["a", "b"], "obj": {"x": 1, "num": 5}, "gone": 1, "q": [1, 2, 3]}
    )
    new = tables.update(
        "rec",
        row["id"],
        {
            "n": {"$incr_by": 2.5},
            "tags": {"$append_unique": ["b", "c"]},
            "obj.num": {"$incr_by": -1},
            "gone": {"$unset": ""},
            "q": {"$pop": 1},
            "fresh": {"$append": ["z"]},
        },
    )
    assert new["n"] == 3.5
    assert new["tags"] == ["a", "b", "c"]
    assert new["obj"] == {"x": 1, "num": 4}
    assert "gone" not in new
    assert new["q"] == [1, 2]
    assert new["fresh"] == ["z"]
    new = tables.update(
        "rec",
        row["id"],
        {"tags": {"$remove": ["a"]}, "q": {"$shift": 1}, "obj": {"$update": {"y": 2}}},
    )
    assert (new["tags"], new["q"], new["obj"]) == (["b", "c"], [2], {"x": 1, "num": 4, "y": 2})
    new = tables.update("rec", row["id"], {"tags": {"$append": ["b"]}})
    assert new["tags"] == ["b", "c", "b"]
    assert tables.get("rec", row["id"]) == new


@pytest.mark.parametrize(
    "update",
    [
        {"tags": {"$incr_by": 1}},
        {"n": {"$append": [1]}},
        {"n": {"$incr_by": "1"}},
        {"n": {"$update": {"a": 1}}},
        {"o": {"$update": {"$x": 1}}},
        {"n": {"$nope": 1}},
        {"bad-name": 1},
    ],
)
def test_bad_updates_are_400_and_change_nothing(tables: Tables, update: dict[str, Any]) -> None:
    row = tables.create("rec", {"n": 1, "tags": ["a"], "o": {}})
    assert _error(tables.update, "rec", row["id"], update).status == 400
    assert tables.get("rec", row["id"]) == row


def test_schema_types_on_create_and_update(tables: Tables) -> None:
    tables.create_table(
        "typed",
        [
            {"name": "n", "type": "integer", "default": 7},
            {"name": "s", "type": "string"},
            {"name": "who", "type": "string", "constraints": {"required": True}},
        ],
    )
    row = tables.create("typed", {"who": "me", "s": 123})  # documented: a bad field is dropped
    assert (row["n"], "s" in row) == (7, False)
    assert _error(tables.create, "typed", {"n": 1}).status == 400  # `who` is required
    err = _error(tables.update, "typed", row["id"], {"n": "x"})
    assert (err.status, err.message) == (400, "Failed to save record, type conflict on fields: n")
    # With several fields, the good ones save and the request succeeds.
    new = tables.update("typed", row["id"], {"n": "x", "s": "ok"})
    assert (new["n"], new["s"]) == (7, "ok")


def test_table_schema_lifecycle(tables: Tables) -> None:
    made = tables.create_table(
        "T1", [{"name": "a", "type": "string"}], write_perm=["user:*"], row_read_perm=["user:*"]
    )
    assert made["name"] == "T1" and isinstance(made["id"], int)
    assert made["default_row_perm"] == {"_read_perm": ["user:*"], "_write_perm": ["user:anonymous"]}
    assert _error(tables.create_table, "T1").status == 400
    assert tables.create("T1", {"a": "x"})["read_perm"] == ["user:*"]
    renamed = tables.update_table(made["id"], name="T2", fields=[{"name": "b", "type": "number"}])
    assert renamed["name"] == "T2"
    assert [f["name"] for f in renamed["schema"]["fields"]] == ["a", "b"]
    assert tables.get_table("T2")["id"] == made["id"]
    assert tables.find(made["id"])["objects"][0]["a"] == "x"  # a table id works as well
    listed = tables.list_tables()
    assert listed["meta"]["total_count"] == 1 and listed["objects"][0]["name"] == "T2"
    tables.delete_table("T2")
    assert _error(tables.get_table, "T2").status == 404
    assert tables.list_tables()["objects"] == []


@pytest.mark.parametrize(
    "fields",
    [
        [{"name": "1a", "type": "string"}],
        [{"name": "a", "type": "varchar"}],
        [{"name": "id", "type": "string"}],
        [{"name": "a", "type": "integer", "default": "x"}],
    ],
)
def test_bad_schemas_are_400(tables: Tables, fields: list[dict[str, Any]]) -> None:
    assert _error(tables.create_table, "T", fields).status == 400


def test_create_many_reports_each_item(tables: Tables) -> None:
    reply = tables.create_many("many", [{"a": 1}, "not an object", {"a": 2}])
    assert reply["succeed"] == 2 and reply["total_count"] == 3
    ok, bad, ok2 = reply["operation_result"]
    assert "success" in ok2
    assert set(ok["success"]) == {"id", "created_at"}
    assert bad["error"]["code"] == 400 and bad["error"]["err_msg"]
    assert tables.count("many") == 2
    assert _error(tables.create_many, "many", [{}] * 1001).status == 400


def test_update_and_delete_by_query(tables: Tables) -> None:
    tables.create_many("nums", [{"n": i, "even": i % 2 == 0} for i in range(10)])
    reply = tables.update_many("nums", {"even": True}, {"n": {"$incr_by": 100}}, limit=3)
    assert reply["succeed"] == 3 and reply["limit"] == 3 and reply["offset"] == 0
    assert reply["next"] is not None and "total_count" not in reply
    assert all(set(r["success"]) == {"id", "updated_at"} for r in reply["operation_result"])
    assert tables.count("nums", {"n": {"$gte": 100}}) == 3
    reply = tables.update_many(
        "nums", {"even": True}, {"tagged": True}, limit=1, offset=4, with_count=True
    )
    assert reply["succeed"] == 1 and reply["total_count"] == 5 and reply["next"] is None
    reply = tables.delete_many("nums", {"even": False}, with_count=True)
    assert reply["succeed"] == 5 and reply["total_count"] == 5
    assert reply["limit"] == 1000  # documented: bulk ops take the first 1000 by default
    assert tables.count("nums") == 5
    row = tables.find("nums", limit=1)["objects"][0]
    tables.delete("nums", row["id"])
    assert _error(tables.delete, "nums", row["id"]).status == 404
    assert tables.count("nums") == 4


@pytest.mark.parametrize(
    "where",
    [
        {"a\"') OR 1=1 --": 1},
        {"name') OR ('1'='1": {"$eq": "x"}},
        {"$where": "1"},
        {"na$me": 1},
        {"name; DROP TABLE baas_records": 1},
        {"name": {"$has_key": "x') OR 1=1 --"}},
        {"name": {"$in": [{"$gt": ""}]}},
        {"$or": "x"},
        {"$and": []},
        ["not", "an", "object"],
    ],
)
def test_hostile_queries_are_400_and_harm_nothing(tables: Tables, where: Any) -> None:
    _seed(tables)
    err = _error(tables.find, "goods", where)
    assert err.status == 400
    assert tables.count("goods") == 4


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"order_by": "name; DROP TABLE baas_records"}, "orderBy"),
        ({"order_by": ["price", "x'y"]}, "orderBy"),
        ({"select": ["name'"]}, "select"),
        ({"expand": ["a b"]}, "expand"),
    ],
)
def test_hostile_field_lists_are_400(tables: Tables, kwargs: dict[str, Any], word: str) -> None:
    _seed(tables)
    err = _error(tables.find, "goods", **kwargs)
    assert err.status == 400 and word in err.message


def test_values_are_data_never_sql(tables: Tables) -> None:
    evil = "x' OR '1'='1"
    tables.create("goods", {"name": evil})
    tables.create("goods", {"name": "plain"})
    assert _names(tables.find("goods", {"name": evil})) == [evil]
    assert _names(tables.find("goods", {"name": {"$in": [evil]}})) == [evil]
    assert _names(tables.find("goods", {"name": {"$contains": "' OR '"}})) == [evil]
    assert tables.count("goods", {"name": "' OR 1=1 --"}) == 0
    # An operator smuggled in as a value is an object to compare, not an operator.
    assert tables.count("goods", {"name": {"$eq": {"$gt": ""}}}) == 0


def test_query_size_is_bounded(tables: Tables) -> None:
    _seed(tables)
    deep: dict[str, Any] = {"price": 5}
    for _ in range(9):
        deep = {"$and": [deep]}
    err = _error(tables.find, "goods", deep)
    assert err.status == 400 and "deeper" in err.message
    shallow: dict[str, Any] = {"price": 5}
    for _ in range(7):
        shallow = {"$or": [shallow]}
    assert _names(tables.find("goods", shallow)) == ["apple"]
    wide = {"$or": [{"price": i} for i in range(501)]}
    assert "conditions" in _error(tables.find, "goods", wide).message
    empties: dict[str, Any] = {"$and": [{}] * 500}
    assert "conditions" in _error(tables.find, "goods", empties).message
    assert _error(tables.find, "goods", {"name": {"$in": list(range(1001))}}).status == 400
    assert _error(tables.find, "goods", {"name": {"$regex": "a" * 501}}).status == 400


@pytest.mark.parametrize(
    ("where", "word"),
    [
        ({"name": {"$regex": "("}}, "bad $regex"),
        ({"name": {"$regex": "a", "$options": "q"}}, "bad $regex"),
        ({"name": {"$regex": "^(a+)+$"}}, "nests quantifiers"),
        ({"name": {"$bogus": 1}}, "unknown query operator"),
        ({"loc": {"$intersects": {"type": "Point", "coordinates": [1, 2]}}}, "not supported"),
        ({"name": {"$contains": 5}}, "string"),
        ({"name": {"$isnull": "yes"}}, "true or false"),
        ({"price": {"$gt": None}}, "null"),
        ({"price": {"$gt": [1]}}, "price"),
    ],
)
def test_bad_operators_name_the_problem(tables: Tables, where: dict[str, Any], word: str) -> None:
    _seed(tables)
    err = _error(tables.find, "goods", where)
    assert err.status == 400 and word in err.message


def test_on_change_sees_every_committed_write(tmp_path: Path) -> None:
    seen: list[Change] = []
    with contextlib.closing(Tables(tmp_path / "c.db", on_change=seen.append)) as t:
        row = t.create("x", {"n": 1})
        t.update("x", row["id"], {"n": 2}, enable_trigger=False)
        t.delete("x", row["id"])
        with pytest.raises(TableError):
            t.update("x", row["id"], {"n": 3})
    assert [(c.event, c.enable_trigger) for c in seen] == [
        ("create", True),
        ("update", False),
        ("delete", True),
    ]
    assert seen[1].before is not None and seen[1].before["n"] == 1
    assert seen[1].after is not None and seen[1].after["n"] == 2
    assert seen[2].after is None


def test_a_shared_connection_keeps_data_for_other_connections(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE engine_own (x INTEGER)")
        conn.commit()
        t = Tables(conn)
        t.create("goods", {"name": "x"})
        with contextlib.closing(Tables(path)) as other:
            assert other.count("goods") == 1
        t.close()  # a shared connection stays open: its owner closes it
        assert conn.execute("SELECT count(*) FROM engine_own").fetchone() == (0,)


def test_user_table_ids_are_integers(tables: Tables) -> None:
    a = tables.create("_userprofile", {"nickname": "a"})
    b = tables.create("_userprofile", {"id": 100, "nickname": "b"})
    c = tables.create("_userprofile", {"nickname": "c"})
    assert (a["id"], b["id"], c["id"]) == (1, 100, 101)
    assert tables.get("_userprofile", 100)["nickname"] == "b"
    assert tables.update("_userprofile", 100, {"nickname": "B"})["id"] == 100


def test_bulk_updates_take_up_to_1000_rows_by_default(tables: Tables) -> None:
    tables.create_many("nums", [{"n": i} for i in range(25)])
    reply = tables.update_many("nums", {}, {"seen": True})
    assert (reply["succeed"], reply["limit"], reply["next"]) == (25, 1000, None)
    assert tables.count("nums", {"seen": True}) == 25


def test_import_export_and_reset(tables: Tables) -> None:
    rows = [
        {"id": "a" * 24, "n": 1, "created_at": 100, "created_by": 3},
        {"id": "b" * 24, "n": 2, "created_at": 200},
    ]
    assert tables.import_records("seeded", rows) == 2
    assert tables.get("seeded", "a" * 24)["created_by"] == 3
    exported = tables.export_records("seeded")
    assert [(r["id"], r["n"], r["created_at"]) for r in exported] == [
        ("a" * 24, 1, 100),
        ("b" * 24, 2, 200),
    ]
    # A clash or a bad id rolls the whole import back.
    assert (
        _error(tables.import_records, "seeded", [{"id": "c" * 24}, {"id": "a" * 24}]).status == 400
    )
    assert _error(tables.import_records, "seeded", [{"id": "x'; --"}]).status == 400
    assert tables.count("seeded") == 2
    tables.create("other", {"k": 1})
    tables.reset("seeded")
    assert (tables.count("seeded"), tables.count("other")) == (0, 1)
    tables.reset(drop=True)
    assert tables.list_tables()["objects"] == []
