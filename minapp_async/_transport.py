"""The only module that touches aiohttp: one pooled ``ClientSession``, bytes in, bytes out.

Every aiohttp exception is translated here, at this one boundary, into an ``HError``. The pool
is guarded by our own semaphore so that waiting for a connection is a phase we can see: a call
that times out there raises ``PoolTimeoutError`` and is known not to have been sent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, nullcontext
from typing import Final, Literal
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs

from ._errors import (
    ErrorDetails,
    HError,
    NetworkError,
    PoolTimeoutError,
    RequestTimeoutError,
    ResponseFormatError,
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


#: The encodings the SDK asks for, and inflates itself (bounded): aiohttp would also offer br
#: or zstd when their packages happen to be installed, and inflate without a bound.
ACCEPT_ENCODING: Final = "gzip, deflate"


def _too_big(status: int, cap: int, what: str, method: str, url: str) -> ResponseFormatError:
    details = _details(method, url)
    return ResponseFormatError(
        status,
        f"invalid reply: {what} is larger than Limits(max_reply_bytes={cap}); raise "
        "max_reply_bytes if replies this large are expected",
        details=ErrorDetails(status=status, method=details.method, path=details.path),
        may_have_executed=True,
    )


async def _read_body(resp: aiohttp.ClientResponse, cap: int, method: str, url: str) -> bytes:
    """The whole reply body, at most *cap* bytes on the wire and again once inflated.

    The general path (``Transport.request`` reads a plain reply of known, allowed length
    itself). A reply over the cap raises ``ResponseFormatError`` as soon as that is known (at
    once for a Content-Length above it), having held no more than the cap; the caller then
    drops the connection rather than drain it.
    """
    encoding = resp.headers.get("Content-Encoding")
    length = resp.content_length
    if length is not None and length > cap:
        raise _too_big(resp.status, cap, f"the announced body ({length} bytes)", method, url)
    if encoding is None or encoding.strip().lower() == "identity":
        inflate = None
    else:
        inflate = _Inflater(encoding.strip().lower(), resp.status, cap, method, url)
    parts: list[bytes] = []
    wire = 0
    content = resp.content
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        wire += len(chunk)
        if wire > cap:
            raise _too_big(resp.status, cap, "the body", method, url)
        if inflate is None:
            parts.append(chunk)
            continue
        parts.append(inflate.feed(chunk))
        while inflate.pending:  # a bomb's chunk: inflate it a step at a time
            await asyncio.sleep(0)  # let the loop run between steps
            parts.append(inflate.feed(b""))
    if inflate is not None and wire:
        inflate.check_complete()
    return b"".join(parts)


#: Inflated bytes per decompression step.
_STEP: Final = 1024 * 1024


class _Inflater:
    """Bounded gzip/deflate decompression: never more than the cap comes out, whatever the
    ratio (a 255 KiB gzip bomb inflates to 256 MiB)."""

    __slots__ = ("_cap", "_encoding", "_method", "_out", "_status", "_url", "_zlib")

    def __init__(self, encoding: str, status: int, cap: int, method: str, url: str) -> None:
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise ResponseFormatError(
                status,
                f"invalid reply: Content-Encoding {encoding[:40]!r} was not asked for "
                f"(the SDK accepts {ACCEPT_ENCODING})",
                details=_details(method, url),
                may_have_executed=True,
            )
        self._encoding = encoding
        self._zlib: zlib._Decompress | None = (
            zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "deflate" else None
        )
        self._status, self._cap, self._method, self._url = status, cap, method, url
        self._out = 0

    def feed(self, chunk: bytes) -> bytes:
        d = self._zlib
        if d is None:
            # "deflate" is zlib-wrapped by the standard, raw deflate by some servers.
            wbits = zlib.MAX_WBITS if chunk[0] & 0x0F == 8 else -zlib.MAX_WBITS
            d = self._zlib = zlib.decompressobj(wbits)
        try:
            # At most a step of output per call: zlib would otherwise grow a buffer of up to
            # the cap and copy it, twice the cap at its peak.
            data = d.decompress(d.unconsumed_tail + chunk, min(_STEP, self._cap + 1 - self._out))
        except zlib.error as exc:
            raise ResponseFormatError(
                self._status,
                f"invalid reply: the body is not valid {self._encoding} ({exc})",
                details=_details(self._method, self._url),
                may_have_executed=True,
            ) from None
        self._out += len(data)
        if self._out > self._cap:
            raise _too_big(self._status, self._cap, "the inflated body", self._method, self._url)
        return data

    @property
    def pending(self) -> bool:
        """Input is left that did not fit in the last step's output."""
        return self._zlib is not None and bool(self._zlib.unconsumed_tail)

    def check_complete(self) -> None:
        """At the end of the body: the compressed stream must have ended too."""
        if self._zlib is not None and not self._zlib.eof:
            raise aiohttp.ClientPayloadError(f"the {self._encoding} body was cut short")


