"""The engine's connections, over raw sockets: malformed HTTP gets a JSON ``error_msg`` and
the engine keeps serving; connections with no complete request are closed after
``idle_timeout`` (idle keep-alive, never a request, or headers that stall)."""

from __future__ import annotations

import contextlib
import json
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest
from anyio.abc import SocketStream
from engine_api import FUNCTIONS, Api

from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

DEADLINE = 30.0


def address(engine: Engine) -> tuple[str, int]:
    host, port = engine.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@asynccontextmanager
async def connect(engine: Engine) -> AsyncIterator[SocketStream]:
    async with await anyio.connect_tcp(*address(engine)) as stream:
        yield stream


async def read_to_eof(stream: SocketStream) -> bytes:
    """Everything the engine sends until it closes the connection."""
    data = b""
    with anyio.fail_after(DEADLINE):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            pass
    return data


async def exchange(engine: Engine, request: bytes) -> bytes:
    """Send *request* (as much of it as the engine takes) and read the reply."""
    async with connect(engine) as stream:
        # The engine may answer and close before it has taken it all.
        with contextlib.suppress(anyio.BrokenResourceError, ConnectionResetError, BrokenPipeError):
            await stream.send(request)
        return await read_to_eof(stream)


def json_reply(raw: bytes) -> tuple[int, str, dict[str, object]]:
    """Status, content type and JSON body of one raw HTTP reply."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers.get("Content-Type", ""), json.loads(body)


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    async with running_engine(FUNCTIONS, allow_anonymous=True) as engine:
        yield engine


async def assert_serving(engine: Engine) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(engine, http)
        reply = await api.invoke(await api.anonymous_token(), "helloWorld", {"name": "x"})
        assert reply.body == {"code": 0, "data": "hello x", "error": {}}


@pytest.mark.parametrize(
    ("request_bytes", "detail"),
    [
        (b"GARBAGE\r\n\r\n", "malformed HTTP request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "malformed HTTP request"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 1024 * 1024 + b"\r\n\r\n", ""),
        (b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", "malformed HTTP request"),
        (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", "malformed HTTP request"),
    ],
    ids=["garbage-line", "tls-hello", "1mb-header", "bad-header", "bad-version"],
)
async def test_malformed_http_gets_a_json_error(
    engine: Engine, request_bytes: bytes, detail: str
) -> None:
    """What aiohttp's parser refuses is a 4xx JSON error_msg, and the engine keeps serving."""
    raw = await exchange(engine, request_bytes)
    status, content_type, body = json_reply(raw)
    assert 400 <= status < 500, raw[:300]
    assert content_type.startswith("application/json")
    assert body["status"] == "error"
    assert isinstance(body["error_msg"], str)
    assert body["error_msg"].startswith("malformed HTTP request")
    assert detail in body["error_msg"]
    await assert_serving(engine)


async def test_a_bad_chunk_gets_a_json_error(engine: Engine) -> None:
    """A chunked body with a chunk size that is not hex is a 4xx JSON reply."""
    raw = await exchange(
        engine,
        b"POST /hserve/v2.0/login/anonymous/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"X-Hydrogen-Client-ID: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
    )
    status, content_type, body = json_reply(raw)
    assert 400 <= status < 500, raw[:300]
    assert content_type.startswith("application/json")
    assert isinstance(body["error_msg"], str) and body["error_msg"]
    await assert_serving(engine)


async def test_json_nested_too_deeply_is_a_400(engine: Engine) -> None:
    """A body nested deeper than the engine takes, even one Python could still parse, is a
    400 naming the limit (a function's deep result: the tests below)."""
    async with aiohttp.ClientSession() as http:
        api = Api(engine, http)
        token = await api.anonymous_token()
        for depth in (600, 900):
            data = "[" * depth + "]" * depth
            reply = await api.request(
                "POST",
                "/hserve/v1/cloud-function/job/",
                data=f'{{"function_name": "echo", "data": {data}}}',
                headers=api.hserve_headers(token),
            )
            assert (400, "request body is nested too deeply: at most 500 levels") == (
                reply.status,
                reply.error_msg,
            )
    await assert_serving(engine)


#: Deeper than any Python's JSON parser goes (3.10 and 3.11 stop near 1,000 levels, 3.12 near
#: 1,500, 3.13 near 10,000) and than Node's JSON.stringify goes on its default stack (~4,000).
TOO_DEEP = 20_000


