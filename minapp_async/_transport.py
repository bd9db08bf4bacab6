"""The only module that touches aiohttp: one pooled ``ClientSession``, bytes in, bytes out.

Every aiohttp exception is translated here, at this one boundary, into an ``HError``. The pool
is guarded by our own semaphore so that waiting for a connection is a phase we can see: a call
that times out there raises ``PoolTimeoutError`` and is known not to have been sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, nullcontext
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs

from ._errors import (
    ErrorDetails,
    NetworkError,
    PoolTimeoutError,
    RequestTimeoutError,
    SessionClosedError,
)
from ._logs import get_logger
from ._options import Limits, Timeouts
from ._protocol import REQUEST_ID_HEADER
from ._secrets import Sealed

logger = get_logger()

Phase = Literal["pool", "auth", "send"]


@attrs.frozen
class PoolStats:
    """A snapshot of a Session's connection pool: ``session.pool_stats``. Read-only.

    Attributes:
        size: connections one host may have at once (``Limits.pool_size``; 0 = unbounded).
        in_use: calls holding one of those ``size`` slots right now.
        waiting: calls queued for a slot (a queued call times out with ``PoolTimeoutError``).
        connections: aiohttp connections checked out right now (auth requests, which skip
            the queue, included).
        idle: open keep-alive connections waiting to be reused.
        opened: the pool exists (it is made on first use) and is not closed.
    """

    size: int
    in_use: int
    waiting: int
    connections: int
    idle: int
    opened: bool


@attrs.define
class Attempt:
    """Where one call got to: decides whether a failure may have run the function."""

    phase: Phase = "auth"
    sent: bool = False  # True once this try's request may have reached the server
    number: int = 1  # which try this is
    sent_before: bool = False  # an earlier try may have run the function

    def next(self, *, executed: bool) -> None:
        """Start the next try; *executed*: the failed one may have run the function."""
        self.sent_before = self.sent_before or executed
        self.phase, self.sent, self.number = "auth", False, self.number + 1

    @property
    def may_have_executed(self) -> bool:
        """Any try so far may have run the function."""
        return self.sent or self.sent_before


@attrs.define  # not frozen: frozen attrs classes pay for object.__setattr__ on every field
class RawResponse:
    """A whole reply, read into memory. Strictly private: treat as read-only."""

    status: int
    body: bytes = attrs.field(repr=False)
    content_type: str
    request_id: str | None
    retry_after: str | None = None
    location: str | None = None  # a redirect's Location, which is never followed here


class CookieFlow:
    """A private cookie jar for requests that need one (the Open API's authorize step):
    from ``Transport.cookie_flow()``, passed to ``Transport.request(cookies=...)``."""

    __slots__ = ("_session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session


def _details(method: str, url: str) -> ErrorDetails:
    # Computed only on failure: parsing the URL on every request would cost a microsecond.
    return ErrorDetails(method=method, path=urlsplit(url).path)


class Transport:
    """A lazily created, pooled aiohttp ``ClientSession`` and the exception boundary.

    Strictly private: the Session owns exactly one and shares it with its views.
    """

    def __init__(self, limits: Limits, timeouts: Timeouts, headers: Mapping[str, str]) -> None:
        self._limits = limits
        # Sent with every request; each request's own headers add to or replace them. As the
        # aiohttp session's defaults they cost less per request than merged in every time.
        self.headers = dict(headers)
        self._connect_timeout = timeouts.connect
        self._client: aiohttp.ClientSession | None = None
        self._pool: anyio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def opened(self) -> bool:
        """An aiohttp session exists and still has to be closed."""
        return self._client is not None and not self._client.closed

    @property
    def closed(self) -> bool:
        """``aclose()`` was called: later requests raise ``SessionClosedError``."""
        return self._closed

    @property
    def pool_size(self) -> int:
        """Connections one host can have at once (0 = unbounded)."""
        return self._limits.pool_size

    def stats(self) -> PoolStats:
        """A snapshot of the pool."""
        pool, client = self._pool, self._client
        connections = idle = 0
        if client is not None and not client.closed:
            # aiohttp has no public count of its connections: this is the one place that
            # reads it, next to the only code that makes the connector.
            connector = client.connector
            if isinstance(connector, aiohttp.BaseConnector):
                connections = len(connector._acquired)
                idle = sum(len(conns) for conns in connector._conns.values())
        return PoolStats(
            size=self._limits.pool_size,
            in_use=0 if pool is None else self._limits.pool_size - pool.value,
            waiting=0 if pool is None else pool.statistics().tasks_waiting,
            connections=connections,
            idle=idle,
            opened=self.opened,
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SessionClosedError()
        loop = asyncio.get_running_loop()
        if self._client is None:
            # aiohttp binds a session to the running loop, so it is made on first use.
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections,
                limit_per_host=self._limits.max_connections_per_host,
                keepalive_timeout=self._limits.keepalive_timeout,
            )
            self._client = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                cookie_jar=aiohttp.DummyCookieJar(),  # the client API uses no cookies
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                auto_decompress=True,
            )
            if self._limits.pool_size:
                self._pool = anyio.Semaphore(self._limits.pool_size)
            self._loop = loop
        elif loop is not self._loop:
            raise SessionClosedError(
                "the Session is bound to another event loop; create one Session per loop"
            )
        return self._client

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | Sealed | None,
        headers: Mapping[str, str],
        attempt: Attempt,
        pool_timeout: float | None = None,
        cookies: CookieFlow | None = None,
        queue: bool = True,
    ) -> RawResponse:
        """Send one request and read the whole reply. Redirects are never followed here: a
        3xx reply is returned as it is, with its ``location`` (see ``Sender.exchange``).

        Raises ``NetworkError``, ``RequestTimeoutError`` or ``PoolTimeoutError``; never an
        aiohttp exception. *cookies* runs the request with that flow's private cookie jar
        (``cookie_flow()``). *body* ``Sealed`` carries a secret: only aiohttp sees its
        bytes. *queue* False skips the permit queue
        and takes the next connection aiohttp frees: for auth requests, which must not wait
        behind calls queued with the very token they renew. The connector's own limit still
        bounds the connections.
        """
        client = self._session()
        pool = self._pool if queue else None
        if pool is not None:
            try:
                pool.acquire_nowait()  # every request passes here: no coroutine when one is free
            except anyio.WouldBlock:
                attempt.phase = "pool"
                try:
                    with anyio.fail_after(pool_timeout) if pool_timeout else nullcontext():
                        await pool.acquire()  # FIFO; a released permit passes to the first
                except TimeoutError:
                    raise PoolTimeoutError(
                        f"no pooled connection became free within {pool_timeout:g} s "
                        f"({self._limits.pool_size} in use); raise Limits.max_connections or "
                        "lower the concurrency",
                        details=_details(method, url),
                    ) from None
        attempt.phase = "send"
        started = time.perf_counter() if logger.isEnabledFor(logging.DEBUG) else None
        session = client if cookies is None else cookies._session
        try:
            attempt.sent = True
            async with session.request(
                method,
                url,
                data=body.reveal() if isinstance(body, Sealed) else body,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                reply = resp.headers
                raw = RawResponse(
                    status=resp.status,
                    body=await resp.read(),
                    content_type=reply.get("Content-Type", ""),
                    request_id=reply.get(REQUEST_ID_HEADER),
                    retry_after=reply.get("Retry-After"),
                    location=reply.get("Location") if 300 <= resp.status < 400 else None,
                )
        except aiohttp.ClientConnectorError as exc:
            # The connection was never made (refused, DNS, TLS): nothing reached the server.
            attempt.sent = False
            raise NetworkError(
                f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc}",
                details=_details(method, url),
            ) from exc
        except aiohttp.ServerTimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                attempt.sent = False
            raise RequestTimeoutError(
                f"{exc or 'timed out'}",
                details=_details(method, url),
                may_have_executed=attempt.sent,
            ) from exc
        except aiohttp.ClientConnectionResetError as exc:
            # aiohttp raises this only while writing the request: the server never got a
            # whole request, so the function cannot have run (typically a pooled keep-alive
            # connection the server closed just as it was reused). Safe to retry.
            attempt.sent = False
            raise NetworkError(
                "the connection closed before the request was sent",
                details=_details(method, url),
            ) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise NetworkError(
                "the server closed the connection without a reply",
                details=_details(method, url),
                may_have_executed=True,
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise NetworkError(
                "the connection broke while the reply was being read",
                details=_details(method, url),
                may_have_executed=True,
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise NetworkError(
                f"{type(exc).__name__}: {exc}",
                details=_details(method, url),
                may_have_executed=attempt.sent,
            ) from exc
        finally:
            if pool is not None:
                pool.release()
        if started is not None:
            logger.debug(
                "%s %s -> %d in %.1f ms (request id %s)",
                method,
                urlsplit(url).path,
                raw.status,
                (time.perf_counter() - started) * 1000,
                raw.request_id,
            )
        return raw

    @asynccontextmanager
    async def cookie_flow(self) -> AsyncIterator[CookieFlow]:
        """A private cookie jar over the shared pool, for the requests of one flow; its
        cookies go nowhere else and are forgotten when the block ends."""
        client = self._session()
        session = aiohttp.ClientSession(
            connector=client.connector,
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: allow IP hosts
            timeout=client.timeout,
            headers=self.headers,
            auto_decompress=client.auto_decompress,  # read like every other reply
        )
        try:
            yield CookieFlow(session)
        finally:
            with anyio.CancelScope(shield=True):
                await session.close()  # closes nothing shared: connector_owner=False

    async def aclose(self) -> None:
        """Close the pool; idempotent. Later requests raise ``SessionClosedError``."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and not client.closed:
            # Shielded: a cancelled caller must still release every socket.
            with anyio.CancelScope(shield=True):
                await client.close()
