"""The engine's durable state store, on real SQLite files (and a real killed process)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import wait_until

from minapp_async.engine._store import (
    SCHEMA_VERSION,
    EndedJob,
    RawJSON,
    Store,
    StoreBounds,
    StoreError,
    UserRecord,
    new_job_id,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "engine.sqlite3"


@pytest.fixture(name="store")
async def _store(path: Path) -> AsyncIterator[Store]:
    async with await Store.open(path) as store:
        yield store


async def accept(store: Store, job_id: str, name: str = "hello", **fields: Any) -> None:
    fields.setdefault("sync", False)
    fields.setdefault("source", "sdk")
    fields.setdefault("params", {"job": job_id})
    await store.accept(job_id, name, request_id=f"req-{job_id}", **fields)


# ---- round trips ----


async def test_a_job_lives_through_its_lifecycle_and_a_reopen(path: Path) -> None:
    async with await Store.open(path) as store:
        await accept(store, "j1", params={"name": "allen", "n": [1, 2]}, user_id=7)
        assert (1, 0) == (store.stats.waiting, store.stats.executing)
        await store.start("j1")
        assert (0, 1) == (store.stats.waiting, store.stats.executing)
        await store.finish(
            "j1",
            status="fulfilled",
            result={"code": 0, "data": "hi 你好", "error": {}},
            log="line one\nlone surrogate \ud800 kept readable\n",
            execution_time_ms=12.5,
            mem_usage=4096,
        )
        await store.flush()
        assert 1 == store.stats.finished
    async with await Store.open(path) as store:
        job = await store.get("j1")
        assert job is not None
        assert ("hello", "sdk", "req-j1", 7, False) == (
            job.function_name,
            job.source,
            job.request_id,
            job.user_id,
            job.sync,
        )
        assert ("fulfilled", 1, False, "batch") == (
            job.status,
            job.attempts,
            job.rerun,
            job.service_type,
        )
        assert {"name": "allen", "n": [1, 2]} == job.params
        assert {"code": 0, "data": "hi 你好", "error": {}} == job.result
        assert "line one\nlone surrogate \\ud800 kept readable\n" == job.log
        assert (12.5, 4096) == (job.execution_time_ms, job.mem_usage)
        assert job.started_at is not None and job.finished_at is not None
        assert job.created_at <= job.started_at <= job.finished_at
        assert 1 == store.stats.finished
        assert await store.get("nope") is None


async def test_a_sync_call_is_recorded_in_one_write(path: Path) -> None:
    statements: list[str] = []
    async with await Store.open(path, on_statement=statements.append) as store:
        await store.flush()
        before = len(statements)
        await store.record(
            EndedJob(
                id="s1",
                function_name="hello",
                sync=True,
                source="sdk",
                request_id="r-s1",
                params={"name": "allen"},
                status="deadline_exceeded",
                created_at=10.0,
                started_at=11.0,
                finished_at=13.0,
                user_id=5,
                result=RawJSON('{"code": 1, "data": null}'),  # as a worker sent it
                log="started\n",
                error_msg="timed out",
                execution_time_ms=2000.0,
            ),
            wait=True,
        )
        written = [s for s in statements[before:] if s not in ("BEGIN IMMEDIATE", "COMMIT")]
        assert 1 == len(written) and written[0].startswith("INSERT INTO jobs")
        assert (0, 0, 1) == (store.stats.waiting, store.stats.executing, store.stats.finished)
    async with await Store.open(path) as store:
        job = await store.get("s1")
        assert job is not None
        assert ("deadline_exceeded", "time_sensitive", 1, 5) == (
            job.status,
            job.service_type,
            job.attempts,
            job.user_id,
        )
        assert (10.0, 11.0, 13.0) == (job.created_at, job.started_at, job.finished_at)
        assert ({"name": "allen"}, {"code": 1, "data": None}, "started\n", "timed out") == (
            job.params,
            job.result,
            job.log,
            job.error_msg,
        )
        assert [] == await store.recover()


def ended(job_id: str, status: str = "fulfilled") -> EndedJob:
    return EndedJob(
        id=job_id,
        function_name="hello",
        sync=True,
        source="sdk",
        request_id=f"r-{job_id}",
        params={"n": job_id},
        status=status,
        created_at=1.0,
        started_at=2.0,
    )


async def test_sync_records_share_inserts_and_a_bad_one_fails_alone(path: Path) -> None:
    statements: list[str] = []
    async with await Store.open(path, on_statement=statements.append) as store:
        await store.flush()
        before = len(statements)
        # Handed over together (no await between), so written by one batch; the 61st
        # repeats the 11th's id, which the file refuses.
        for i in range(120):
            store.record_nowait(ended(f"s{i:03}") if i != 60 else ended("s010", "execution_failed"))
        await store.flush()
        inserts = [s for s in statements[before:] if s.startswith("INSERT INTO jobs")]
        assert len(inserts) < 119  # rows share statements
        assert 119 == store.stats.finished == (await store.list_jobs()).total
        with pytest.raises(StoreError, match="UNIQUE"):
            await store.record(ended("s000", "execution_failed"), wait=True)
        await store.record(ended("s999"), wait=True)
    async with await Store.open(path) as store:
        assert 120 == (await store.list_jobs()).total
        first = await store.get("s010")
        assert first is not None and {"n": "s010"} == first.params
        assert "fulfilled" == first.status
        other = await store.get("s000")
        assert other is not None and "fulfilled" == other.status


async def test_job_lists_filter_page_and_count(store: Store) -> None:
    for i in range(6):
        await accept(
            store,
            f"a{i}",
            name="alpha" if i % 2 == 0 else "beta",
            sync=i >= 4,
            source="open_api" if i == 2 else "sdk",
            created_at=1000.0 + i,
        )
    await store.start("a0")
    await store.finish("a0", status="fulfilled", result={"code": 0})

    page = await store.list_jobs(function_name="alpha")
    assert 3 == page.total
    assert ["a4", "a2", "a0"] == [j.id for j in page.jobs]  # newest first
    assert [None, None, None] == [j.params for j in page.jobs]  # no bodies unless asked

    assert ["a0"] == [j.id for j in (await store.list_jobs(status="fulfilled")).jobs]
    assert ["a2"] == [j.id for j in (await store.list_jobs(source="open_api")).jobs]
    assert ["a5", "a4"] == [j.id for j in (await store.list_jobs(sync=True)).jobs]
    ranged = await store.list_jobs(created_from=1001.0, created_to=1003.0, newest_first=False)
    assert ["a1", "a2", "a3"] == [j.id for j in ranged.jobs]

    paged = await store.list_jobs(offset=2, limit=2, newest_first=False)
    assert (6, ["a2", "a3"]) == (paged.total, [j.id for j in paged.jobs])
    full = await store.list_jobs(function_name="alpha", status="fulfilled", bodies=True)
    assert [{"code": 0}] == [j.result for j in full.jobs]


async def test_users_sessions_and_grants_survive_a_reopen_as_digests(path: Path) -> None:
    session, code = "s" * 32, "c0de" * 10
    access, refresh = "a" * 40, "r" * 40
    async with await Store.open(path) as store:
        user_id = store.new_user_id()
        user = UserRecord(
            id=user_id,
            kind="email",
            created_at=1700000000,
            email="ann@example.com",
            salt=b"salt",
            password_hash=b"hash",
        )
        await store.add_user(user)
        await store.update_profile(user_id, {"nickname": "Ann"})
        with pytest.raises(ValueError, match="ann@example.com"):
            await store.add_user(UserRecord(id=user_id + 1, kind="email", created_at=0,
                                            email="ann@example.com"))  # fmt: skip
        await store.add_user(UserRecord(id=store.new_user_id(), kind="anonymous",
                                        created_at=1, anonymous=True))  # fmt: skip
        await store.add_session(session, user_id, expires_at=4e9)
        await store.add_session("gone" * 8, user_id, expires_at=4e9)
        await store.remove_session("gone" * 8)
        await store.add_session("old" * 8, user_id, expires_at=1.0)  # long expired
        await store.add_code(code, expires_at=4e9)
        await store.add_token_pair(access, refresh, access_expires_at=4e9, refresh_expires_at=5e9)

    raw = b"".join(p.read_bytes() for p in path.parent.iterdir())
    for secret in (session, code, access, refresh):
        assert secret.encode() not in raw  # a copied state file holds no usable token

    async with await Store.open(path) as store:
        loaded = store.user(user_id)
        assert loaded is not None
        assert (b"salt", b"hash", {"nickname": "Ann"}) == (
            loaded.salt,
            loaded.password_hash,
            dict(loaded.profile),
        )
        assert loaded == store.user_by_login("email", "ann@example.com")
        assert store.new_user_id() == user_id + 2  # never reused
        assert (user_id, 4e9) == store.session(session)
        assert store.session("gone" * 8) is None
        assert store.session("old" * 8) is None  # expired ones are dropped at open
        assert 4e9 == await store.take_code(code)
        assert await store.take_code(code) is None  # once
        assert 4e9 == store.access_expiry(access)
        assert store.access_expiry(refresh) is None  # a refresh token is not an access token
        assert 5e9 == await store.take_refresh(refresh)
        assert store.access_expiry(access) is None  # the pair goes together
        assert await store.take_refresh(refresh) is None
        await store.expire_all(at=10.0)
        assert (user_id, 10.0) == store.session(session)
    async with await Store.open(path) as store:
        assert store.session(session) is None
        assert await store.take_code(code) is None


async def test_memory_mode_keeps_nothing_on_disk(tmp_path: Path) -> None:
    async with await Store.open(":memory:") as one, await Store.open(":memory:") as two:
        await accept(one, "m1")
        assert await one.get("m1") is not None
        assert await two.get("m1") is None  # each throw-away engine has its own
        assert 1 == len(await one.recover())
    assert not (Path.cwd() / ":memory:").exists()


async def test_a_closed_store_refuses_work_and_closes_once(path: Path) -> None:
    store = await Store.open(path)
    await accept(store, "c1")
    await store.aclose()
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await accept(store, "c2")


# ---- concurrency ----


async def test_an_open_cancelled_midway_lets_the_file_go(path: Path) -> None:
    """Cancelled while the writer opens the file, the store closes it once open: the writer
    thread ends and its lock is released, so the file opens again."""
    with anyio.move_on_after(0):
        await Store.open(path)
    writer = f"minapp state writer {path}"
    await wait_until(
        lambda: all(t.name != writer for t in threading.enumerate()), what="the writer to end"
    )
    async with await Store.open(path) as again:
        assert not again.in_memory


async def test_many_async_writers_all_land(path: Path) -> None:
    statements: list[str] = []
    async with await Store.open(path, on_statement=statements.append) as store:

        async def writer(w: int) -> None:
            for i in range(40):
                await accept(store, f"w{w:02}-{i:02}")

        async with anyio.create_task_group() as tg:
            for w in range(50):
                tg.start_soon(writer, w)
        page = await store.list_jobs(limit=5000)
    assert 2000 == page.total
    assert {f"w{w:02}-{i:02}" for w in range(50) for i in range(40)} == {j.id for j in page.jobs}
    inserts = sum(s.startswith("INSERT INTO jobs") for s in statements)
    assert 2000 == inserts
    assert statements.count("COMMIT") < inserts  # some commits carried several accepts


async def test_writes_made_together_are_committed_together(path: Path) -> None:
    statements: list[str] = []
    async with await Store.open(path, on_statement=statements.append) as store:
        await store.flush()
        commits_before = statements.count("COMMIT")
        # No await gives the loop away here, so the writer finds them queued together.
        for i in range(500):
            await accept(store, f"g{i:03}", wait=False)
        await store.flush()
        commits = statements.count("COMMIT") - commits_before
        assert 500 == sum(s.startswith("INSERT INTO jobs") for s in statements)
        assert commits <= 50  # group commit: not one transaction per accept


async def test_writers_waiting_for_room_all_land(path: Path) -> None:
    async with await Store.open(path, bounds=StoreBounds(max_pending=8)) as store:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(accept, store, f"r{i:03}")
        assert 200 == (await store.list_jobs()).total


async def test_an_accept_cancelled_awaiting_its_commit_is_still_recorded(store: Store) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await accept(store, "cancelled-late")  # queued first, cancelled while awaiting
    assert scope.cancelled_caught
    await store.flush()
    assert await store.get("cancelled-late") is not None
    assert 1 == store.stats.waiting


async def test_an_accept_cancelled_waiting_for_room_leaves_no_trace(path: Path) -> None:
    async with await Store.open(path, bounds=StoreBounds(max_pending=1)) as store:
        # Room comes back only through the loop, so the second accept must wait for it.
        await accept(store, "first", wait=False)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await accept(store, "never", wait=False)
        assert scope.cancelled_caught
        await store.flush()
        assert 1 == store.stats.waiting
        assert await store.get("never") is None
        await accept(store, "never")  # the id was not taken


async def test_duplicate_accept_fails_alone(store: Store) -> None:
    await accept(store, "d1")
    with pytest.raises(ValueError, match="already waiting"):
        await accept(store, "d1")
    await store.start("d1")
    await store.finish("d1", status="execution_failed", error_msg="boom")
    with pytest.raises(StoreError, match="UNIQUE"):
        await accept(store, "d1")
    await accept(store, "d2")  # the store keeps working
    with pytest.raises(KeyError):
        await store.start("d1")
    with pytest.raises(ValueError, match="status must be one of"):
        await store.finish("d2", status="waiting")


# ---- durability and recovery ----

CHILD_PRELUDE = """
import asyncio, sys
from minapp_async.engine._store import Store
"""

ACCEPT_FOREVER = (
    CHILD_PRELUDE
    + """
