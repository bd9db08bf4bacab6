"""The Session: owns the connection pool and the credentials, and invokes cloud functions."""

from __future__ import annotations

import enum
import functools
import ipaddress
import sys
import traceback
import warnings
from collections.abc import AsyncIterable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import anyio
import attrs

from ._auth import Auth, ServerAuth, UserCredentials
from ._constants import (
    CLIENT_API_HOST,
    CLIENT_VERSION,
    DEFAULT_PLATFORM,
    OPEN_API_HOST,
    SDK_TYPE,
    USER_AGENT,
)
from ._deadline import Deadline, Timers
from ._errors import (
    ErrorDetails,
    HError,
    InvalidArgumentError,
    ResponseFormatError,
    SessionClosedError,
    snippet,
)
from ._fanout import (
    Batch,
    ErrorPolicy,
    FanOut,
    Progress,
    check_fanout_arguments,
    collect,
    warn_if_pool_too_small,
)
from ._hooks import CallInfo, Hook, invocation_span, run_hook
from ._invoke import (
    CLIENT_JOB_PATH,
    InvokeResult,
    check_name,
    check_status,
    check_sync,
    client_api_body,
    dumps,
    open_api_body,
    open_api_path,
    parse_json,
    parse_result,
)
from ._logs import get_logger
from ._options import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, Limits, Timeouts
from ._promise import Promise
from ._retry import DEFAULT_RETRY, Retry
from ._tokens import MemoryTokenStore, TokenStore
from ._transport import Attempt, RawResponse, Transport
from ._types import JSON, NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Session"]

logger = get_logger()


_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}


class _State(enum.Enum):
    UNOPENED = "unopened"  # made; the pool is created on first use
    OPENED = "opened"  # entered or used: must be closed
    CLOSED = "closed"  # closed for good: a Session is never reopened


@functools.lru_cache(maxsize=256)  # a handful of (base URL, path) pairs, joined per request
def join_url(host: str, path: str) -> str:
    """PROTOCOL.md §1: strip one trailing ``/`` from the host and one leading ``/`` from the
    path, join with ``/``; a path that is already absolute is used as it is."""
    if path.startswith(("http://", "https://")):
        return path
    return f"{host.removesuffix('/')}/{path.removeprefix('/')}"


@attrs.frozen
class _Options:
    """What a view may change: everything else is shared with the Session it came from."""

    base_url: str
    env_id: str | None
    timeouts: Timeouts
    headers: Mapping[str, str]
    platform: str
    retry: Retry
    on_request: Hook | None = None
    on_response: Hook | None = None
    tracing: bool = False

    def fixed_headers(self, client_id: str, server: bool) -> dict[str, str]:
        """What every request in this mode carries: the transport sends these by default."""
        if server:
            return {"User-Agent": USER_AGENT, **_JSON_HEADERS}
        # PROTOCOL.md §2: sent on every client API request, names exactly as written.
        return {
            "X-Hydrogen-Client-ID": client_id,
            "X-Hydrogen-Client-Version": CLIENT_VERSION,
            "X-Hydrogen-Client-Platform": self.platform,
            "X-Hydrogen-Client-SDK-Type": SDK_TYPE,
            "User-Agent": USER_AGENT,
            **_JSON_HEADERS,
        }

    def headers_beyond(
        self, client_id: str, server: bool, defaults: Mapping[str, str]
    ) -> dict[str, str]:
        """This view's headers less those the transport already sends (*defaults*). Every
        default name is among them, so what aiohttp merges per request is exactly these."""
        headers = self.fixed_headers(client_id, server)
        if self.env_id is not None:
            headers["X-Hydrogen-Env-ID"] = self.env_id
        headers.update(self.headers)
        return {name: value for name, value in headers.items() if defaults.get(name) != value}


def _check_str(name: str, value: object, *, optional: bool = True) -> None:
    if (value is None and optional) or (isinstance(value, str) and value):
        return
    raise InvalidArgumentError(f"{name} must be a non-empty str, not {type(value).__name__}")


