"""The engine's HTTP connections: each must bring a complete request within ``idle_timeout``,
and what aiohttp's parser refuses (a garbage request line, a 1 MB header, a bad chunk) gets a
JSON ``error_msg`` reply like every other error.

aiohttp's own connection handler answers parser errors in text/plain and, before 3.14, armed
its keep-alive timer only after a first reply, so a connection that never sent a complete
request stayed open for good. :class:`EngineRequestHandler` is aiohttp's handler with those
two changes, and :class:`EngineSite` is a TCP site whose connections use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from yarl import URL

from ..._logs import get_logger
from ..._protocol import error_reply

logger = get_logger("minapp_async.engine")

__all__ = ["EngineRequestHandler", "EngineSite"]


class EngineRequestHandler(web.RequestHandler):
    """One HTTP connection. Idle keep-alive and slow headers are both bounded by
    *idle_timeout*: aiohttp closes a connection that has no complete request that long after
    a reply; this class does the same from the moment the connection opens."""

    def __init__(self, manager: web.Server, *, idle_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=idle_timeout, **kwargs)
        self._idle_timeout = idle_timeout
        self._first_request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._first_request_timer = asyncio.get_running_loop().call_later(
            self._idle_timeout, self._no_request_in_time
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        self.request_arrived()
        super().connection_lost(exc)

    def request_arrived(self) -> None:
        """A request's headers are in (called by the middleware): the first-request timer
        stops; from here on aiohttp's keep-alive timer watches the connection."""
        if self._first_request_timer is not None:
            self._first_request_timer.cancel()
            self._first_request_timer = None

    def _no_request_in_time(self) -> None:
        self._first_request_timer = None
        logger.debug("closing a connection with no complete request in %g s", self._idle_timeout)
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The reply to a request aiohttp could not parse or hand to the app: JSON, and the
        connection is closed after it (its byte stream can no longer be trusted)."""
        self.request_arrived()
        if request.writer.output_size > 0:
            raise ConnectionError("the reply had begun: no error reply can follow it")
        if status >= 500:
            logger.error("error handling a request from %s", request.remote, exc_info=exc)
            text = "internal engine error; see the engine's log"
        else:
            detail = (message or (str(exc) if exc is not None else "")).strip()
            logger.debug("malformed HTTP request from %s: %s", request.remote, detail)
            text = f"malformed HTTP request: {detail}" if detail else "malformed HTTP request"
        response = web.json_response(error_reply(text), status=status)
        response.force_close()
        return response


class EngineSite(web.BaseSite):
    """A TCP site like ``web.TCPSite`` whose connections are :class:`EngineRequestHandler`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, idle_timeout: float
    ) -> None:
        super().__init__(runner)
        self._engine_runner = runner
        self._host = host
        self._port = port
        self._idle_timeout = idle_timeout

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._engine_runner.server
        assert server is not None, "the runner is set up before its sites start"
        idle_timeout = self._idle_timeout
        self._server = await loop.create_server(
            lambda: EngineRequestHandler(server, loop=loop, idle_timeout=idle_timeout),
            self._host,
            self._port,
        )