class Transport:
    """A lazily created, pooled aiohttp ``ClientSession`` and the exception boundary.

    Strictly private: the Session owns exactly one and shares it with its views.
    """

    def __init__(self, limits: Limits, timeouts: Timeouts, headers: Mapping[str, str]) -> None:
        self._limits = limits
        # Sent with every request; each request's own headers add to or replace them. As the
        # aiohttp session's defaults they cost less per request than merged in every time.
        self.headers = {"Accept-Encoding": ACCEPT_ENCODING, **headers}
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
                auto_decompress=False,  # inflated here, bounded: _read_body
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
        if self._closed:  # closed while this call waited for a connection
            if pool is not None:
                pool.release()
            raise SessionClosedError()
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
                cap, length = self._limits.max_reply_bytes, resp.content_length
                if length is not None and length <= cap and "Content-Encoding" not in reply:
                    # Every usual reply: plain, its length known and allowed, so the parser
                    # stops there; no coroutine of ours on this path.
                    content = await resp.read()
                else:
                    try:
                        content = await _read_body(resp, cap, method, url)
                    except ResponseFormatError:
                        resp.close()  # drop the connection: draining it could take forever
                        raise
                raw = RawResponse(
                    status=resp.status,
                    body=content,
                    content_type=reply.get("Content-Type", ""),
                    request_id=reply.get(REQUEST_ID_HEADER),
                    retry_after=reply.get("Retry-After"),
                    location=reply.get("Location") if 300 <= resp.status < 400 else None,
                )
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            if not self._closed:
                self._raise_network_error(exc, method, url, attempt)
                raise  # not ours to translate (a RuntimeError of aiohttp's while open)
            # aclose() cut this call off: aiohttp says "Session is closed" (RuntimeError) or
            # reports the connections it closed; the caller's error is the close itself.
            err = SessionClosedError()
            err.details, err.may_have_executed = _details(method, url), attempt.sent
            raise err from exc
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

    @staticmethod
    def _raise_network_error(exc: BaseException, method: str, url: str, attempt: Attempt) -> None:
        """Raise the ``HError`` for an aiohttp or socket failure; return for anything else."""
        if isinstance(exc, aiohttp.ClientConnectorError):
            # The connection was never made (refused, DNS, TLS): nothing reached the server.
            attempt.sent = False
            hint = ""
            if isinstance(exc.os_error, ssl.SSLError) and "WRONG_VERSION" in str(exc.os_error):
                hint = (
                    " (the server answers in plain HTTP on this port, not TLS: use an http:// "
                    "base_url for it)"
                )
            raise NetworkError(
                f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc}{hint}",
                details=_details(method, url),
            ) from exc
        if isinstance(exc, aiohttp.ServerTimeoutError):
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                attempt.sent = False
            raise RequestTimeoutError(
                f"{exc or 'timed out'}",
                details=_details(method, url),
                may_have_executed=attempt.sent,
            ) from exc
        if isinstance(exc, aiohttp.ClientConnectionResetError):
            # aiohttp raises this only while writing the request: the server never got a
            # whole request, so the function cannot have run (typically a pooled keep-alive
            # connection the server closed just as it was reused). Safe to retry.
            attempt.sent = False
            raise NetworkError(
                "the connection closed before the request was sent",
                details=_details(method, url),
            ) from exc
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            raise NetworkError(
                "the server closed the connection without a reply",
                details=_details(method, url),
                may_have_executed=True,
            ) from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise NetworkError(
                "the connection broke while the reply was being read",
                details=_details(method, url),
                may_have_executed=True,
            ) from exc
        if isinstance(exc, aiohttp.ClientError | OSError) and not isinstance(exc, HError):
            raise NetworkError(
                f"{type(exc).__name__}: {exc}",
                details=_details(method, url),
                may_have_executed=attempt.sent,
            ) from exc

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
