"""The engine's HTTP guarantees held by a real ``minapp-async serve`` process, its defaults on
(durable state, contained workers): foreign Host names and origins refused, idle and malformed
connections answered and closed, a full async queue refused with 503 and Retry-After, and a
big result read back whole. The in-process tests cover each in detail; these prove the
command a developer runs does the same."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from engine_api import Api
from support import wait_until

from minapp_async.engine import DEFAULT_CLIENT_ID

pytestmark = pytest.mark.anyio

DEADLINE = 30.0

#: Holds its slot until the test creates the file it names; says when it started.
GATE_PY = """\
import os, time

def main(event):
    data = event["data"]
    open(data["started"], "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(data["release"]):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return "released"
"""
MARK_PY = 'def main(event):\n    open(event["data"], "w").close()\n    return 1\n'
BIG_PY = 'def main(event):\n    return "x" * event["data"]\n'
HELLO_PY = 'def main(event):\n    return "hello " + event["data"]["name"]\n'


class _Remote:
    """What Api needs of an engine: its URL and client ID."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = DEFAULT_CLIENT_ID


@asynccontextmanager
async def serve(tmp_path: Path, *args: str) -> AsyncIterator[tuple[Api, Path]]:
    """``serve`` over a folder of this module's functions, on a free port; an Api for it."""
    functions = tmp_path / "functions"
    functions.mkdir()
    for name, source in {
        "gate.py": GATE_PY,
        "mark.py": MARK_PY,
        "big.py": BIG_PY,
        "hello.py": HELLO_PY,
    }.items():
        (functions / name).write_text(source)
    process = await anyio.open_process(
        [sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
         "--port", "0", "--allow-anonymous", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    async with process, aiohttp.ClientSession() as http:
        try:
            assert process.stdout is not None
            reader = BufferedByteReceiveStream(process.stdout)
            url = ""
            with anyio.fail_after(DEADLINE):  # the banner, up to its last line
                while True:
                    line = (await reader.receive_until(b"\n", 1 << 16)).decode()
                    if found := re.search(r"serving (http://\S+)", line):
                        url = found[1]
                    if "press Ctrl-C" in line:
                        break
            assert url, "serve printed no URL"
            yield Api(_Remote(url), http), functions  # type: ignore[arg-type]
        finally:
            if process.returncode is None:
                process.kill()


async def assert_serving(api: Api) -> None:
    reply = await api.invoke(await api.anonymous_token(), "hello", {"name": "x"})
    assert reply.body == {"code": 0, "data": "hello x", "error": {}}, reply


async def test_foreign_hosts_and_origins_are_refused(tmp_path: Path) -> None:
    """A DNS-rebound Host name gets 403 naming --allow-host; a loopback origin passes the CORS
    preflight, a foreign one gets 403 and no Access-Control-Allow-Origin."""
    async with serve(tmp_path) as (api, _):
        http, url = api.session, api.engine.url
        login = url + "/hserve/v2.0/login/anonymous/"
        headers = {"Host": "evil.example", "X-Hydrogen-Client-ID": DEFAULT_CLIENT_ID}
        async with http.post(login, json={}, headers=headers) as resp:
            assert resp.status == 403
            assert "--allow-host" in (await resp.json())["error_msg"]
        preflight = {"Access-Control-Request-Method": "POST"}
        good, bad = "http://localhost:5173", "https://evil.example"
        async with http.options(login, headers={"Origin": good, **preflight}) as resp:
            assert (resp.status, resp.headers["Access-Control-Allow-Origin"]) == (204, good)
        async with http.options(login, headers={"Origin": bad, **preflight}) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        await assert_serving(api)


async def test_idle_and_malformed_connections_are_answered_and_closed(tmp_path: Path) -> None:
    """With --idle-timeout 1, a connection that sends nothing is closed; a garbage request
    line gets a JSON error_msg; and the engine keeps serving."""
    async with serve(tmp_path, "--idle-timeout", "1") as (api, _):
        host, port = api.engine.url.removeprefix("http://").rsplit(":", 1)
        idle = await anyio.connect_tcp(host, int(port))
        async with idle:
            with anyio.fail_after(DEADLINE), pytest.raises(anyio.EndOfStream):
                await idle.receive()  # nothing comes but the end
        garbage = await anyio.connect_tcp(host, int(port))
        async with garbage:
            await garbage.send(b"GARBAGE\r\n\r\n")
            raw = b""
            with anyio.fail_after(DEADLINE), pytest.raises(anyio.EndOfStream):
                while True:
                    raw += await garbage.receive()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 400 ", head), raw[:200]
        assert json.loads(body)["error_msg"].startswith("malformed HTTP request")
        await assert_serving(api)


async def test_a_full_queue_is_refused_with_retry_after_then_drains(tmp_path: Path) -> None:
    """One slot held by a running job and two queued: the next async call gets 503 with
    Retry-After and error_msg; once the slot frees, every accepted job runs."""
    async with serve(tmp_path, "--concurrency", "1", "--max-queued-jobs", "2") as (api, folder):
        token = await api.anonymous_token()
        started, release = folder / "started", folder / "release"
        gate = {"started": str(started), "release": str(release)}
        assert (await api.invoke(token, "gate", gate, sync=False)).body == {"status": "ok"}
        await wait_until(started.exists, what="the gate to hold the slot", within=DEADLINE)
        marks = [folder / f"mark{i}" for i in range(3)]
        for mark in marks[:2]:
            reply = await api.invoke(token, "mark", str(mark), sync=False)
            assert reply.body == {"status": "ok"}, reply
        refused = await api.invoke(token, "mark", str(marks[2]), sync=False)
        assert refused.status == 503
        assert refused.headers["Retry-After"]
        assert "queue is full" in refused.error_msg
        release.touch()
        await wait_until(
            lambda: all(m.exists() for m in marks[:2]), what="the queued jobs", within=DEADLINE
        )
        assert not marks[2].exists()  # the refused one never ran
        await assert_serving(api)


async def test_a_big_result_comes_back_whole(tmp_path: Path) -> None:
    """A 24 MiB result travels worker → engine → client intact, and the engine keeps serving."""
    size = 24 * 1024 * 1024
    async with serve(tmp_path) as (api, _):
        with anyio.fail_after(DEADLINE):
            reply = await api.invoke(await api.anonymous_token(), "big", size)
        assert reply.status == 200
        assert reply.body["code"] == 0
        assert reply.body["data"] == "x" * size
        await assert_serving(api)
