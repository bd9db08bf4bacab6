"""How one Session (or view) reaches the server: its URL and headers over the shared pool.

``Sender.send`` sends one request with the credentials applied and answers a 401 by
re-authenticating and sending once more. ``Sender.exchange`` is the auth JSON client: the
request path the credentials themselves use (JSON in, a JSON object out, HTTP errors raised).
"""

from __future__ import annotations

import enum
import functools
from typing import Any

from ._auth import Auth, ServerAuth
from ._deadline import Deadline, Timers
from ._errors import ErrorDetails, ResponseFormatError, SessionClosedError, snippet
from ._invoke import check_status, dumps, parse_json
from ._options import CallOptions
from ._transport import Attempt, RawResponse, Transport
from ._types import NOT_GIVEN, NotGiven


class State(enum.Enum):
    """Where a Session is in its life."""

    UNOPENED = "unopened"  # made; the pool is created on first use
    OPENED = "opened"  # entered or used: must be closed
    CLOSED = "closed"  # closed for good: a Session is never reopened


class Lifecycle:
    """One Session's (or view's) state; only the Session that owns the pool must close it."""

    __slots__ = ("owner", "state", "transport")

    def __init__(self, transport: Transport, *, owner: bool) -> None:
        self.transport = transport
        self.owner = owner
        self.state = State.UNOPENED

    def use(self) -> None:
        """About to send: ``SessionClosedError`` once closed; an owner is now to be closed."""
        if self.transport.closed:
            raise SessionClosedError()
        if self.state is State.UNOPENED and self.owner:
            self.state = State.OPENED


@functools.lru_cache(maxsize=256)  # a handful of (base URL, path) pairs, joined per request
def join_url(host: str, path: str) -> str:
    """PROTOCOL.md §1: strip one trailing ``/`` from the host and one leading ``/`` from the
    path, join with ``/``; a path that is already absolute is used as it is."""
    if path.startswith(("http://", "https://")):
        return path
    return f"{host.removesuffix('/')}/{path.removeprefix('/')}"


class Sender:
    """One view's requests: its base URL, headers and pool timeout over the shared transport.

    *headers* are the view's own headers beyond the transport's defaults. ``auth`` is set
    once, right after the credentials are made (they need this Sender's ``exchange``).
    """

    __slots__ = ("_headers", "_lifecycle", "_options", "_transport", "_with_auth", "auth", "timers")

    auth: Auth | ServerAuth

    def __init__(
        self,
        lifecycle: Lifecycle,
        options: CallOptions,
        headers: dict[str, str],
        timers: Timers,
    ) -> None:
        """*timers*: the deadlines' shared timers, one set per Session and its views."""
        self.timers = timers
        self._lifecycle = lifecycle
        self._transport = lifecycle.transport
        self._options = options
        self._headers = headers
        self._with_auth: tuple[str | None, dict[str, str]] = (None, {})

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        attempt: Attempt,
        *,
        authorization: str | None | NotGiven = NOT_GIVEN,
        cookies: bool = False,
        queue: bool = True,
    ) -> RawResponse:
        """One request; with *authorization* NOT_GIVEN the credentials are applied, and a 401
        is answered by re-authenticating and sending once more, when that is possible.
        *queue* False skips the pool's permit queue (see ``Transport.request``)."""
        own_credentials = authorization is NOT_GIVEN
        if own_credentials:
            authorization = self.auth.ready_authorization()
            if authorization is NOT_GIVEN:
                authorization = await self.auth.authorization()
        assert authorization is not NOT_GIVEN
        raw = await self._transport.request(
            method,
            join_url(self._options.base_url, path),
            body=body,
            headers=self._headers_with(authorization),
            attempt=attempt,
            pool_timeout=self._options.timeouts.pool,
            cookies=cookies,
            queue=queue,
        )
        if own_credentials and raw.status == 401 and self.auth.can_reauthenticate:
            await self.auth.reauthenticate(authorization)
            return await self.send(
                method, path, body, attempt, authorization=await self.auth.authorization()
            )
        return raw

    def _headers_with(self, authorization: str | None) -> dict[str, str]:
        """The request's own headers (beyond the transport's) with *authorization*; the same
        token is sent call after call, so its merged headers are kept and reused."""
        if authorization is None:
            return self._headers
        cached_value, cached_headers = self._with_auth
        if authorization != cached_value:
            cached_headers = {**self._headers, "Authorization": authorization}
            self._with_auth = (authorization, cached_headers)
        return cached_headers

    async def exchange(
        self,
        method: str,
        path: str,
        payload: Any,
        *,
        authorization: str | None,
        cookies: bool = False,
    ) -> dict[str, Any]:
        """An auth request: JSON in, a JSON object out, HTTP errors raised. Bounded by the
        sync deadline; inside an invoke, the invoke's own deadline still applies too."""
        self._lifecycle.use()
        body = None if payload is None else dumps(payload)
        attempt = Attempt()
        with Deadline(self._options.timeouts.sync, attempt, path, self.timers, method):
            # Not queued: a re-login or refresh would otherwise wait behind every call queued
            # for a connection, each about to send the token it replaces and fail with a 401.
            raw = await self.send(
                method,
                path,
                body,
                attempt,
                authorization=authorization,
                cookies=cookies,
                queue=False,
            )
        check_status(raw, method, "/" + path)
        reply = parse_json(raw)
        if not isinstance(reply, dict):
            raise ResponseFormatError(
                raw.status,
                "invalid reply: expected a JSON object",
                details=ErrorDetails(
                    status=raw.status,
                    body=snippet(raw.body),
                    request_id=raw.request_id,
                    method=method,
                    path="/" + path,
                ),
            )
        return reply