async def test_a_deeply_nested_result_is_a_clear_failure() -> None:
    """A function whose result is nested deeper than its worker can write it fails, saying
    so (not a hang to the time limit, not a 500), and the engine keeps serving."""
    deep_js = (
        "exports.main = async () => {\n"
        f"  let x = []\n  for (let i = 0; i < {TOO_DEEP}; i++) x = [x]\n  return x\n}}\n"
    )
    async with running_engine({**FUNCTIONS, "deep.js": deep_js}, allow_anonymous=True) as engine:
        async with aiohttp.ClientSession() as http:
            api = Api(engine, http)
            with anyio.fail_after(DEADLINE):
                reply = await api.invoke(await api.anonymous_token(), "deep", {})
            # The function failed (a 200 carrying code 1, as any failed function).
            assert (200, 1, None) == (reply.status, reply.body["code"], reply.body["data"])
            message = reply.body["error"]["message"]
            assert "result is not JSON-serialisable: Maximum call stack size exceeded" in message
        await assert_serving(engine)


async def test_a_deeply_nested_python_result_is_a_clear_failure() -> None:
    """The same for a Python function: its worker says the result cannot be written (its
    RecursionError is not a crash of the worker), and the next call reuses that worker."""
    deep_py = (
        "import os\n\nWORKER = os.urandom(8).hex()\n\ndef main(event):\n"
        "    if event['data'].get('worker'):\n        return WORKER\n"
        f"    x = []\n    for _ in range({TOO_DEEP}):\n        x = [x]\n    return x\n"
    )
    async with running_engine({**FUNCTIONS, "deep.py": deep_py}, allow_anonymous=True) as engine:
        async with aiohttp.ClientSession() as http:
            api = Api(engine, http)
            token = await api.anonymous_token()
            with anyio.fail_after(DEADLINE):
                before = await api.invoke(token, "deep", {"worker": True})
                reply = await api.invoke(token, "deep", {})
                after = await api.invoke(token, "deep", {"worker": True})
            assert (200, 1, None) == (reply.status, reply.body["code"], reply.body["data"])
            message = reply.body["error"]["message"]
            assert "result is not JSON-serialisable" in message, message
            assert reply.body["error"]["type"] == "RecursionError"
            assert before.body["data"] == after.body["data"]  # the same worker served both
        await assert_serving(engine)


async def test_a_worker_message_too_deep_to_parse_is_a_clear_failure() -> None:
    """A line on the worker's message channel nested deeper than the engine's JSON parser
    goes, on every Python, fails the job with a 400 saying so (not a hang to the time limit,
    not a 500), and the engine keeps serving. No worker writes such a result itself (see
    above), so the function writes the line on its worker's message fd (argv[2]) and waits."""
    line = "[" * TOO_DEEP + "]" * TOO_DEEP + "\n"
    deep_js = (
        "const fs = require('fs')\n"
        "exports.main = async () => {\n"
        f"  fs.writeSync(Number(process.argv[2]), {json.dumps(line)})\n"
        "  return new Promise(() => {})  // the engine ends the job on reading that line\n"
        "}\n"
    )
    async with running_engine({**FUNCTIONS, "deep.js": deep_js}, allow_anonymous=True) as engine:
        async with aiohttp.ClientSession() as http:
            api = Api(engine, http)
            with anyio.fail_after(DEADLINE):
                reply = await api.invoke(await api.anonymous_token(), "deep", {})
            assert 400 == reply.status
            assert "nested too deeply" in reply.error_msg
        await assert_serving(engine)


def _raise_fd_limit(wanted: int) -> int:
    """The soft RLIMIT_NOFILE, raised towards *wanted* as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def test_idle_and_stalled_connections_are_closed() -> None:
    """1,100 sockets that never send a request, one that sends half a request line and
    stalls, and one idle after a reply: a real call still succeeds, and the engine closes
    every one of them after idle_timeout."""
    count = 1100
    # Both ends of every socket live in this process, plus the workers' pipes.
    soft = _raise_fd_limit(2 * count + 512)
    if soft < 2 * count + 256:
        count = (soft - 256) // 2
    async with running_engine(FUNCTIONS, allow_anonymous=True, idle_timeout=3.0) as engine:
        streams: list[SocketStream] = []
        try:
            for _ in range(count):
                streams.append(await anyio.connect_tcp(*address(engine)))
            stalled = await anyio.connect_tcp(*address(engine))
            streams.append(stalled)
            await stalled.send(b"POST /hserve/v1/cloud-function/job/ HTTP/1.1\r\nHost: 127.")
            after_reply = await anyio.connect_tcp(*address(engine))
            streams.append(after_reply)
            await after_reply.send(
                b"GET /hserve/v1/latest-sdk-version/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )

            await assert_serving(engine)

            closed: list[bytes] = []

            async def wait_closed(stream: SocketStream) -> None:
                closed.append(await read_to_eof(stream))

            async with anyio.create_task_group() as tg:
                for stream in streams:
                    tg.start_soon(wait_closed, stream)
            assert len(closed) == count + 2
            # Nothing is sent to a connection that never finished a request; the one that
            # did got its reply before it was closed.
            replies = [data for data in closed if data]
            assert len(replies) == 1 and replies[0].startswith(b"HTTP/1.1 200 ")
        finally:
            for stream in streams:
                await stream.aclose()
        await assert_serving(engine)
