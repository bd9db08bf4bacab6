"""Servers written to misbehave, for the hostile-server proofs (issue 11), and the probes that
judge the client: what reached which server, peak memory, event-loop stalls, frame locals.

Each server runs an aiohttp app on 127.0.0.1 in a thread with its own event loop, so that:
the test loop's ``asyncio.all_tasks()`` holds only the client's tasks; a client that freezes
its loop cannot slow the server down (or hide behind it); and ``wait_all_tasks_blocked`` in the
test loop sees the client's tasks only. Handlers run in the server's loop: they share state
with the test through lists (appends are atomic) and ``threading.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, Final

import anyio
import attrs
from aiohttp import web

#: Distinctive secrets, so that a leak is found by searching any text for them.
CLIENT_ID: Final = "a4d2d62965ddb57fa4d6"
PASSWORD: Final = "pw-Hx93-hostile-never-shown"
CLIENT_SECRET: Final = "cs-Qm47-hostile-never-shown"
TOKEN: Final = "tok-Lr58-hostile-never-shown"
ACCESS_TOKEN: Final = "acc-Wd61-hostile-never-shown"
REFRESH_TOKEN: Final = "ref-Tb25-hostile-never-shown"
CODE: Final = "code-Yk30-hostile-never-shown"
SECRETS: Final = (PASSWORD, CLIENT_SECRET, TOKEN, ACCESS_TOKEN, REFRESH_TOKEN, CODE)

JOB_PATH: Final = "/hserve/v1/cloud-function/job/"
LOGIN_PATH: Final = "/hserve/v2.1/login/username/"
AUTHORIZE_PATH: Final = "/api/oauth2/hydrogen/openapi/authorize/"
TOKEN_PATH: Final = "/api/oauth2/access_token/"
OK_RESULT: Final = {"code": 0, "data": "ok", "error": {}}

MiB: Final = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@attrs.frozen
class Seen:
    """One request as it arrived at a hostile server."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@attrs.define
class Hostile:
    """A server on 127.0.0.1 that records every request and answers through *routes*
    (path → handler; ``"*"`` for any other path, else a 200 result)."""

    routes: dict[str, Handler] = attrs.field(factory=dict)
    url: str = ""
    seen: list[Seen] = attrs.field(factory=list)
    loop: asyncio.AbstractEventLoop | None = None

    def count(self, path: str) -> int:
        return sum(s.path == path for s in self.seen)

    def texts(self) -> list[str]:
        """Everything that arrived, as text: to search for a secret."""
        return [
            f"{s.method} {s.path} {s.headers!r} {s.body.decode('utf-8', 'replace')}"
            for s in self.seen
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # Bodies are read here so that every request is recorded, whatever its handler does.
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        handler = self.routes.get(request.path) or self.routes.get("*")
        if handler is None:
            return web.json_response(OK_RESULT)
        return await handler(request)


@contextlib.asynccontextmanager
async def hostile_server(
    routes: dict[str, Handler] | None = None, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Hostile]:
    """Serve a Hostile in its own thread and loop for the duration of the block (https with
    *ssl_context*)."""
    server = Hostile(routes=dict(routes or {}))
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    failure: list[BaseException] = []

    async def serve() -> None:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", server._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context is not None else "http"
        server.url = f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
        server.loop = asyncio.get_running_loop()
        stop.append(asyncio.Event())
        ready.set()
        try:
            await stop[0].wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="hostile-server", daemon=True)
    thread.start()
    await anyio.to_thread.run_sync(ready.wait, 10)
    if failure:
        raise failure[0]
    try:
        yield server
    finally:
        assert server.loop is not None
        server.loop.call_soon_threadsafe(stop[0].set)
        await anyio.to_thread.run_sync(thread.join, 10)


# -- replies -------------------------------------------------------------------------------------