async def main(path):
    store = await Store.open(path)
    counter = iter(range(10**9))
    async def caller():
        for i in counter:
            job_id = f"k{i:09}"
            await store.accept(job_id, "hello", sync=False, source="sdk",
                               request_id=job_id, params={"i": i})
            print(job_id, flush=True)  # only after the accept returned
    await asyncio.gather(*(caller() for _ in range(16)))
asyncio.run(main(sys.argv[1]))
"""
)

HOLD_RUNNING = (
    CHILD_PRELUDE
    + """
async def main(path):
    store = await Store.open(path)
    for i in range(5):
        await store.accept(f"h{i}", "hello", sync=False, source="sdk", request_id=str(i),
                           params={"i": i})
    await store.accept("sync-w", "hello", sync=True, source="sdk", request_id="w",
                       params={}, wait=True)
    await store.accept("sync-x", "hello", sync=True, source="sdk", request_id="x",
                       params={}, wait=True)
    for job_id in ("h1", "h3", "sync-x"):
        await store.start(job_id, wait=True)
    print("running", flush=True)
    await asyncio.sleep(60)
asyncio.run(main(sys.argv[1]))
"""
)


async def run_and_kill(script: str, path: Path, *, lines_before_kill: int) -> list[str]:
    """Run *script* on *path*, SIGKILL it after that many lines; every line it printed."""
    process = await anyio.open_process(
        [sys.executable, "-c", textwrap.dedent(script), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    output = b""
    with anyio.fail_after(60):
        async with process:
            try:
                while output.count(b"\n") < lines_before_kill:
                    output += await process.stdout.receive()
            except anyio.EndOfStream:
                errors = await process.stderr.receive() if process.returncode is None else b""
                pytest.fail(f"the child stopped early: {errors.decode(errors='replace')}")
            process.send_signal(signal.SIGKILL)
            async for chunk in process.stdout:  # what it printed before it died
                output += chunk
            assert -signal.SIGKILL == await process.wait()
    text = output.decode()
    # A line cut in half by the kill was not fully printed: its accept may not have returned.
    return text.split("\n")[:-1]


async def test_every_acknowledged_accept_survives_sigkill(path: Path) -> None:
    printed = await run_and_kill(ACCEPT_FOREVER, path, lines_before_kill=400)
    assert len(printed) >= 400
    async with await Store.open(path) as store:
        recovered = await store.recover()
    recovered_ids = [job.id for job in recovered]
    assert set(printed) <= set(recovered_ids)
    assert sorted(recovered_ids) == recovered_ids  # in acceptance order (ids count up)
    assert all(job.params == {"i": int(job.id[1:])} for job in recovered)
    assert not any(job.rerun for job in recovered)


async def test_jobs_cut_off_mid_run_come_back_marked_rerun(path: Path) -> None:
    await run_and_kill(HOLD_RUNNING, path, lines_before_kill=1)
    async with await Store.open(path) as store:
        assert (4, 3) == (store.stats.waiting, store.stats.executing)  # the file's state
        recovered = await store.recover()
        assert ["h0", "h1", "h2", "h3", "h4"] == [job.id for job in recovered]
        assert [False, True, False, True, False] == [job.rerun for job in recovered]
        assert [0, 1, 0, 1, 0] == [job.attempts for job in recovered]
        assert {"waiting"} == {job.status for job in recovered}
        assert (5, 0) == (store.stats.waiting, store.stats.executing)
        # Run one again: a second attempt, and the record still says it was cut off.
        await store.start("h1")
        await store.finish("h1", status="fulfilled", result={"code": 0})
        again = await store.get("h1")
        assert again is not None
        assert (2, True, "fulfilled") == (again.attempts, again.rerun, again.status)
        # Sync callers are gone: their jobs end as failed and are not run again.
        sync_w, sync_x = await store.get("sync-w"), await store.get("sync-x")
        assert sync_w is not None and sync_x is not None
        assert ("execution_rejected", "execution_failed") == (sync_w.status, sync_x.status)
        assert "engine stopped" in (sync_x.error_msg or "")
    async with await Store.open(path) as store:
        assert ["h0", "h2", "h3", "h4"] == [job.id for job in await store.recover()]


# ---- bounds ----


async def finish_one(store: Store, job_id: str, **fields: Any) -> None:
    await accept(store, job_id, params={})
    await store.start(job_id)
    await store.finish(job_id, status="fulfilled", **fields)


async def test_finished_records_are_bounded_by_count_oldest_first(path: Path) -> None:
    bounds = StoreBounds(max_finished=5)
    async with await Store.open(path, bounds=bounds) as store:
        await accept(store, "old-waiting")  # older than all: never pruned
        for i in range(8):
            await finish_one(store, f"f{i}")
        await store.flush()
        ids = [j.id for j in (await store.list_jobs(limit=100, newest_first=False)).jobs]
        assert ["old-waiting", "f3", "f4", "f5", "f6", "f7"] == ids
        assert 5 == store.stats.finished
    async with await Store.open(path, bounds=bounds) as store:
        assert 5 == store.stats.finished
        await finish_one(store, "f8")
        await store.flush()
        assert await store.get("f3") is None
        assert await store.get("old-waiting") is not None


async def test_finished_records_are_bounded_by_bytes(path: Path) -> None:
    bounds = StoreBounds(max_finished=1000, max_finished_bytes=10_000)
    async with await Store.open(path, bounds=bounds) as store:
        for i in range(4):
            await finish_one(store, f"b{i}", log="x" * 3000)  # 2 bytes of params each
        await store.flush()
        assert (3, 9006) == (store.stats.finished, store.stats.finished_bytes)
        assert await store.get("b0") is None
        await finish_one(store, "big", result={"data": "y" * 6000})
        await store.flush()
        left = [j.id for j in (await store.list_jobs(limit=100, newest_first=False)).jobs]
        assert ["b3", "big"] == left
        assert store.stats.finished_bytes <= 10_000


# ---- cost per job ----


def plans(path: Path, statements: list[str]) -> list[tuple[str, str]]:
    """(statement, step of its query plan) for each step SQLite would take, on that file."""
    connection = sqlite3.connect(path)
    try:
        return [
            (statement, row[3])
            for statement in statements
            if not statement.startswith(("BEGIN", "COMMIT"))
            for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}")
        ]
    finally:
        connection.close()


async def test_the_20000th_accept_and_finish_cost_what_the_first_did(path: Path) -> None:
    statements: list[str] = []
    bounds = StoreBounds(max_finished=100)

    async def traced(action: Any) -> list[str]:
        await store.flush()
        start = len(statements)
        await action
        await store.flush()
        return [s for s in statements[start:] if s != "BEGIN IMMEDIATE" and s != "COMMIT"]

    async with await Store.open(path, bounds=bounds, on_statement=statements.append) as store:
        first_accept = await traced(accept(store, new_job_id(), wait=True))
        for _ in range(20_000 - 2):
            await accept(store, new_job_id(), wait=False)
        last_id = new_job_id()
        last_accept = await traced(accept(store, last_id, wait=True))
        assert 20_000 == store.stats.waiting
        assert 1 == len(first_accept) == len(last_accept)
        assert first_accept[0].startswith("INSERT INTO jobs")

        for i in range(150):  # past the bound: every finish now prunes the oldest
            await finish_one(store, f"p{i:03}")
        first_finish = await traced(finish_one(store, "p-first"))
        for i in range(150, 1000):
            await finish_one(store, f"p{i:03}")
        last_finish = await traced(finish_one(store, "p-last"))
        assert 100 == store.stats.finished
        assert [s.split(" ", 2)[:2] for s in first_finish] == [
            s.split(" ", 2)[:2] for s in last_finish
        ]
    # Every statement finds its rows through an index; the one walk in index order (the
    # oldest finished records, to prune) stops at its LIMIT.
    for statement, plan in plans(path, first_accept + last_accept + last_finish):
        bounded_walk = "USING INDEX jobs_finished" in plan and " LIMIT " in statement
        assert plan.startswith("SEARCH") or bounded_walk, (statement, plan)


# ---- bad files ----


def write_garbage(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, just some text " * 200)


async def test_a_corrupt_file_names_itself_and_the_way_out(path: Path) -> None:
    write_garbage(path)
    with pytest.raises(StoreError) as caught:
        await Store.open(path)
    message = str(caught.value)
    assert str(path) in message
    assert "move it aside or delete it" in message
    assert "--state PATH" in message


async def test_an_unusable_folder_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "state.sqlite3"
    with pytest.raises(StoreError) as caught:
        await Store.open(target)
    assert str(target) in str(caught.value)
    assert "--state" in str(caught.value)


async def test_a_file_in_use_by_another_engine_is_refused(path: Path) -> None:
    async with await Store.open(path) as store:
        await accept(store, "held")
        with pytest.raises(StoreError, match="in use by another engine"):
            await Store.open(path, busy_timeout=0.1)
    async with await Store.open(path) as store:  # free again once closed
        assert await store.get("held") is not None


async def test_a_file_from_a_newer_version_is_refused(path: Path) -> None:
    async with await Store.open(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer minapp_async"):
        await Store.open(path)


async def test_another_connection_of_this_process_shares_the_file(path: Path) -> None:
    """The data tables open their own connection to the state file: it reads and writes
    while the store is open, and sees the store's commits."""
    async with await Store.open(path) as store:
        await accept(store, "shared", wait=True)
        assert store.path == str(path) and not store.in_memory
        connection = sqlite3.connect(store.path, timeout=store.busy_timeout)
        try:
            assert connection.execute("SELECT id FROM jobs").fetchall() == [("shared",)]
            connection.execute("CREATE TABLE other (x)")
            connection.execute("INSERT INTO other VALUES (1)")
            connection.commit()
            await accept(store, "after", wait=True)  # the store still writes
        finally:
            connection.close()
    assert (path.parent / (path.name + ".lock")).exists()
