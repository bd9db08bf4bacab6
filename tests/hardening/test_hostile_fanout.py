"""Issue 11, fan-out and the CLI never lose or repeat work: no map task outlives its Session,
completed work is delivered before an input error, and ``minapp-async map`` never runs an item
twice on a rerun.

Assumed for the implementer: a failed item's output line carries ``"may_have_executed"``
(true when the call may have run the function); a rerun skips every index already in the
output, those with ``may_have_executed`` too, unless ``--retry-uncertain`` is given, which
re-sends exactly the indexes whose only records are failures with ``may_have_executed``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hostile_servers import (
    CLIENT_ID,
    JOB_PATH,
    TOKEN,
    Hostile,
    drop,
    hostile_server,
)
from support import wait_until as eventually

from minapp_async import Session

pytestmark = pytest.mark.anyio


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[Hostile]:
    async with hostile_server() as server:
        yield server


def pending_tasks(baseline: set[asyncio.Task[Any]]) -> list[str]:
    current = asyncio.current_task()
    return sorted(
        t.get_name() for t in asyncio.all_tasks() - baseline if t is not current and not t.done()
    )


# -- 10. no fan-out task outlives its Session -----------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "as-completed"])
async def test_a_map_left_unread_ends_with_its_session(server: Hostile, ordered: bool) -> None:
    """A map over 100 items read for one outcome and then left alone, and the Session closed:
    when ``aclose()`` returns, no task the map started is still pending."""
    baseline = set(asyncio.all_tasks())
    s = Session(CLIENT_ID, base_url=server.url, token=TOKEN)
    fanout = s.map("f", range(100), concurrency=8, ordered=ordered)
    outcomes = aiter(fanout)
    try:
        with anyio.fail_after(30):
            first = await anext(outcomes)
            # One outcome yielded, a window of 16 ahead: 17 calls made, then the workers
            # wait for room that never comes.
            await eventually(lambda: len(server.seen) >= 17)
            await anyio.wait_all_tasks_blocked()
            await s.aclose()
        left = pending_tasks(baseline)
    finally:
        await fanout.aclose()
        await outcomes.aclose()  # type: ignore[attr-defined]

    assert first.ok
    assert [] == left


# -- 11. completed work is delivered ------------------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "as-completed"])
async def test_outcomes_completed_before_an_input_error_are_yielded_first(
    server: Hostile, ordered: bool
) -> None:
    """The params iterator raises after 40 items, once all 40 calls have completed (seen
    through ``progress``), while the consumer is still on the first outcome: the other 39
    outcomes are yielded, then the input's own error is raised."""
    finished: list[int] = []
    raised = anyio.Event()

    async def items() -> AsyncIterator[int]:
        for i in range(40):
            yield i
        await eventually(lambda: len(finished) >= 40)
        raised.set()
        raise LookupError("the input broke at item 40")

    seen: list[int] = []
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        with anyio.fail_after(30), pytest.raises(LookupError, match="broke at item 40"):
            async with s.map(
                "f",
                items(),
                concurrency=8,
                window=64,
                ordered=ordered,
                progress=lambda done, total: finished.append(done),
            ) as outcomes:
                async for o in outcomes:
                    seen.append(o.index)
                    await raised.wait()  # a slow consumer: the error comes first

    assert list(range(40)) == (seen if ordered else sorted(seen))
    assert 40 == len(server.seen)


# -- 12. the CLI never runs an item twice on a rerun ----------------------------------------------

DROPPED = {5, 12}


def job_dropping(numbers: set[int]) -> Any:
    """Answer each job with its number; cut the connection (after reading the request) for
    the numbers in *numbers*: the function may have run."""

    async def handle(request: web.Request) -> web.StreamResponse:
        n = json.loads(await request.read())["data"]["n"]
        if n in numbers:
            return await drop(request)
        return web.json_response({"code": 0, "data": n, "error": {}})

    return handle


