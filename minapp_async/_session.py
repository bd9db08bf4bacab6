"""The Session: owns the connection pool and the credentials, and invokes cloud functions.

Read top to bottom: making a Session (checks, then parts), its lifecycle, views, auth, and the
three ways to call (``invoke``, ``map``, ``invoke_many``). The parts do the work:
``CallOptions`` (what a view may change, checked), ``Sender`` (requests and the 401 replay,
and the auth JSON client), ``invocation`` (one call's deadline and retries) and ``FanOut``.
"""

from __future__ import annotations

import ipaddress
import sys
import traceback
import warnings
import weakref
from collections.abc import AsyncIterable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._auth import Auth, ServerAuth, UserCredentials
from ._constants import CLIENT_API_HOST, DEFAULT_PLATFORM, OPEN_API_HOST
from ._deadline import Timers
from ._errors import HError, InvalidArgumentError, SessionClosedError
from ._fanout import (
    Batch,
    ErrorPolicy,
    FanOut,
    MapOptions,
    Progress,
    collect,
    warn_if_pool_too_small,
)
from ._hooks import CallInfo, Hook
from ._invocation import invocation, traced_invocation
from ._invoke import (
    InvokeResult,
    check_name,
    check_sync,
    client_api_body,
    open_api_body,
    open_api_path,
)
from ._options import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUTS,
    CallOptions,
    Limits,
    Timeouts,
    check_base_url,
    check_call_timeout,
    check_str,
    limits_of,
)
from ._promise import Promise
from ._protocol import CLIENT_JOB_PATH
from ._retry import DEFAULT_RETRY, Retry
from ._secrets import Secrets, secret_or_none
from ._sender import Lifecycle, Sender, State
from ._tokens import MemoryTokenStore, TokenStore
from ._transport import PoolStats, Transport
from ._types import JSON, NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PoolStats", "Session"]


