"""Shared helpers for the hardening proofs: the functions the engine runs, a counting proxy,
and counters of what a process holds (tasks, descriptors, sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import aiohttp
from aiohttp import web

USERNAME: Final = "hardy"
PASSWORD: Final = "pw-Zq81-never-logged"  # distinctive, so a leak of it is found by searching

#: Python functions, run by the engine's real Python workers; dump.js by real Node.
FUNCTIONS: Final = {
    "echo.py": "def main(event):\n    return event['data']\n",
    "whoami.py": "def main(event):\n    return event['request']['user']['id']\n",
    # The whole event and environment a function can see, to search them for secrets.
    "dump.py": (
        "import json, os\n\n"
        "def main(event):\n"
        "    return json.dumps({'event': event, 'env': dict(os.environ)})\n"
    ),
    "dump.js": (
        "exports.main = async function (event) {\n"
        "  return JSON.stringify({event: event, env: process.env})\n"
        "}\n"
    ),
}

#: Short limits keep failure paths quick; a long schedule wait keeps 1,000-call bursts from
#: failing to schedule (that path is proven separately, with a retry).
ENGINE_CONFIG: Final = {"sync_time_limit": 2.0, "concurrency": 16, "schedule_wait": 30.0}

_HOP_BY_HOP: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
)


class CountingProxy:
    """A reverse proxy on 127.0.0.1 that counts requests per path before forwarding them.

    The engine has no per-path request counter, and a client-side hook cannot see the
    Session's own login requests: this counts what really crossed the wire.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.arrivals: list[str] = []  # every request's path, in the order they came in
        self._client: aiohttp.ClientSession | None = None

    def count(self, fragment: str) -> int:
        """Requests whose path contains *fragment*."""
        return sum(fragment in path for path in self.arrivals)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        self.arrivals.append(request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            out = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP]
        response = web.Response(status=upstream.status, body=body)
        for k, v in out:
            response.headers.add(k, v)
        return response


@asynccontextmanager
async def counting_proxy(upstream: str) -> AsyncIterator[CountingProxy]:
    """Serve a CountingProxy in front of *upstream* for the duration of the block."""
    proxy = CountingProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy._forward)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proxy.url = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as client:
        proxy._client = client
        try:
            yield proxy
        finally:
            await runner.cleanup()


def open_fds() -> set[str]:
    """This process's open descriptors, as ``fd -> target`` strings (Linux /proc)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        # FileNotFoundError: the descriptor listdir itself used, closed by now.
        with contextlib.suppress(FileNotFoundError):
            found.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return found


def other_tasks(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks alive now that were not in *baseline*, the current one excluded."""
    return asyncio.all_tasks() - baseline - {asyncio.current_task()}  # type: ignore[operator]