def sent_numbers(server: Hostile, since: int = 0) -> list[int]:
    return [json.loads(seen.body)["data"]["n"] for seen in server.seen[since:]]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def cli_map(env: Mapping[str, str], *args: str) -> tuple[int, str]:
    with anyio.fail_after(90):
        done = await anyio.run_process(
            [sys.executable, "-m", "minapp_async", "map", "f", *args], env=dict(env), check=False
        )
    return done.returncode, done.stderr.decode()


async def test_cli_map_records_uncertain_items_and_never_reruns_them(
    server: Hostile, tmp_path: Path
) -> None:
    """30 items; the server cuts the connection after receiving items 5 and 12. The run
    writes a line for every item the server received, 5 and 12 with
    ``"may_have_executed": true``. A plain rerun sends none of the items the first run sent;
    a rerun with ``--retry-uncertain`` sends exactly the uncertain ones again (and their
    new lines, written later, are successes). Whether a run stops at a dropped connection or
    goes on is left open: plain reruns are repeated until every item is recorded, and no
    item may be sent by two runs."""
    server.routes[JOB_PATH] = job_dropping(DROPPED)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(30)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINAPP")}
    env |= {
        "MINAPP_ASYNC_HOME": str(tmp_path / "home"),
        "MINAPP_BASE_URL": server.url,
        "MINAPP_CLIENT_ID": CLIENT_ID,
        "MINAPP_TOKEN": TOKEN,
    }
    common = ["--input", str(source), "--output", str(out), "--concurrency", "4",
              "--no-progress"]  # fmt: skip

    sent: set[int] = set()
    recorded: set[int] = set()
    for _ in range(4):  # rerun until every item is recorded (a run may stop early)
        mark = len(server.seen)
        await cli_map(env, *common)
        now = sent_numbers(server, mark)
        assert set() == set(now) & sent, "a rerun sent items an earlier run had sent"
        assert len(now) == len(set(now)), "one run sent an item twice"
        sent |= set(now)
        recorded = {r["index"] for r in records(out)} if out.exists() else set()
        assert sent <= recorded, f"sent but not recorded: {sorted(sent - recorded)}"
        if recorded == set(range(30)):
            break

    assert set(range(30)) == recorded
    for r in records(out):
        if r["index"] in DROPPED:
            assert r.get("may_have_executed") is True, r

    uncertain = {
        r["index"]
        for r in records(out)
        if r.get("may_have_executed") is True
        and not any(o["index"] == r["index"] and "error_code" not in o for o in records(out))
    }
    server.routes[JOB_PATH] = job_dropping(set())
    mark = len(server.seen)
    await cli_map(env, *common, "--retry-uncertain")
    third_sent = sent_numbers(server, mark)

    assert DROPPED <= uncertain
    assert sorted(uncertain) == sorted(third_sent)
    last = {r["index"]: r for r in records(out)}
    assert all("error_code" not in last[n] for n in DROPPED), [last[n] for n in DROPPED]


# -- beyond the examples -------------------------------------------------------------------------


async def test_a_consumer_reading_when_the_session_closes_gets_an_error(server: Hostile) -> None:
    """A map being read while another task closes its Session: the consumer gets
    ``SessionClosedError`` (not a quiet end that looks like success), and no task is left."""
    baseline = set(asyncio.all_tasks())
    hold = anyio.Event()

    async def items() -> AsyncIterator[int]:
        yield 0
        await hold.wait()  # the input blocks: the map waits on it when the Session closes
        yield 1

    got: list[BaseException] = []
    s = Session(CLIENT_ID, base_url=server.url, token=TOKEN)
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            try:
                async for _ in s.map("f", items(), concurrency=2):
                    pass
            except Exception as exc:  # noqa: BLE001 - asserted below
                got.append(exc)

        with anyio.fail_after(30):
            tg.start_soon(consume)
            await eventually(lambda: len(server.seen) >= 1)
            await anyio.wait_all_tasks_blocked()
            await s.aclose()
    left = pending_tasks(baseline)

    assert ["SessionClosedError"] == [type(e).__name__ for e in got]
    assert [] == left


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "as-completed"])
async def test_an_input_error_waits_for_the_calls_in_flight(server: Hostile, ordered: bool) -> None:
    """The input raises while 4 calls are still in flight (their replies held): those 4 are not
    cancelled and lost; they finish, are yielded, and then the input's error is raised."""
    release = anyio.Event()
    loop = asyncio.get_running_loop()

    async def held(request: web.Request) -> web.StreamResponse:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(release.wait(), loop))
        return web.json_response({"code": 0, "data": "late", "error": {}})

    server.routes[JOB_PATH] = held

    async def items() -> AsyncIterator[int]:
        for i in range(4):
            yield i
        await eventually(lambda: len(server.seen) >= 4)
        release.set()
        raise LookupError("the input broke after 4 items")

    seen: list[int] = []
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        with anyio.fail_after(30), pytest.raises(LookupError, match="broke after 4"):
            async with s.map("f", items(), concurrency=8, ordered=ordered) as outcomes:
                async for o in outcomes:
                    assert o.ok
                    seen.append(o.index)

    assert [0, 1, 2, 3] == sorted(seen)


