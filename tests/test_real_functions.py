"""Realistic cloud functions, modelled on the platform's documented examples, run by a real
``minapp-async serve`` subprocess with the official JS SDK (tests/js/compat.cjs) as the front-end:
a lottery draw, an order a timer cancels (fired now by the CLI), a table trigger keeping a
counter, and a function calling another. Tables are seeded by the functions folder's
``minapp.tables.json`` and triggers come from its ``minapp.triggers.json``; what the functions
did is read back through functions the front-end calls, as an app would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from test_js_sdk_compat import HARNESS, HARNESS_TIMEOUT, LOTTERY_JS, Run, _node

from minapp_async.engine import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

pytestmark = pytest.mark.anyio
node = _node  # the fixture: Node, with the pinned SDK installed

DEADLINE = 30.0
USERNAME, PASSWORD = "lily", "lily-password-1"


class Serve:
    """A ``serve`` subprocess: its URL, and the job lines it prints as jobs finish."""

    def __init__(self, process: Process, reader: BufferedByteReceiveStream) -> None:
        self.process = process
        self._reader = reader
        self.url = ""

    async def line(self) -> str:
        with anyio.fail_after(DEADLINE):
            return (await self._reader.receive_until(b"\n", 1 << 20)).decode()

    async def finished(self, function: str, count: int = 1) -> list[str]:
        """The statuses of the next *count* jobs of *function* to finish."""
        pattern = re.compile(rf" {re.escape(function)} \[\w+\] (\w+)(?: in \d+ ms)? \((?:a)?sync,")
        statuses: list[str] = []
        while len(statuses) < count:
            found = pattern.search(await self.line())
            if found:
                statuses.append(found.group(1))
        return statuses


@asynccontextmanager
async def serve(files: dict[str, Any], tmp_path: Path) -> AsyncIterator[Serve]:
    functions = tmp_path / "functions"
    functions.mkdir()
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        (functions / name).write_text(text, encoding="utf-8")
    process = await anyio.open_process(
        [sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
         "--port", "0", "--sync-time-limit", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    async with process:
        try:
            assert process.stdout is not None
            server = Serve(process, BufferedByteReceiveStream(process.stdout))
            while True:
                line = await server.line()
                if "serving " in line:
                    server.url = line.split("serving ", 1)[1].split()[0]
                if "press Ctrl-C" in line:
                    break
            assert server.url, "serve printed no URL"
            yield server
        finally:
            if process.returncode is None:
                process.kill()


async def front_end(node: str, server: Serve, how: str, calls: list[tuple[str, str, Any]]) -> Run:
    """The official SDK (web build) as a user who registers or logs in, then invokes
    ``(step, function, data)`` in order."""
    listed = [{"step": s, "function": f, "data": d} for s, f, d in calls]
    command = [node, str(HARNESS), server.url, DEFAULT_CLIENT_ID, "web", "calls",
               USERNAME, PASSWORD, how, json.dumps(listed)]  # fmt: skip
    with anyio.fail_after(HARNESS_TIMEOUT):
        done = await anyio.run_process(command, check=False)
    stdout = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, f"harness exit {done.returncode}\n{stdout}\n{done.stderr!r}"
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines and lines[-1] == {"done": True}, stdout
    return Run(lines)


def data(run: Run, step: str) -> Any:
    """A step's function result (the envelope's data), failing unless the call succeeded."""
    reply = run.value(step)
    assert reply["code"] == 0, reply
    return reply["data"]


# ---------------------------------------------------------------- the lottery

MY_PRIZES_JS = """\
exports.main = async (event) => {
  const q = new BaaS.Query()
  q.compare('created_by', '=', event.request.user.id)
  const res = await new BaaS.TableObject('lottery_record').setQuery(q).orderBy('created_at').find()
  return res.data.objects.map((r) => r.prize)
}
"""
PRIZES_LEFT_JS = """\
exports.main = async () => {
  const res = await new BaaS.TableObject('prize').orderBy('name').find()
  return Object.fromEntries(res.data.objects.map((p) => [p.name, p.stock]))
}
"""


async def test_a_lottery_draw(node: str, tmp_path: Path) -> None:
    """The user draws twice: the function queries the prizes in stock, picks one, updates its
    stock, records the win for the user and notifies them."""
    prizes = [
        {"name": "mug", "stock": 1},
        {"name": "pen", "stock": 0},
        {"name": "book", "stock": 2},
    ]
    files = {
        "lottery.js": LOTTERY_JS,
        "myPrizes.js": MY_PRIZES_JS,
        "prizesLeft.js": PRIZES_LEFT_JS,
        "minapp.tables.json": {"tables": {"prize": {"rows": prizes}}},
    }
    async with serve(files, tmp_path) as server:
        run = await front_end(node, server, "register", [
            ("draw-0", "lottery", {"seed": 0}),
            ("draw-1", "lottery", {"seed": 1}),
            ("mine", "myPrizes", {}),
            ("left", "prizesLeft", {}),
        ])  # fmt: skip
        assert data(run, "draw-0") == {"won": True, "prize": "mug"}
        assert data(run, "draw-1") == {"won": True, "prize": "book"}
        assert data(run, "mine") == ["mug", "book"]
        assert data(run, "left") == {"book": 1, "mug": 0, "pen": 0}


# ---------------------------------------------------------------- an order a timer cancels

CREATE_ORDER_JS = """\
exports.main = async (event) => {
  const order = new BaaS.TableObject('order').create()
  order.set({ item: event.data.item, status: 'pending', created_by: event.request.user.id })
  const res = await order.save()
  return res.data.id
}
"""
PAY_ORDER_JS = """\
exports.main = async (event) => {
  const order = new BaaS.TableObject('order').getWithoutData(event.data.id)
  order.set('status', 'paid')
  return (await order.update()).data.status
}
"""
GET_ORDER_JS = """\
exports.main = async (event) => (await new BaaS.TableObject('order').get(event.data.id)).data.status
"""
# The documented use of a timer: cancel the orders still unpaid after a while.
CANCEL_ORDERS_JS = """\
exports.main = async (event) => {
  const q = new BaaS.Query()
  q.compare('status', '=', 'pending')
  q.compare('created_at', '<=', Math.floor(Date.now() / 1000) - event.data.older_than_seconds)
  const stale = new BaaS.TableObject('order').getWithoutData(q)
  stale.set('status', 'cancelled')
  const res = await stale.update()
  console.log('cancelled', res.data.succeed)
  return res.data.succeed
}
"""


async def test_an_order_a_timer_cancels(node: str, tmp_path: Path) -> None:
    """The user creates two orders and pays one; the timer, fired now with the CLI, cancels
    the unpaid one only."""
    files = {
        "createOrder.js": CREATE_ORDER_JS,
        "payOrder.js": PAY_ORDER_JS,
        "getOrder.js": GET_ORDER_JS,
        "cancelOrders.js": CANCEL_ORDERS_JS,
        "minapp.triggers.json": {
            "timers": [
                {"name": "cancelUnpaid", "function": "cancelOrders", "cron": "0 4 1 1 *",
                 "params": {"older_than_seconds": 0}},
            ]
        },
    }  # fmt: skip
    async with serve(files, tmp_path) as server:
        run = await front_end(node, server, "register", [
            ("unpaid", "createOrder", {"item": "tea"}),
            ("paid", "createOrder", {"item": "cake"}),
        ])  # fmt: skip
        unpaid, paid = data(run, "unpaid"), data(run, "paid")
        run = await front_end(node, server, "login", [("pay", "payOrder", {"id": paid})])
        assert data(run, "pay") == "paid"

        env = {**os.environ, "MINAPP_CLIENT_SECRET": DEFAULT_CLIENT_SECRET}
        with anyio.fail_after(DEADLINE):
            fired = await anyio.run_process(
                [sys.executable, "-m", "minapp_async", "timers", "fire", "cancelUnpaid",
                 "--base-url", server.url, "--client-id", DEFAULT_CLIENT_ID],
                env=env,
                check=False,
            )  # fmt: skip
        assert fired.returncode == 0, fired.stderr.decode()
        assert await server.finished("cancelOrders") == ["fulfilled"]

        run = await front_end(node, server, "login", [
            ("unpaid", "getOrder", {"id": unpaid}),
            ("paid", "getOrder", {"id": paid}),
        ])  # fmt: skip
        assert (data(run, "unpaid"), data(run, "paid")) == ("cancelled", "paid")


# ---------------------------------------------------------------- a trigger keeping a counter

ADD_COMMENT_JS = """\
exports.main = async (event) => {
  const comment = new BaaS.TableObject('comment').create()
  comment.set({ post: event.data.post, text: event.data.text, approved: event.data.approved })
  return (await comment.save()).data.id
}
"""
# Run by the table trigger: event.data is the new comment (V1), as the platform documents.
COUNT_COMMENTS_JS = """\
exports.main = async (event) => {
  const q = new BaaS.Query()
  q.compare('post', '=', event.data.post)
  const stats = new BaaS.TableObject('post_stats').getWithoutData(q)
  stats.incrementBy('comments', 1)
  await stats.update()
  return event.data.id
}
"""
POST_STATS_JS = """\
exports.main = async () => {
  const res = await new BaaS.TableObject('post_stats').orderBy('post').find()
  return Object.fromEntries(res.data.objects.map((s) => [s.post, s.comments]))
}
"""


async def test_a_table_trigger_updates_a_counter(node: str, tmp_path: Path) -> None:
    """Each approved comment a user adds fires the trigger, whose function counts it on its
    post; unapproved comments (the trigger's condition) are not counted."""
    files = {
        "addComment.js": ADD_COMMENT_JS,
        "countComments.js": COUNT_COMMENTS_JS,
        "postStats.js": POST_STATS_JS,
        "minapp.tables.json": {
            "tables": {"post_stats": {"rows": [{"post": "p1", "comments": 0},
                                               {"post": "p2", "comments": 0}]}}
        },
        "minapp.triggers.json": {
            "table_triggers": [
                {"name": "countApproved", "table": "comment", "events": ["create"],
                 "function": "countComments", "where": {"approved": {"$eq": True}}},
            ]
        },
    }  # fmt: skip
    comments = [("p1", True), ("p1", True), ("p2", False), ("p2", True), ("p1", False)]
    async with serve(files, tmp_path) as server:
        run = await front_end(node, server, "register", [
            (f"comment-{i}", "addComment", {"post": post, "text": f"#{i}", "approved": ok})
            for i, (post, ok) in enumerate(comments)
        ])  # fmt: skip
        ids = [data(run, f"comment-{i}") for i in range(len(comments))]
        assert await server.finished("countComments", 3) == ["fulfilled"] * 3

        run = await front_end(node, server, "login", [("stats", "postStats", {})])
        assert data(run, "stats") == {"p1": 2, "p2": 1}
        assert len(set(ids)) == len(comments)


# ---------------------------------------------------------------- a function calling another

CHECKOUT_JS = """\
exports.main = async (event) => {
  const priced = await BaaS.invoke('price', { items: event.data.items })
  await BaaS.invoke('audit', { user: event.request.user.id }, false)
  return { total: priced.data, code: priced.code, user: event.request.user.id }
}
"""
PRICE_PY = """\
PRICES = {"tea": 12, "cake": 30}


def main(event):
    assert event["eventType"] == "cloud_function"
    return sum(PRICES[item] for item in event["data"]["items"])
"""
AUDIT_JS = "exports.main = async (event) => ({ audited: event.data.user })\n"


async def test_a_function_calling_another(node: str, tmp_path: Path) -> None:
    """checkout calls a Python function synchronously (its result as the platform documents)
    and another asynchronously (it runs as its own job)."""
    files = {"checkout.js": CHECKOUT_JS, "price.py": PRICE_PY, "audit.js": AUDIT_JS}
    async with serve(files, tmp_path) as server:
        run = await front_end(node, server, "register", [
            ("checkout", "checkout", {"items": ["tea", "cake", "tea"]}),
        ])  # fmt: skip
        user = run.value("register")["id"]
        assert data(run, "checkout") == {"total": 54, "code": 0, "user": user}
        assert await server.finished("audit") == ["fulfilled"]