class Session:
    """An async session with one MinApp app: it owns a pooled aiohttp connection and the
    credentials, and invokes cloud functions.

    Use it as ``async with Session(...) as s:``, or keep one for an app's lifetime and
    ``await s.aclose()`` at shutdown. The aiohttp session is created on first use, inside the
    running loop. A Session that was used and never closed warns with ``ResourceWarning``.

    Args:
        client_id: the app's client ID (知晓云 console → 设置 → 应用).
        base_url: the server; defaults to ``https://{client_id}.myminapp.com`` (client API)
            or ``https://cloud.minapp.com`` (Open API). Point it at the local engine to test.
        env_id: a test environment's ID, sent as ``X-Hydrogen-Env-ID``.
        client_secret: server credentials: invoke through the Open API as the app itself.
        token: a user token obtained elsewhere (client API).
        credentials: a user login the Session may use (and reuse when the session expires).
        token_store: where the user session is kept (default: in memory).
        timeout: per-mode deadlines (``Timeouts``), or one number for both modes.
        limits: the connection pool (``Limits``).
        headers: extra headers sent with every request.
        platform: ``X-Hydrogen-Client-Platform`` (default ``WEB``).
        retry: which failures are retried (``Retry``); by default only those that show the
            function did not run, 3 tries at most.
        on_request, on_response: hooks called with a ``CallInfo`` before each try of an
            invocation is sent and after it ends (for metrics); a failing hook is logged.
        tracing: an OpenTelemetry span per invocation (needs the ``otel`` extra).
    """

    __slots__ = (
        "__weakref__",
        "_auth",
        "_fanouts",
        "_lifecycle",
        "_options",
        "_sender",
        "_server",
        "_source",
        "_timers",
        "_transport",
        "client_id",
    )

    client_id: str
    _options: CallOptions
    _transport: Transport
    _lifecycle: Lifecycle
    _sender: Sender
    _auth: Auth | ServerAuth
    _server: bool
    _source: str | None
    _timers: Timers  # the deadlines' shared timers: one set for a Session and its views
    # The maps still alive, of the Session and all its views: aclose() closes them. Weak, so
    # a map dropped unread is not kept alive by its Session.
    _fanouts: weakref.WeakSet[FanOut]

    def __init__(
        self,
        client_id: str,
        *,
        base_url: str | None = None,
        env_id: str | None = None,
        client_secret: str | None = None,
        token: str | None = None,
        credentials: UserCredentials | None = None,
        token_store: TokenStore | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        limits: Limits = DEFAULT_LIMITS,
        headers: Mapping[str, str] | None = None,
        platform: str = DEFAULT_PLATFORM,
        retry: Retry = DEFAULT_RETRY,
        on_request: Hook | None = None,
        on_response: Hook | None = None,
        tracing: bool = False,
    ) -> None:
        # Rebound at once: an error reporter shows this frame's locals (a 605 raised below).
        client_secret = secret_or_none(client_secret) or client_secret
        token = secret_or_none(token) or token
        check_str("client_id", client_id, optional=False)
        for name, value in (
            ("base_url", base_url),
            ("env_id", env_id),
            ("client_secret", client_secret),
            ("token", token),
        ):
            check_str(name, value)
        if client_secret is not None and (token is not None or credentials is not None):
            raise InvalidArgumentError(
                "client_secret (server credentials) cannot be combined with a user token "
                "or user credentials"
            )
        if credentials is not None and not isinstance(credentials, UserCredentials):
            raise InvalidArgumentError("credentials must be a UserCredentials")
        limits = limits_of(limits)
        server = client_secret is not None
        if base_url is not None:
            check_base_url(base_url)
            _warn_if_insecure(base_url)
        options = CallOptions.of(
            base_url=base_url
            or (OPEN_API_HOST if server else CLIENT_API_HOST).format(client_id=client_id),
            env_id=env_id,
            timeout=timeout,
            headers=headers,
            platform=platform,
            retry=retry,
            on_request=on_request,
            on_response=on_response,
            tracing=tracing,
        )
        transport = Transport(limits, options.timeouts, options.fixed_headers(client_id, server))
        self._assemble(client_id, transport, {}, weakref.WeakSet(), options, server, owner=True)
        if client_secret is not None:
            self._use_auth(ServerAuth(self._sender.exchange, client_id, client_secret))
        else:
            store = token_store if token_store is not None else MemoryTokenStore()
            self._use_auth(
                Auth(self._sender.exchange, store=store, credentials=credentials, token=token)
            )
        # Where an unclosed Session was made, for the ResourceWarning (as aiohttp does).
        self._source = _caller() if sys.flags.dev_mode else None

    def _assemble(
        self,
        client_id: str,
        transport: Transport,
        timers: Timers,
        fanouts: weakref.WeakSet[FanOut],
        options: CallOptions,
        server: bool,
        *,
        owner: bool,
    ) -> None:
        """The one constructor of a Session and of every view: the parts, given checked
        options. The credentials follow with ``_use_auth``."""
        self.client_id = client_id
        self._transport = transport
        self._timers = timers
        self._fanouts = fanouts
        self._options = options
        self._server = server
        self._source = None
        self._lifecycle = Lifecycle(transport, owner=owner)
        headers = options.headers_beyond(client_id, server, transport.headers)
        self._sender = Sender(self._lifecycle, options, headers, timers)

    def _use_auth(self, auth: Auth | ServerAuth) -> None:
        self._auth = self._sender.auth = auth

    def __repr__(self) -> str:
        mode = "server" if self._server else "client"
        view = "" if self._lifecycle.owner else " view"
        return (
            f"<minapp_async.Session{view} client_id={self.client_id!r} "
            f"base_url={self._options.base_url!r} mode={mode} "
            f"state={self._lifecycle.state.value}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._lifecycle.state is State.CLOSED:
            raise SessionClosedError("a closed Session cannot be reopened; create a new one")
        self._lifecycle.state = State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> None:
        raise TypeError("use 'async with Session(...)', not 'with'")

    def __exit__(self, *args: object) -> None:  # pragma: no cover - __enter__ always raises
        pass

    async def aclose(self) -> None:
        """Close every ``map`` still running (its consumer gets the outcomes already finished,
        then ``SessionClosedError``) and the connection pool. Idempotent. A view
        (``with_options``) closes nothing: the pool belongs to the Session it came from."""
        if not self._lifecycle.owner:
            return
        self._lifecycle.state = State.CLOSED
        try:
            # No map task may outlive the Session: each is cancelled and waited for.
            for fanout in list(self._fanouts):
                await fanout.close_with(SessionClosedError("the Session was closed during map()"))
        finally:
            await self._transport.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # Only warns: scheduling a close from a finaliser runs on whatever loop is current
        # (openai-python#1254). The pool itself is released by aiohttp's own finaliser.
        lifecycle = getattr(self, "_lifecycle", None)
        if lifecycle is not None and lifecycle.owner and lifecycle.state is State.OPENED:
            where = f"; created at\n{self._source}" if getattr(self, "_source", None) else ""
            _warn(
                f"Unclosed {self!r}: use 'async with Session(...)' or 'await session.aclose()'"
                + where,
                ResourceWarning,
                source=self,
            )

    @property
    def closed(self) -> bool:
        """``aclose()`` was called (on this Session or the one it is a view of)."""
        return self._transport.closed

    @property
    def pool_stats(self) -> PoolStats:
        """A read-only snapshot of the connection pool (shared with every view): its size,
        the calls holding and waiting for a slot, and aiohttp's connections."""
        return self._transport.stats()

    # -- views -------------------------------------------------------------------------------

    def with_options(
        self,
        *,
        timeout: Timeouts | float | None | NotGiven = NOT_GIVEN,
        env_id: str | None | NotGiven = NOT_GIVEN,
        headers: Mapping[str, str] | None | NotGiven = NOT_GIVEN,
        platform: str | NotGiven = NOT_GIVEN,
        retry: Retry | NotGiven = NOT_GIVEN,
        on_request: Hook | None | NotGiven = NOT_GIVEN,
        on_response: Hook | None | NotGiven = NOT_GIVEN,
        tracing: bool | NotGiven = NOT_GIVEN,
    ) -> Session:
        """A view with other defaults that shares this Session's pool and credentials.

        The original is never changed. *headers* replaces the extra headers. Closing the view
        closes nothing.
        """
        options = self._options.changed(
            timeout=timeout,
            env_id=env_id,
            headers=headers,
            platform=platform,
            retry=retry,
            on_request=on_request,
            on_response=on_response,
            tracing=tracing,
        )
        view = self._view(options)
        view._use_auth(self._auth)
        return view

    def as_user(self, token: str) -> Session:
        """A view that invokes as the user whose *token* this is, without touching this
        Session's own login: for web apps that call functions on behalf of each request's user.
        """
        if self._server:
            raise InvalidArgumentError(
                "as_user() needs a client API Session, not server credentials"
            )
        token = secret_or_none(token) or token
        check_str("token", token, optional=False)
        view = self._view(self._options)
        # The view scrubs its own token and its Session's secrets from what it shows.
        secrets = Secrets(parent=self._auth.secrets)
        view._use_auth(Auth(self._sender.exchange, token=token, secrets=secrets))
        return view

    def _view(self, options: CallOptions) -> Session:
        view = Session.__new__(Session)
        view._assemble(
            self.client_id,
            self._transport,
            self._timers,
            self._fanouts,
            options,
            self._server,
            owner=False,
        )
        return view

    # -- auth --------------------------------------------------------------------------------

    @property
    def auth(self) -> Auth:
        """User login for the client API: ``await session.auth.login(username=..., password=...)``."""
        if isinstance(self._auth, ServerAuth):
            raise HError(
                611, "user login is for client API Sessions; this one uses server credentials"
            )
        return self._auth

    # -- invoke ------------------------------------------------------------------------------

    def invoke(
        self,
        function_name: str,
        params: JSON | NotGiven = NOT_GIVEN,
        sync: bool = True,
        *,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> Promise[InvokeResult]:
        """Invoke a cloud function, like ``BaaS.invoke(functionName, params, sync)``.

        Returns a ``Promise``: ``await`` it for an ``InvokeResult``, or chain
        ``.then(ok, err)`` as in JS. The result comes back for any 2xx reply, also when the
        function failed (``result.code != 0``); ``result.raise_for_code()`` turns that into a
        ``FunctionError``.

        Args:
            function_name: the cloud function's name.
            params: what the function gets as ``event.data``; left out of the request when
                not given.
            sync: True waits for the function's result (the platform allows it 5 s);
                False returns once the job is accepted, with data ``{"status": "ok"}``.
            timeout: this call's deadline in seconds, covering pool wait, login, send and
                read; None for no deadline. Defaults to the Session's per-mode deadline.

        Raises:
            InvalidArgumentError: (605, at once, nothing sent) a bad name, params or sync.
            HError: any failure of the call, with the HTTP status or a 6xx code.
        """
        coro = self._prepare(function_name, params, sync, timeout)
        # A forgotten ``await`` warns "coroutine ... was never awaited" with this name: let it
        # be the method the user called, not a private helper.
        coro.__qualname__ = "Session.invoke"  # type: ignore[attr-defined]  # writable on coroutines
        return Promise(coro)

    def _prepare(
        self,
        function_name: str,
        params: JSON | NotGiven,
        sync: bool,
        timeout: float | None | NotGiven,
    ) -> Coroutine[Any, Any, InvokeResult]:
        """Check the arguments and serialise the request now (605 before anything is sent);
        the returned coroutine sends it. Fan-out awaits it directly, without a Promise."""
        name = check_name(function_name)
        check_sync(sync)
        check_call_timeout(timeout)
        if self._server:
            path, body = open_api_path(name), open_api_body(params, sync)
        else:
            path, body = CLIENT_JOB_PATH, client_api_body(name, params, sync)
        options = self._options
        deadline = options.timeouts.for_mode(sync) if timeout is NOT_GIVEN else timeout
        self._lifecycle.use()
        # CallInfo, hooks and spans cost a few µs a call: only pay when they are in use.
        if options.observed:
            info = CallInfo(name, sync)
            if options.tracing:
                return traced_invocation(self._sender, options, info, path, body, sync, deadline)
            return invocation(self._sender, options, info, path, body, sync, deadline)
        return invocation(self._sender, options, None, path, body, sync, deadline)

    def invoke_function(
        self,
        function_name: str,
        params: JSON | NotGiven = NOT_GIVEN,
        sync: bool = True,
        *,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> Promise[InvokeResult]:
        """Deprecated alias of ``invoke``, as ``BaaS.invokeFunction`` is in JS."""
        warnings.warn(
            "invoke_function() is deprecated; use invoke()", DeprecationWarning, stacklevel=2
        )
        return self.invoke(function_name, params, sync, timeout=timeout)

    # -- fan-out ----------------------------------------------------------------------------

    def map(
        self,
        function_name: str,
        params: Iterable[JSON] | AsyncIterable[JSON],
        *,
        sync: bool = True,
        concurrency: int = 16,
        rate: float | None = None,
        ordered: bool = True,
        window: int | None = None,
        errors: ErrorPolicy = "raise",
        timeout: float | None | NotGiven = NOT_GIVEN,
        progress: Progress | None = None,
    ) -> FanOut:
        """Invoke *function_name* once per item of *params*: an async iterator of ``Outcome``.

        ::

            async with session.map("score", users(), concurrency=32) as outcomes:
                async for o in outcomes:
                    print(o.index, o.result.data if o.ok else o.error or o.result.error)

        Args:
            params: an iterable or async iterable, one item per call (each as ``invoke``'s
                *params*), read lazily: never more than *window* items ahead of the outcomes
                yielded.
            sync: as ``invoke``'s.
            concurrency: calls in flight at most. Each call takes its slot before its params
                are serialised and before auth runs.
            rate: calls started per second at most; None for no limit.
            ordered: True yields outcomes in input order, False as they complete.
            window: items taken but not yet yielded, at most (default ``2 * concurrency``;
                at least *concurrency*). In input order, a slow item stops new calls once the
                window is full, so memory stays bounded.
            errors: ``"raise"``: the first ``HError`` cancels the calls in flight and is
                raised from the iterator; ``"collect"``: every outcome is yielded, failed
                calls with ``.error`` set. A function that ran and failed (``code != 0``) is
                a result either way.
            timeout: each call's deadline, as ``invoke``'s.
            progress: called as ``progress(done, total)`` after each call (``total`` is
                ``len(params)``, None when it has no length). It must not block.

        If *params* raises, no more items are taken, the calls in flight finish, their
        outcomes and every other finished one are yielded, and then that error is raised.

        Raises:
            InvalidArgumentError: (605, at once) a bad argument.

        Use ``async with`` for deterministic clean-up: leaving the block (or the loop's end,
        an error, or cancelling the consumer) cancels the calls in flight and returns their
        connections to the pool. A plain ``async for`` works too; after ``break`` the clean-up
        runs on the event loop's next iteration. Warns ``PoolSizeWarning`` when *concurrency*
        is larger than the connection pool.
        """
        options = MapOptions.of(
            function_name,
            params,
            sync=sync,
            concurrency=concurrency,
            rate=rate,
            ordered=ordered,
            window=window,
            errors=errors,
            timeout=timeout,
            progress=progress,
        )
        return self._fanout(function_name, params, options)

    async def invoke_many(
        self,
        function_name: str,
        params: Iterable[JSON] | AsyncIterable[JSON],
        *,
        sync: bool = True,
        concurrency: int = 16,
        rate: float | None = None,
        errors: ErrorPolicy = "raise",
        # Each call's deadline, as invoke()'s: the batch as a whole has none of its own.
        timeout: float | None | NotGiven = NOT_GIVEN,
        progress: Progress | None = None,
    ) -> Batch:
        """``map()`` collected: a ``Batch`` with every ``Outcome`` in input order and a
        ``Summary`` (counts, latency p50/p95/max, calls per second). Arguments as ``map``'s;
        with ``errors="raise"`` the first ``HError`` is raised instead."""
        # As completed: the list is in memory anyway, so no slow item should hold up others.
        options = MapOptions.of(
            function_name,
            params,
            sync=sync,
            concurrency=concurrency,
            rate=rate,
            ordered=False,
            window=None,
            errors=errors,
            timeout=timeout,
            progress=progress,
        )
        return await collect(self._fanout(function_name, params, options))

    def _fanout(
        self,
        function_name: str,
        params: Iterable[JSON] | AsyncIterable[JSON],
        options: MapOptions,
    ) -> FanOut:
        self._lifecycle.use()
        # stacklevel 3: the warning points at the caller of map() or invoke_many().
        warn_if_pool_too_small(self._transport.pool_size, options.concurrency, stacklevel=3)
        prepare, sync, timeout = self._prepare, options.sync, options.timeout

        def call(item: JSON) -> Coroutine[Any, Any, InvokeResult]:
            return prepare(function_name, item, sync, timeout)

        fanout = FanOut(call, function_name, params, options)
        self._fanouts.add(fanout)
        return fanout


class InsecureURLWarning(UserWarning):
    """The base URL is plain ``http://`` to a host that is not this machine."""


def _warn_if_insecure(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme != "http":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        warnings.warn(
            f"base_url {base_url!r} is plain http:// to another host: tokens and secrets would "
            "cross the network unencrypted; use https://",
            InsecureURLWarning,
            stacklevel=3,
        )


def _caller() -> str:
    return "".join(traceback.format_stack(limit=8)[:-2])