HUNG = {3, 4, 5, 6}


def job_hanging(numbers: set[int]) -> Any:
    """Answer each job with its number; never answer the numbers in *numbers*."""

    async def handle(request: web.Request) -> web.StreamResponse:
        n = json.loads(await request.read())["data"]["n"]
        if n in numbers:
            await asyncio.sleep(3600)  # the server's shutdown cancels it
        return web.json_response({"code": 0, "data": n, "error": {}})

    return handle


@pytest.mark.skipif(
    sys.platform == "win32", reason="Windows has no SIGINT to send to a child process"
)
async def test_cli_map_aborted_mid_flight_records_the_calls_it_cut_off(
    server: Hostile, tmp_path: Path
) -> None:
    """Ctrl-C twice (abort) while 4 sent calls hang: each is written with error_code 499 and
    ``"may_have_executed": true``; the rerun sends none of the first run's items (it finishes
    the rest), and ``--retry-uncertain`` sends exactly the 4 cut off."""
    server.routes[JOB_PATH] = job_hanging(HUNG)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(30)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINAPP")}
    env |= {
        "MINAPP_ASYNC_HOME": str(tmp_path / "home"),
        "MINAPP_BASE_URL": server.url,
        "MINAPP_CLIENT_ID": CLIENT_ID,
        "MINAPP_TOKEN": TOKEN,
    }
    common = ["--input", str(source), "--output", str(out), "--concurrency", "4",
              "--no-progress"]  # fmt: skip
    argv = [sys.executable, "-m", "minapp_async", "map", "f", *common]

    async with await anyio.open_process(argv, env=env) as proc:
        with anyio.fail_after(60):
            await eventually(lambda: set(sent_numbers(server)) >= HUNG, within=60)
            proc.send_signal(signal.SIGINT)  # once: finish the calls in flight (they hang)
            said = b""
            assert proc.stderr is not None
            while b"stopping" not in said:
                said += await proc.stderr.receive()
            proc.send_signal(signal.SIGINT)  # twice: abort
            await proc.wait()
    first = sent_numbers(server)
    by_index = {r["index"]: r for r in records(out)}

    assert 130 == proc.returncode
    assert set(first) == set(by_index), "every item sent is recorded, no other"
    for n in HUNG:
        assert (499, True) == (by_index[n]["error_code"], by_index[n]["may_have_executed"])

    server.routes[JOB_PATH] = job_hanging(set())
    mark = len(server.seen)
    code, _ = await cli_map(env, *common)
    second = sent_numbers(server, mark)
    assert 1 == code  # the output still holds the 4 uncertain failures
    assert set() == set(second) & set(first)
    assert set(range(30)) == set(first) | set(second)

    mark = len(server.seen)
    code, _ = await cli_map(env, *common, "--retry-uncertain")
    assert 0 == code
    assert sorted(HUNG) == sorted(sent_numbers(server, mark))
    last = {r["index"]: r for r in records(out)}
    assert all("error_code" not in last[n] for n in range(30)), last
