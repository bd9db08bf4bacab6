"""What every route shares: the engine's state, JSON error replies, request ids, the request
gauges, injected faults, the Host check and CORS for browser pages.

Every error reply is ``{"status": "error", "error_msg": "..."}`` JSON (PROTOCOL.md §4.1).
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Final

import attrs
from aiohttp import web
from yarl import URL

from ..._logs import get_logger
from ..._protocol import CLIENT_API_PREFIX, CLIENT_HEADERS, REQUEST_ID_HEADER, error_reply
from .._accounts import Accounts
from .._config import EngineConfig
from .._faults import Faults, misbehave
from .._jobs import JobBoard
from .._store import Store
from ..runtime import FunctionFile
from ._server import EngineRequestHandler

logger = get_logger("minapp_async.engine")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Names of the routes that run a function: faults with path=None target these.
CLIENT_JOB_ROUTE: Final = "hserve-job"
OPEN_API_LEGACY_JOB_ROUTE: Final = "oserve-job"
OPEN_API_JOB_ROUTE: Final = "oserve-v13-job"
OPEN_API_DEBUG_ROUTE: Final = "oserve-debug"
INVOKE_ROUTES: Final = frozenset(
    {CLIENT_JOB_ROUTE, OPEN_API_LEGACY_JOB_ROUTE, OPEN_API_JOB_ROUTE, OPEN_API_DEBUG_ROUTE}
)
_CLIENT_API_ROOT: Final = "/" + CLIENT_API_PREFIX


@attrs.define
class AppState:
    """Everything the handlers share; one per engine."""

    config: EngineConfig
    accounts: Accounts
    board: JobBoard
    store: Store
    #: The function file for a name, resolved once per request (None: no such function).
    locate_function: Callable[[str], FunctionFile | None]
    faults: Faults
    #: The functions in the folder now, for the 404's "did you mean" (read on a 404 only).
    function_names: Callable[[], list[str]] = list
    requests_served: int = 0
    requests_in_flight: int = 0
    peak_concurrent_requests: int = 0


STATE: Final = web.AppKey("minapp_engine_state", AppState)
# aiohttp 3.14 added typed request keys and warns on plain strings; older versions take a string.
_REQUEST_ID: Final = (
    web.RequestKey("minapp_engine_request_id", str)
    if hasattr(web, "RequestKey")
    else "minapp_engine_request_id"
)


class ApiError(Exception):
    """Raised by handlers to reply ``status`` with an error body naming *message*."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
# The same bytes as web.json_response sends (clients and tests may compare them).
_to_json: Final = json.JSONEncoder().encode