def reply(status: int, body: bytes | str | dict[str, Any], **headers: str) -> Handler:
    """A handler that always answers *status* with *body* (a dict is sent as JSON)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    raw = body.encode() if isinstance(body, str) else body
    content_type = headers.pop("content_type", "application/json")

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, body=raw, headers={"Content-Type": content_type, **headers}
        )

    return handle


def login_reply(expires_in: Any = 3600, token: str = TOKEN) -> Handler:
    """A successful username login, with *expires_in* as given (any JSON, or raw text)."""
    expires = expires_in if isinstance(expires_in, str) else json.dumps(expires_in)
    raw = f'{{"token": "{token}", "user_id": 7, "expires_in": {expires}}}'.encode()

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=201, body=raw, content_type="application/json")

    return handle


async def hang(request: web.Request) -> web.StreamResponse:
    """Never answer (the server's shutdown cancels it)."""
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def drop(request: web.Request) -> web.StreamResponse:
    """Read the whole request, then cut the connection without a reply."""
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError  # aiohttp ends the handler quietly on a lost connection


def stream(total: int | None, *, content_length: int | None = None, cap: int) -> Handler:
    """A 200 whose body is *total* bytes of a JSON string (None: endless), announced with
    *content_length* (None: chunked). *cap*: the server stops sending after that many bytes
    and waits, so that a client without a reply cap holds at most *cap* bytes, not all of it.
    """
    chunk = b"a" * (1024 * 1024)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if content_length is not None:
            response.content_length = content_length
        await response.prepare(request)
        sent = 0
        with contextlib.suppress(ConnectionError):
            await response.write(b'{"code":0,"data":"')
            while (total is None or sent < total) and sent < cap:
                await response.write(chunk)
                sent += len(chunk)
            await asyncio.sleep(3600)  # the client must stop reading by itself
        return response

    return handle


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body inflating to *inflated* bytes of JSON string (256 MiB → about 255 KiB),
    made by streaming compression so that the inflated text never sits in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    parts = [packer.compress(b'{"code":0,"data":"')]
    block = b"a" * MiB
    for _ in range(inflated // MiB):
        parts.append(packer.compress(block))
    parts.append(packer.compress(b'"}'))
    parts.append(packer.flush())
    return b"".join(parts)


# -- probes --------------------------------------------------------------------------------------


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux, clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_kib(field: str = "VmHWM") -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class StallMeter:
    """A task that ticks every 10 ms and keeps the longest gap between two ticks: how long
    the event loop was kept from running anything else."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._running = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while self._running:
            await asyncio.sleep(0.01)
            now = loop.time()
            self.longest = max(self.longest, now - last)
            last = now

    def stop(self) -> None:
        self._running = False


def leaked_secrets(texts: Iterable[str], secrets: Iterable[str] = SECRETS) -> list[str]:
    """Which of *secrets* occur in any of *texts*, with where."""
    found = []
    for text in texts:
        for secret in secrets:
            if secret in text:
                at = text.index(secret)
                found.append(f"{secret!r} in …{text[max(0, at - 80) : at + 40]!r}…")
    return found


def _tracebacks(err: BaseException) -> Iterator[TracebackType]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            yield exc.__traceback__
        todo += [exc.__cause__, exc.__context__]
        todo += list(getattr(exc, "exceptions", ()))


def frames_of(err: BaseException) -> Iterator[FrameType]:
    """Every frame of *err*'s traceback and of its causes and contexts."""
    for tb in _tracebacks(err):
        t: TracebackType | None = tb
        while t is not None:
            yield t.tb_frame
            t = t.tb_next


def local_reprs(frame: FrameType) -> Iterator[tuple[str, str]]:
    """``(name, repr)`` of each local of *frame*, and one level into containers: what an
    error reporter such as Sentry serialises."""
    for name, value in list(frame.f_locals.items()):
        yield name, _safe_repr(value)
        if isinstance(value, dict):
            inner: list[tuple[str, Any]] = [(f"{name}[{k!r}]", v) for k, v in value.items()]
            inner += [(f"{name} key", k) for k in value]
        elif isinstance(value, list | tuple | set | frozenset):
            inner = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        for inner_name, inner_value in inner:
            yield inner_name, _safe_repr(inner_value)


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken repr is no leak
        return f"<repr failed: {exc!r}>"
    if isinstance(value, bytes | bytearray):
        text += bytes(value).decode("utf-8", "replace")
    return text


def is_sdk_frame(frame: FrameType) -> bool:
    return bool(re.match(r"minapp_async(\.|$)", str(frame.f_globals.get("__name__", ""))))