@attrs.define(init=False, repr=False, eq=False)
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

    client_id: str
    _options: _Options
    _transport: Transport
    _auth: Auth | ServerAuth
    _owner: bool
    _state: _State = _State.UNOPENED
    _headers: dict[str, str] = attrs.field(factory=dict)
    _source: str | None = None
    _with_auth: tuple[str | None, dict[str, str]] = (None, {})
    _timers: Timers = attrs.field(factory=dict)  # shared by views, as the pool is

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
        _check_str("client_id", client_id, optional=False)
        for name, value in (
            ("base_url", base_url),
            ("env_id", env_id),
            ("client_secret", client_secret),
            ("token", token),
        ):
            _check_str(name, value)
        if client_secret is not None and (token is not None or credentials is not None):
            raise InvalidArgumentError(
                "client_secret (server credentials) cannot be combined with a user token "
                "or user credentials"
            )
        if credentials is not None and not isinstance(credentials, UserCredentials):
            raise InvalidArgumentError("credentials must be a UserCredentials")
        if not isinstance(limits, Limits):
            raise InvalidArgumentError("limits must be a Limits")
        server = client_secret is not None
        if base_url is not None:
            _warn_if_insecure(base_url)
        options = _Options(
            base_url=base_url
            or (OPEN_API_HOST if server else CLIENT_API_HOST).format(client_id=client_id),
            env_id=env_id,
            timeouts=_timeouts(timeout),
            headers=_headers(headers),
            platform=platform,
            retry=_retry(retry),
            on_request=_hook("on_request", on_request),
            on_response=_hook("on_response", on_response),
            tracing=bool(tracing),
        )
        transport = Transport(limits, options.timeouts, options.fixed_headers(client_id, server))
        self.__attrs_init__(client_id, options, transport, None, True)  # type: ignore[arg-type]
        self._auth = (
            ServerAuth(self._exchange, client_id, client_secret)
            if client_secret is not None
            else Auth(
                self._exchange,
                store=token_store if token_store is not None else MemoryTokenStore(),
                credentials=credentials,
                token=token,
            )
        )
        self._headers = options.headers_beyond(client_id, server, transport.headers)
        # Where an unclosed Session was made, for the ResourceWarning (as aiohttp does).
        self._source = _caller() if sys.flags.dev_mode else None

    def __repr__(self) -> str:
        mode = "server" if isinstance(self._auth, ServerAuth) else "client"
        view = "" if self._owner else " view"
        return (
            f"<minapp_async.Session{view} client_id={self.client_id!r} "
            f"base_url={self._options.base_url!r} mode={mode} state={self._state.value}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise SessionClosedError("a closed Session cannot be reopened; create a new one")
        self._state = _State.OPENED
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
        """Close the connection pool. Idempotent. A view (``with_options``) closes nothing:
        the pool belongs to the Session it came from."""
        if not self._owner:
            return
        self._state = _State.CLOSED
        await self._transport.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # Only warns: scheduling a close from a finaliser runs on whatever loop is current
        # (openai-python#1254). The pool itself is released by aiohttp's own finaliser.
        if getattr(self, "_owner", False) and self._state is _State.OPENED:
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
        return self._transport._closed

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
        changes: dict[str, Any] = {}
        if timeout is not NOT_GIVEN:
            changes["timeouts"] = _timeouts(timeout)
        if env_id is not NOT_GIVEN:
            _check_str("env_id", env_id)
            changes["env_id"] = env_id
        if headers is not NOT_GIVEN:
            changes["headers"] = _headers(headers)
        if platform is not NOT_GIVEN:
            _check_str("platform", platform, optional=False)
            changes["platform"] = platform
        if retry is not NOT_GIVEN:
            changes["retry"] = _retry(retry)
        if on_request is not NOT_GIVEN:
            changes["on_request"] = _hook("on_request", on_request)
        if on_response is not NOT_GIVEN:
            changes["on_response"] = _hook("on_response", on_response)
        if tracing is not NOT_GIVEN:
            changes["tracing"] = bool(tracing)
        return self._view(attrs.evolve(self._options, **changes), self._auth)

    def as_user(self, token: str) -> Session:
        """A view that invokes as the user whose *token* this is, without touching this
        Session's own login: for web apps that call functions on behalf of each request's user.
        """
        if isinstance(self._auth, ServerAuth):
            raise InvalidArgumentError(
                "as_user() needs a client API Session, not server credentials"
            )
        _check_str("token", token, optional=False)
        return self._view(self._options, Auth(self._exchange, token=token))

    def _view(self, options: _Options, auth: Auth | ServerAuth) -> Session:
        view = object.__new__(Session)
        view.__attrs_init__(self.client_id, options, self._transport, auth, False)
        server = isinstance(auth, ServerAuth)
        view._headers = options.headers_beyond(self.client_id, server, self._transport.headers)
        view._timers = self._timers
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

    # -- requests ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._transport._closed:
            raise SessionClosedError()
        if self._state is _State.UNOPENED and self._owner:
            self._state = _State.OPENED

    async def _send(
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
            authorization = self._auth.ready_authorization()
            if authorization is NOT_GIVEN:
                authorization = await self._auth.authorization()
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
        if own_credentials and raw.status == 401 and self._auth.can_reauthenticate:
            await self._auth.reauthenticate(authorization)
            return await self._send(
                method, path, body, attempt, authorization=await self._auth.authorization()
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

    async def _exchange(
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
        self._check_open()
        body = None if payload is None else dumps(payload)
        attempt = Attempt()
        with Deadline(self._options.timeouts.sync, attempt, path, self._timers, method):
            # Not queued: a re-login or refresh would otherwise wait behind every call queued
            # for a connection, each about to send the token it replaces and fail with a 401.
            raw = await self._send(
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
        return Promise(self._prepare(function_name, params, sync, timeout))

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
        if timeout is not NOT_GIVEN and timeout is not None:
            _check_timeout(timeout)
        if isinstance(self._auth, ServerAuth):
            path, body = open_api_path(name), open_api_body(params, sync)
        else:
            path, body = CLIENT_JOB_PATH, client_api_body(name, params, sync)
        options = self._options
        deadline = options.timeouts.for_mode(sync) if timeout is NOT_GIVEN else timeout
        self._check_open()
        # CallInfo, hooks and spans cost a few µs a call: only pay when they are in use.
        if options.on_request or options.on_response or options.tracing:
            info = CallInfo(name, sync)
            if options.tracing:
                return self._traced(info, path, body, sync, deadline)
            return self._invoke(info, path, body, sync, deadline)
        return self._invoke(None, path, body, sync, deadline)

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

    async def _traced(
        self, info: CallInfo, path: str, body: bytes, sync: bool, deadline: float | None
    ) -> InvokeResult:
        """``_invoke`` inside an OpenTelemetry span."""
        with invocation_span(info):
            return await self._invoke(info, path, body, sync, deadline)

    async def _invoke(
        self, info: CallInfo | None, path: str, body: bytes, sync: bool, deadline: float | None
    ) -> InvokeResult:
        attempt = Attempt()
        options = self._options
        shown = "/" + path  # as error messages show it
        with Deadline(deadline, attempt, path, self._timers) as bound:
            while True:
                if info is not None:
                    info.attempt, info.status, info.code, info.error = (
                        attempt.number,
                        None,
                        None,
                        None,
                    )
                    run_hook(options.on_request, info)
                try:
                    raw = await self._send("POST", path, body, attempt)
                    if info is not None:
                        info.status, info.request_id = raw.status, raw.request_id
                    check_status(raw, "POST", shown)
                    result = parse_result(raw, sync=sync, method="POST", path=shown)
                except HError as err:
                    err.attempts = attempt.number
                    err.may_have_executed = err.may_have_executed or attempt.sent_before
                    if info is not None:
                        info.error = err
                        run_hook(options.on_response, info)
                    wait = self._retry_wait(err, attempt, sync, bound)
                    if wait is None:
                        raise
                    logger.debug(
                        "retrying %s in %.3f s after try %d failed: %s",
                        path,
                        wait,
                        attempt.number,
                        err,
                    )
                    attempt.next(executed=err.may_have_executed)
                    await anyio.sleep(wait)
                else:
                    if info is not None:
                        info.code = result.code
                        run_hook(options.on_response, info)
                    return result

    def _retry_wait(
        self, err: HError, attempt: Attempt, sync: bool, bound: Deadline
    ) -> float | None:
        """How long to wait before trying *err*'s call again; None: do not."""
        retry = self._options.retry
        if attempt.number >= retry.attempts or not retry.should_retry(err, sync=sync):
            return None
        wait = retry.delay(attempt.number, getattr(err, "retry_after", None))
        if wait is None or wait >= bound.remaining():
            return None  # the server's pause, or the backoff, outlasts the deadline
        return wait

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

        Raises:
            InvalidArgumentError: (605, at once) a bad argument.

        Use ``async with`` for deterministic clean-up: leaving the block (or the loop's end,
        an error, or cancelling the consumer) cancels the calls in flight and returns their
        connections to the pool. A plain ``async for`` works too; after ``break`` the clean-up
        runs on the event loop's next iteration. Warns ``PoolSizeWarning`` when *concurrency*
        is larger than the connection pool.
        """
        return self._fanout(
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
        timeout: float | None | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        progress: Progress | None = None,
    ) -> Batch:
        """``map()`` collected: a ``Batch`` with every ``Outcome`` in input order and a
        ``Summary`` (counts, latency p50/p95/max, calls per second). Arguments as ``map``'s;
        with ``errors="raise"`` the first ``HError`` is raised instead."""
        # As completed: the list is in memory anyway, so no slow item should hold up others.
        fanout = self._fanout(
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
        return await collect(fanout)

    def _fanout(
        self,
        function_name: str,
        params: Iterable[JSON] | AsyncIterable[JSON],
        **options: Any,
    ) -> FanOut:
        check_fanout_arguments(function_name, params, **options)
        self._check_open()
        # stacklevel 3: the warning points at the caller of map() or invoke_many().
        warn_if_pool_too_small(self, options["concurrency"], stacklevel=3)
        return FanOut(self, function_name, params, **options)


def _check_timeout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgumentError(f"timeout must be a positive number or None, not {value!r}")


def _timeouts(value: Timeouts | float | None) -> Timeouts:
    if isinstance(value, Timeouts):
        return value
    if value is not None:
        _check_timeout(value)
    return Timeouts(sync=value, ack=value)


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


def _hook(name: str, value: object) -> Hook | None:
    if value is not None and not callable(value):
        raise InvalidArgumentError(f"{name} must be callable or None")
    return value


def _retry(value: object) -> Retry:
    if not isinstance(value, Retry):
        raise InvalidArgumentError(f"retry must be a Retry, not {type(value).__name__}")
    return value


def _headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgumentError("headers must be a mapping of str to str")
    return dict(value)


def _caller() -> str:
    return "".join(traceback.format_stack(limit=8)[:-2])