def json_reply(
    data: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The reply ``web.json_response`` makes (the same bytes and Content-Type) with less work
    per reply: the body given to aiohttp as bytes with its header, nothing to work out."""
    fixed = {"Content-Type": _JSON_CONTENT_TYPE}
    if headers is not None:
        fixed = {**headers, **fixed}
    return web.Response(body=_to_json(data).encode(), status=status, headers=fixed)


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_reply(error_reply(message), status=status, headers=headers)


def request_id(request: web.Request) -> str:
    """The id the middleware gave *request* (sent back in the request-id header)."""
    return request[_REQUEST_ID]


def safe_name(name: str, limit: int = 64) -> str:
    """*name* quoted for an error message: control characters escaped, length capped."""
    shown = name if len(name) <= limit else name[:limit] + "…"
    out = []
    for ch in shown:
        if ch.isprintable() and ch not in "'\\":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "'" + "".join(out) + "'"


async def _call(handler: Handler, request: web.Request) -> web.StreamResponse:
    """Run *handler*, turning every failure into a JSON error reply."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - _failure_reply logs what is unexpected
        return _failure_reply(request, exc)


def _failure_reply(request: web.Request, exc: Exception) -> web.Response:
    """The JSON error reply for a handler's failure *exc*."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc  # a redirect raised by aiohttp itself: let it through
        return _http_exception_reply(request, exc)
    if isinstance(exc, ConnectionResetError):
        # The client left mid-request (e.g. its timeout fired): nobody will read a reply.
        logger.debug("client went away during %s %s", request.method, request.path)
        return error_response(400, "the client closed the connection")
    logger.error(
        "unexpected error on %s %s (request id %s)",
        request.method,
        request.path,
        request.get(_REQUEST_ID),
        exc_info=exc,
    )
    return error_response(
        500,
        f"internal engine error (request id {request.get(_REQUEST_ID)}); see the engine's log",
    )


def _http_exception_reply(request: web.Request, exc: web.HTTPException) -> web.Response:
    state = request.app[STATE]
    headers = {}
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = f"request body is too large: at most {state.config.max_body_bytes} bytes allowed"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"method {exc.method} is not allowed on {request.path} (allowed: {allowed})"
        headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    elif isinstance(exc, web.HTTPNotFound):
        message = f"no such endpoint: {request.method} {safe_name(request.path, 200)}"
    else:
        message = exc.text or exc.reason
    return error_response(exc.status, message, headers)


@web.middleware
async def serve_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request ids, the request gauges, faults, and JSON errors for everything.

    The only middleware, and it awaits the handler itself (not through :func:`_call`): each
    middleware and wrapper is a coroutine frame more for every request."""
    state = request.app[STATE]
    request[_REQUEST_ID] = new_request_id()
    protocol = request.protocol
    if isinstance(protocol, EngineRequestHandler):
        protocol.request_arrived()
    refusal = _refuse_host(request, state.config) or _refuse_origin(request, state.config)
    if refusal is not None:
        return error_response(403, refusal)
    if request.method == "OPTIONS" and _is_preflight(request):
        return web.Response(
            status=204, headers={**_CORS_PREFLIGHT, **_cors(request.headers["Origin"])}
        )
    state.requests_in_flight += 1
    state.peak_concurrent_requests = max(state.peak_concurrent_requests, state.requests_in_flight)
    try:
        faults = state.faults
        fault = None
        if faults:  # none armed (the usual case): no route lookup
            is_invoke = request.method == "POST" and request.match_info.route.name in INVOKE_ROUTES
            fault = faults.take(request.path, is_invoke=is_invoke)
        if fault is None:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - _failure_reply logs what is unexpected
                return _failure_reply(request, exc)
        return await misbehave(fault, request, lambda: _call(handler, request))
    finally:
        state.requests_in_flight -= 1
        state.requests_served += 1


def _request_ids() -> Iterator[str]:
    # Unique, not secret: a random prefix per process (two engines never share ids) and a
    # counter, 32 hex digits as before, without a getrandom() call per request.
    prefix = secrets.token_hex(8)
    for n in itertools.count():
        yield f"{prefix}{n:016x}"


new_request_id: Final[Callable[[], str]] = functools.partial(next, _request_ids())


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal, not middleware, so streamed (fault) replies carry the
    request-id header too."""
    response.headers[REQUEST_ID_HEADER] = request.get(_REQUEST_ID) or new_request_id()
    origin = request.headers.get("Origin")
    # Requests from origins not allowed were refused by the middleware; a reply with no
    # middleware run (an injected fault) gets no CORS headers unless its origin is allowed.
    if (
        origin is not None
        and request.path.startswith(_CLIENT_API_ROOT)
        and origin_allowed(origin, request.app[STATE].config)
    ):
        response.headers.update(_cors(origin))


# ---------------------------------------------------------------- who may call


_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def _is_loopback_name(name: str) -> bool:
    # *.localhost is loopback by definition (RFC 6761), and browsers resolve it so. The
    # usual names answer without parsing an address (this runs for every request).
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(header: str) -> str:
    """The name part of a Host header: ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``."""
    header = header.strip().lower().rstrip(".")
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() else header


def host_allowed(header: str, config: EngineConfig) -> bool:
    """Whether the engine answers a request sent to *header* (its Host).

    DNS rebinding points a name the attacker owns at 127.0.0.1, so a page from that name
    can reach the engine, but its requests still carry that name: only loopback names, the
    address the engine is bound to and names the developer allowed get through. An IP
    address is never a rebound name, so one bound to every interface answers any IP too.
    """
    name = _host_name(header)
    if _is_loopback_name(name) or name == config.host.lower().strip("[]"):
        return True
    if "*" in config.allowed_hosts or name in (h.lower() for h in config.allowed_hosts):
        return True
    return config.host in ("0.0.0.0", "::") and _is_ip(name)


def origin_allowed(origin: str, config: EngineConfig) -> bool:
    """Whether a browser page from *origin* may call the engine: loopback pages, and the
    origins given with ``--cors-origin``."""
    wanted = origin.strip().rstrip("/").lower()
    if "*" in config.cors_origins or wanted in (o.rstrip("/").lower() for o in config.cors_origins):
        return True
    try:
        url = URL(wanted)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and _is_loopback_name((url.host or "").strip("[]"))


def _refuse_host(request: web.Request, config: EngineConfig) -> str | None:
    header = request.headers.get("Host")
    if header is None or host_allowed(header, config):
        return None  # no Host at all: an HTTP/1.0 client, never a browser
    return (
        f"the engine does not serve the host name {safe_name(header, 100)}: it answers "
        "loopback names (localhost, 127.0.0.1, [::1]) and its bound address only, a "
        "defence against DNS rebinding; allow this name with --allow-host NAME "
        "(EngineConfig.allowed_hosts)"
    )


def _refuse_origin(request: web.Request, config: EngineConfig) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or origin_allowed(origin, config):
        return None
    return (
        f"requests from the web origin {safe_name(origin, 100)} are not allowed: only "
        "loopback pages may call the engine; allow this origin with --cors-origin ORIGIN "
        "(EngineConfig.cors_origins)"
    )


def _cors(origin: str) -> dict[str, str]:
    # The origin is echoed (not "*"): the reply is readable by that page only.
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": REQUEST_ID_HEADER,
        "Vary": "Origin",
    }


# A browser page using the JS SDK's web build calls the client API cross-origin: the engine
# answers the preflight of an allowed origin and marks replies as readable by it.
_CORS_PREFLIGHT: Final = {
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": ", ".join(("Authorization", "Content-Type", *CLIENT_HEADERS)),
    "Access-Control-Max-Age": "600",
}


def _is_preflight(request: web.Request) -> bool:
    return (
        request.path.startswith(_CLIENT_API_ROOT)
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )
