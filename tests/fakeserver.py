"""A small aiohttp server that records every request and answers as told: the misbehaving
server for the SDK's wire and failure tests (the engine covers real behaviour)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The client ID the SDK tests use (the one in PROTOCOL.md's captures).
CLIENT_ID = "a4d2d62965ddb57fa4d6"


@attrs.frozen
class Recorded:
    """One request as it arrived: header names with their case, the body byte for byte."""

    method: str
    path: str
    raw_headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def header_names(self) -> list[str]:
        return [k for k, _ in self.raw_headers]

    def header(self, name: str) -> str | None:
        for k, v in self.raw_headers:
            if k.lower() == name.lower():
                return v
        return None


@attrs.define
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b'{"code":0,"data":null,"error":{}}'
    headers: dict[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"
    hang: bool = False  # never answer (until the client gives up)


@attrs.define
class FakeServer:
    """Records requests; answers with queued replies, a custom handler per path, or 200."""

    url: str = ""
    requests: list[Recorded] = attrs.field(factory=list)
    replies: list[Reply] = attrs.field(factory=list)
    handlers: dict[str, Handler] = attrs.field(factory=dict)
    stopping: asyncio.Event = attrs.field(factory=asyncio.Event)  # releases hung replies

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def json_reply(self, status: int, body: Any, **kw: Any) -> None:
        self.replies.append(Reply(status=status, body=json.dumps(body).encode(), **kw))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                request.method,
                request.path_qs,
                tuple((k.decode(), v.decode()) for k, v in request.raw_headers),
                body,
            )
        )
        handler = self.handlers.get(request.path)
        if handler is not None:
            return await handler(request)
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.hang:
            await self.stopping.wait()
        payload = reply.body
        if isinstance(payload, dict | list):
            payload = json.dumps(payload).encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        return web.Response(
            status=reply.status,
            body=payload,
            headers={"Content-Type": reply.content_type, **reply.headers},
        )


@asynccontextmanager
async def fake_server() -> AsyncIterator[FakeServer]:
    """Serve a FakeServer on 127.0.0.1, port 0, for the duration of the block."""
    server = FakeServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server._handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.stopping.set()
        await runner.cleanup()
