"""How one Session (or view) reaches the server: its URL and headers over the shared pool.

``Sender.send`` sends one request with the credentials applied and answers a 401 by
re-authenticating and sending once more. ``Sender.exchange`` is the auth JSON client: the
request path the credentials themselves use (JSON in, a JSON object out, HTTP errors raised),
the only one that follows redirects, and only those the authorize step needs.
"""

from __future__ import annotations

import enum
import functools
import sys
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

from ._auth import Auth, ServerAuth
from ._deadline import Deadline, Timers
from ._errors import ErrorDetails, HError, ResponseFormatError, SessionClosedError, snippet
from ._invoke import check_status, dumps, parse_json
from ._options import CallOptions
from ._secrets import Sealed, detach_frames
from ._transport import Attempt, CookieFlow, RawResponse, Transport
from ._types import NOT_GIVEN, NotGiven

#: The authorize step passes two 302 redirects (PROTOCOL.md §6.1); a few more are allowed.
MAX_REDIRECTS: Final = 5
#: Redirects that turn the request into a GET without a body: the only ones followed.
_FOLLOWED: Final = (302, 303)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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


def _origin(url: str) -> tuple[str, str, int] | None:
    """Scheme, host and port of *url*; None when it has none or is not http(s)."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a malformed IPv6 host
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def redirect_target(url: str, raw: RawResponse) -> str | None:
    """Where to go after *raw*, the reply to *url*: only a 302/303 to the same origin (same
    scheme, host and port), which is followed as a GET without a body. None for anything
    else: the redirect is refused (a 307/308 would re-send the body with the secret; another
    origin, or https to http, would hand the flow's cookies and code to someone else)."""
    if raw.status not in _FOLLOWED or not raw.location:
        return None
    target = urljoin(url, raw.location)
    same = _origin(target)
    return target if same is not None and same == _origin(url) else None


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
        body: bytes | Sealed | None,
        attempt: Attempt,
        *,
        authorization: str | None | NotGiven = NOT_GIVEN,
        cookies: CookieFlow | None = None,
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
        sync deadline; inside an invoke, the invoke's own deadline still applies too.

        Its bodies and headers carry secrets: a failure is scrubbed of the values the
        credentials hold, and the frames of the exceptions chained below it are dropped.
        *cookies*: a flow with a private cookie jar that follows same-origin 302/303
        redirects (``redirect_target``); any other redirect fails as an ``HTTPError``."""
        outer = sys.exc_info()[1]  # the caller's exception, if any: not ours to touch
        try:
            self._lifecycle.use()
            body = None if payload is None else Sealed(dumps(payload))
            attempt = Attempt()
            with Deadline(self._options.timeouts.sync, attempt, path, self.timers, method):
                # Not queued: a re-login or refresh would otherwise wait behind every call
                # queued for a connection, each about to send the token it replaces.
                if cookies:
                    raw = await self._flow(method, path, body, attempt)
                else:
                    raw = await self.send(
                        method, path, body, attempt, authorization=authorization, queue=False
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
        except HError as err:
            self.auth.secrets.scrub_error(err)
            detach_frames(err, outer)
            raise

    async def _flow(
        self, method: str, path: str, body: Sealed | None, attempt: Attempt
    ) -> RawResponse:
        """*method* *path* with a private cookie jar, following at most ``MAX_REDIRECTS``
        same-origin 302/303 redirects; the last reply, which may be a refused redirect."""
        url = join_url(self._options.base_url, path)
        async with self._transport.cookie_flow() as flow:
            raw = await self.send(
                method, url, body, attempt, authorization=None, cookies=flow, queue=False
            )
            for _ in range(MAX_REDIRECTS):
                target = redirect_target(url, raw)
                if target is None:
                    break
                url = target
                raw = await self.send(
                    "GET", url, None, attempt, authorization=None, cookies=flow, queue=False
                )
        return raw
