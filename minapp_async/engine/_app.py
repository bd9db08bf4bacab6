"""The engine's aiohttp application: hserve and oserve routes, auth checks and middlewares.

Every error reply is ``{"status": "error", "error_msg": "..."}`` JSON (PROTOCOL.md §4.1).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, NoReturn

import attrs
from aiohttp import web
from multidict import MultiDictProxy

from .._logs import get_logger
from ._accounts import AccountError, Accounts, LoginKind, User
from ._config import EngineConfig
from ._faults import Faults, misbehave
from ._jobs import FINISHED, Job, JobBoard

logger = get_logger("minapp_async.engine")

REQUEST_ID_HEADER: Final = "X-Request-Id"
CLIENT_ID_HEADER: Final = "X-Hydrogen-Client-ID"
ENV_HEADER: Final = "X-Hydrogen-Env-ID"
#: hserve's auth scheme (PROTOCOL.md §2): "Hydrogen-r1 <token>".
HYDROGEN_SCHEME: Final = "hydrogen-r1"
AUTHORIZE_COOKIE: Final = "minapp_engine_authorize"
#: Documented job sources, which the debug endpoint accepts as ``subject`` (PROTOCOL.md §6.2).
DEBUG_SUBJECTS: Final = frozenset(
    {
        "sdk",
        "open_api",
        "cloud_function",
        "flex_schema",
        "wechat_pay_success",
        "timer",
        "file_operation",
    }
)
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 20
#: Route names of the endpoints that run a function: faults with path=None target these.
INVOKE_ROUTES: Final = frozenset({"hserve-job", "oserve-job", "oserve-v13-job", "oserve-debug"})


@attrs.define
class AppState:
    """Everything the handlers share; one per engine."""

    config: EngineConfig
    accounts: Accounts
    board: JobBoard
    find_function: Callable[[str], object | None]
    faults: Faults
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

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"status": "error", "error_msg": message}, status=status, headers=headers
    )


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


# ---------------------------------------------------------------- middlewares


async def _call(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request: web.Request
) -> web.StreamResponse:
    """Run *handler*, turning every failure into a JSON error reply."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect raised by aiohttp itself: let it through
        return _http_exception_reply(request, exc)
    except ConnectionResetError:
        # The client left mid-request (e.g. its timeout fired): nobody will read a reply.
        logger.debug("client went away during %s %s", request.method, request.path)
        return error_response(400, "the client closed the connection")
    except Exception:
        logger.exception(
            "unexpected error on %s %s (request id %s)",
            request.method,
            request.path,
            request.get(_REQUEST_ID),
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
async def _serve_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request ids, the request gauges, faults, and JSON errors for everything."""
    state = request.app[STATE]
    request[_REQUEST_ID] = secrets.token_hex(16)
    if request.method == "OPTIONS" and _is_preflight(request):
        return web.Response(status=204, headers=_CORS_PREFLIGHT)
    state.requests_in_flight += 1
    state.peak_concurrent_requests = max(state.peak_concurrent_requests, state.requests_in_flight)
    try:
        route = request.match_info.route
        is_invoke = request.method == "POST" and route.name in INVOKE_ROUTES
        fault = state.faults.take(request.path, is_invoke=is_invoke)
        if fault is None:
            return await _call(handler, request)
        return await misbehave(fault, request, lambda: _call(handler, request))
    finally:
        state.requests_in_flight -= 1
        state.requests_served += 1


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # A signal, not the middleware, so streamed (fault) replies carry the header too.
    response.headers[REQUEST_ID_HEADER] = request.get(_REQUEST_ID) or secrets.token_hex(16)
    if "Origin" in request.headers and request.path.startswith("/hserve/"):
        response.headers.update(_CORS)


# A browser page using the JS SDK's web build calls the client API cross-origin: the engine
# answers the preflight and marks replies as readable by any origin (it only serves 127.0.0.1).
_CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": REQUEST_ID_HEADER,
}
_CORS_PREFLIGHT: Final = {
    **_CORS,
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Authorization, Content-Type, X-Hydrogen-Client-ID, X-Hydrogen-Client-Version, "
        "X-Hydrogen-Client-Platform, X-Hydrogen-Client-SDK-Type, X-Hydrogen-Env-ID"
    ),
    "Access-Control-Max-Age": "600",
}


def _is_preflight(request: web.Request) -> bool:
    return (
        request.path.startswith("/hserve/")
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


# ---------------------------------------------------------------- request parsing


def _parse_constant(name: str) -> NoReturn:
    # NaN/Infinity are not JSON, and Node could not parse them back.
    raise ValueError(f"{name} is not valid JSON")


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``."""
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_parse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_json_type(body)}")
    return body


async def _form_or_json_body(request: web.Request) -> Mapping[str, Any]:
    """JSON, multipart/form-data or urlencoded: the OAuth endpoints accept all three."""
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form: MultiDictProxy[Any] = await request.post()
        except ValueError as exc:
            raise ApiError(400, f"request body is not a valid form: {exc}") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}
    return await _json_body(request)


def _json_type(value: object) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _env_id(request: web.Request) -> str | None:
    env = request.headers.get(ENV_HEADER, "").strip()
    return env or None


def _sync_flag(body: Mapping[str, Any]) -> bool:
    # The JS SDK defaults sync to true only when the argument is missing (PROTOCOL.md §3.1).
    sync = body.get("sync", True)
    if not isinstance(sync, bool):
        raise ApiError(400, f"sync must be a boolean (true or false), got {_json_type(sync)}")
    return sync


# ---------------------------------------------------------------- hserve auth


def _check_client_id(request: web.Request) -> None:
    client_id = request.headers.get(CLIENT_ID_HEADER)
    if client_id is None or not client_id.strip():
        raise ApiError(400, f"the {CLIENT_ID_HEADER} header is missing")
    if not request.app[STATE].accounts.is_client_id(client_id.strip()):
        raise ApiError(401, f"the {CLIENT_ID_HEADER} header does not match this engine's client id")


def _hydrogen_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != HYDROGEN_SCHEME or not token.strip():
        raise ApiError(401, "the Authorization header must be 'Hydrogen-r1 <token>'")
    return token.strip()


def _current_user(request: web.Request) -> tuple[User, str]:
    """The logged-in caller and their token, or 401."""
    token = _hydrogen_token(request)
    if token is None:
        raise ApiError(401, "not logged in: send Authorization: Hydrogen-r1 <token>")
    user = request.app[STATE].accounts.session_user(token)
    if user is None:
        raise ApiError(401, "the session token is invalid or expired: log in again")
    return user, token


# ---------------------------------------------------------------- hserve: accounts


async def _anonymous_login(request: web.Request) -> web.Response:
    _check_client_id(request)
    await _json_body(request)  # the SDK sends {}; still refuse garbage
    accounts = request.app[STATE].accounts
    user = accounts.create_anonymous_user()
    token = accounts.open_session(user)
    return web.json_response(
        {"token": token, "user_id": user.id, "expires_in": accounts.session_ttl}, status=201
    )


def _login_reply(accounts: Accounts, user: User) -> web.Response:
    token = accounts.open_session(user)
    return web.json_response(
        {**user.public(), "token": token, "expires_in": accounts.session_ttl, "user_id": user.id},
        status=201,
    )


def _login(kind: LoginKind) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def login(request: web.Request) -> web.Response:
        _check_client_id(request)
        body = await _json_body(request)
        accounts = request.app[STATE].accounts
        try:
            user = accounts.login(kind, body.get(kind), body.get("password"))
        except AccountError as exc:
            raise ApiError(exc.status, exc.message) from None
        return _login_reply(accounts, user)

    return login


def _register(kind: LoginKind) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def register(request: web.Request) -> web.Response:
        _check_client_id(request)
        body = await _json_body(request)
        value, password = body.get(kind), body.get("password")
        if not isinstance(value, str) or not value:
            raise ApiError(400, f"{kind} must be a non-empty string")
        if not isinstance(password, str) or not password:
            raise ApiError(400, "password must be a non-empty string")
        accounts = request.app[STATE].accounts
        try:
            user = accounts.create_user(password=password, **{kind: value})
        except AccountError as exc:
            raise ApiError(exc.status, exc.message) from None
        return _login_reply(accounts, user)

    return register


async def _user_info(request: web.Request) -> web.Response:
    _check_client_id(request)
    _current_user(request)
    raw = request.match_info["user_id"]
    user_id = _uint(raw)
    user = request.app[STATE].accounts.user(user_id) if user_id is not None else None
    if user is None:
        raise ApiError(404, f"user {safe_name(raw)} not found")
    return web.json_response(user.public())


async def _destroy_session(request: web.Request) -> web.Response:
    _check_client_id(request)
    _, token = _current_user(request)
    request.app[STATE].accounts.destroy_session(token)
    return web.json_response({"message": "Destroy succeed.", "status": "ok"}, status=201)


# ---------------------------------------------------------------- invoking


def _lookup(request: web.Request, name: object) -> str:
    """The function's name if it exists; 404 otherwise (PROTOCOL.md §3.1 / §9)."""
    if not isinstance(name, str) or not name:
        raise ApiError(
            404,
            "cloud function not found: function_name must be a non-empty string, "
            f"got {_json_type(name)}",
        )
    if request.app[STATE].find_function(name) is None:
        raise ApiError(404, f"cloud function {safe_name(name)} not found")
    return name


def _event(
    request: web.Request,
    job: Job,
    *,
    data: Any,
    user: User | None,
    time_limit: float,
    debug: bool = False,
) -> dict[str, Any]:
    """The function's ``event`` (PROTOCOL.md §7.2). It never carries a token."""
    config = request.app[STATE].config
    event: dict[str, Any] = {
        "data": data,
        "eventType": job.source,
        "jobId": job.id,
        "miniappId": config.miniapp_id,
        "timeLimitInMS": round(time_limit * 1000),
        "memoryLimitInMB": config.memory_limit_mb,
        # Stands in for the key BaaS.wxAccessToken() takes; fresh per job.
        "signKey": secrets.token_hex(16),
        "timezone": "Asia/Shanghai",
        "debug": debug,
    }
    if user is not None:
        event["request"] = {
            "meta": {
                "ip_address": request.remote or "",
                "user_agent": request.headers.get("User-Agent", ""),
            },
            "user": {
                "id": user.id,
                "nickname": user.username or "",
                "avatar_url": "",
                "openid": "",
                "unionid": "",
            },
        }
    env = _env_id(request)
    if env is not None:
        event["env"] = {"id": env, "name": env}
    return event


def _new_job(request: web.Request, name: str, *, sync: bool, source: str, user: User | None) -> Job:
    try:
        return request.app[STATE].board.create(
            name,
            sync=sync,
            source=source,
            request_id=request[_REQUEST_ID],
            user_id=user.id if user is not None else None,
        )
    except RuntimeError as exc:
        raise ApiError(503, str(exc)) from None


async def _invoke(
    request: web.Request,
    name: str,
    *,
    data: Any,
    sync: bool,
    source: str,
    user: User | None,
) -> web.Response:
    """Run a job and answer as the platform does: the envelope, or ``{"status": "ok"}``."""
    board = request.app[STATE].board
    job = _new_job(request, name, sync=sync, source=source, user=user)
    limit = board.sync_time_limit if sync else board.async_time_limit
    event = _event(request, job, data=data, user=user, time_limit=limit)
    if not sync:
        board.submit(job.id, event)
        return web.json_response({"status": "ok"})
    job = await board.run_sync(job.id, event)
    if job.result is not None:
        # User-code failures come back as 200 with code 1: the SDK resolves with them.
        return web.json_response(job.result)
    # Platform failures (scheduling, timeout, a dead worker) are 400s (PROTOCOL.md §7.3).
    # job_status is our addition: it tells a client whether the function ever started
    # (schedule_failed: it did not, so a retry cannot run it twice).
    return web.json_response(
        {
            "status": "error",
            "error_msg": job.error_msg or f"cloud function {name!r} failed",
            "job_status": job.status,
        },
        status=400,
    )


async def _hserve_job(request: web.Request) -> web.Response:
    _check_client_id(request)
    user, _ = _current_user(request)
    if user.anonymous and not request.app[STATE].config.allow_anonymous:
        raise ApiError(
            403,
            "anonymous users may not invoke cloud functions "
            "(the engine's allow_anonymous / --allow-anonymous switch allows it)",
        )
    body = await _json_body(request)
    sync = _sync_flag(body)
    name = _lookup(request, body.get("function_name"))
    # A missing data is passed as {} so "event.data.x" works, as in the seed's helloWorld.
    data = body.get("data", {})
    return await _invoke(request, name, data=data, sync=sync, source="sdk", user=user)


# ---------------------------------------------------------------- oserve


def _check_bearer(request: web.Request) -> None:
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "send Authorization: Bearer <access token>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must be 'Bearer <access token>'")
    if not request.app[STATE].accounts.access_token_valid(token.strip()):
        raise ApiError(401, "the access token is invalid or expired")


async def _oserve_job(request: web.Request) -> web.Response:
    _check_bearer(request)
    body = await _json_body(request)
    sync = _sync_flag(body)
    name = _lookup(request, body.get("function_name"))
    data = body.get("data", {})
    return await _invoke(request, name, data=data, sync=sync, source="open_api", user=None)


async def _oserve_v13_job(request: web.Request) -> web.Response:
    _check_bearer(request)
    name = _lookup(request, request.match_info["name"])
    body = await _json_body(request)
    if "data" not in body:
        raise ApiError(400, "data is required (send {} when the function takes none)")
    sync = _sync_flag(body)
    return await _invoke(request, name, data=body["data"], sync=sync, source="open_api", user=None)


async def _oserve_debug(request: web.Request) -> web.Response:
    """A test run: the outcome with its log, job id and timings, as the dashboard shows."""
    _check_bearer(request)
    state = request.app[STATE]
    name = _lookup(request, request.match_info["name"])
    body = await _json_body(request)
    subject = body.get("subject", "open_api")
    if subject not in DEBUG_SUBJECTS:
        raise ApiError(400, f"subject must be one of {sorted(DEBUG_SUBJECTS)}")
    job = _new_job(request, name, sync=True, source=subject, user=None)
    event = _event(
        request,
        job,
        data=body.get("data", {}),
        user=None,
        time_limit=state.board.sync_time_limit,
        debug=True,
    )
    job = await state.board.run_sync(job.id, event)
    if job.status in ("schedule_failed", "execution_rejected"):
        raise ApiError(400, job.error_msg or "the job could not be scheduled")
    # A timeout or a dead worker still shows its log here: that is what a debug run is for.
    result = job.result or {
        "code": 1,
        "data": None,
        "error": {"message": job.error_msg or "", "stack": "", "type": _failure_type(job)},
    }
    return web.json_response(
        {
            # Billed in 100 ms steps, like the platform's billing time.
            "billing_time": math.ceil(job.execution_time_ms / 100) * 100,
            "code": result.get("code"),
            "data": result.get("data"),
            "error": result.get("error", {}),
            "execution_time": job.execution_time_ms,
            "job_id": job.id,
            "log": job.log,
            "mem_usage": job.mem_usage,
        }
    )


def _failure_type(job: Job) -> str:
    return "DeadlineExceeded" if job.status == "deadline_exceeded" else "ExecutionFailed"


def _uint(raw: str) -> int | None:
    """*raw* as a non-negative int, or None. ASCII digits only ("²".isdigit() is true, and
    int() refuses it) and a bounded length (int() refuses over 4300 digits)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 30:
        return None
    return int(raw)


def _int_param(request: web.Request, key: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    value = _uint(raw)
    if value is None or not low <= value <= high:
        raise ApiError(400, f"{key} must be an integer between {low} and {high}")
    return value


def _float_param(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{key} must be a number (epoch seconds)") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{key} must be a finite number (epoch seconds)")
    return value


async def _oserve_job_list(request: web.Request) -> web.Response:
    _check_bearer(request)
    name = _lookup(request, request.match_info["name"])
    query = request.query
    limit = _int_param(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    offset = _int_param(request, "offset", 0, low=0, high=2**31)
    status = query.get("status")
    valid_statuses = FINISHED | {"waiting", "executing"}
    if status is not None and status not in valid_statuses:
        raise ApiError(400, f"status must be one of {sorted(valid_statuses)}")
    service_type = query.get("service_type")
    if service_type is not None and service_type not in ("time_sensitive", "batch"):
        raise ApiError(400, "service_type must be time_sensitive or batch")
    source = query.get("source")
    since, until = (
        _float_param(request, "created_at__gte"),
        _float_param(request, "created_at__lte"),
    )
    jobs = [
        j
        for j in reversed(request.app[STATE].board.jobs(name))  # newest first
        if status in (None, j.status)
        and source in (None, j.source)
        and service_type in (None, j.service_type)
        and (since is None or j.created_at >= since)
        and (until is None or j.created_at <= until)
    ]
    page = jobs[offset : offset + limit]
    base = request.rel_url
    has_next = offset + limit < len(jobs)
    return web.json_response(
        {
            "meta": {
                "limit": limit,
                "offset": offset,
                "total_count": len(jobs),
                "next": str(base.update_query(limit=limit, offset=offset + limit))
                if has_next
                else None,
                "previous": str(base.update_query(limit=limit, offset=max(0, offset - limit)))
                if offset > 0
                else None,
            },
            "objects": [
                {
                    "id": j.id,
                    "created_at": j.created_at,
                    "started_at": j.started_at,
                    "finished_at": j.finished_at,
                    "mem_usage": j.mem_usage,
                    "service_type": j.service_type,
                    "source": j.source,
                    "status": j.status,
                    "user_log_url": str(
                        request.url.origin().with_path(
                            f"/oserve/v1.3/cloud-function/{name}/job/{j.id}/log/"
                        )
                    ),
                }
                for j in page
            ],
        }
    )


async def _oserve_job_log(request: web.Request) -> web.Response:
    """The log behind a job's ``user_log_url``, as plain text."""
    _check_bearer(request)
    name = _lookup(request, request.match_info["name"])
    job_id = request.match_info["job_id"]
    try:
        job = request.app[STATE].board.job(job_id)
    except KeyError:
        job = None
    if job is None or job.function_name != name:
        raise ApiError(404, f"job {safe_name(job_id)} of cloud function {name!r} not found")
    return web.Response(text=job.log, content_type="text/plain")


# ---------------------------------------------------------------- OAuth (PROTOCOL.md §6.1)

_AUTHORIZE: Final = "/api/oauth2/hydrogen/openapi/authorize/"
_AUTHORIZE_CONFIRM: Final = _AUTHORIZE + "confirm/"
_AUTHORIZE_CODE: Final = _AUTHORIZE + "code/"
_NO_COOKIE: Final = (
    "the authorization cookie is missing or stale: follow the redirects with a cookie jar "
    "and keep the cookie the first reply set"
)


def _redirect(location: str) -> web.Response:
    # A plain 302 response: returning (not raising) web.HTTPFound is deprecated in aiohttp.
    return web.Response(status=302, headers={"Location": location})


async def _authorize(request: web.Request) -> web.StreamResponse:
    """Step 1: check the client, set a cookie, redirect. Two 302s, as the platform does."""
    body = await _form_or_json_body(request)
    accounts = request.app[STATE].accounts
    if not accounts.check_client(body.get("client_id"), body.get("client_secret")):
        raise ApiError(401, "client_id or client_secret is wrong")
    state = accounts.begin_authorization()
    response = _redirect(_AUTHORIZE_CONFIRM)
    response.set_cookie(AUTHORIZE_COOKIE, state, httponly=True, path="/api/oauth2/")
    return response


async def _authorize_confirm(request: web.Request) -> web.StreamResponse:
    """Step 2: the cookie must have come back; redirect on to the code."""
    state = request.cookies.get(AUTHORIZE_COOKIE)
    if not request.app[STATE].accounts.advance_authorization(state, 1):
        raise ApiError(400, _NO_COOKIE)
    return _redirect(_AUTHORIZE_CODE)


async def _authorize_code(request: web.Request) -> web.Response:
    """Step 3: the code, once per authorization."""
    state = request.cookies.get(AUTHORIZE_COOKIE)
    code = request.app[STATE].accounts.finish_authorization(state, 2)
    if code is None:
        raise ApiError(400, _NO_COOKIE)
    response = web.json_response({"code": code, "expires_in": 600})
    response.del_cookie(AUTHORIZE_COOKIE, path="/api/oauth2/")
    return response


async def _access_token(request: web.Request) -> web.Response:
    body = await _form_or_json_body(request)
    accounts = request.app[STATE].accounts
    if not accounts.check_client(body.get("client_id"), body.get("client_secret")):
        raise ApiError(401, "client_id or client_secret is wrong")
    grant_type = body.get("grant_type")
    try:
        if grant_type == "authorization_code":
            pair = accounts.exchange_code(body.get("code"))
        elif grant_type == "refresh_token":
            pair = accounts.refresh(body.get("refresh_token"))
        else:
            raise ApiError(400, "grant_type must be authorization_code or refresh_token")
    except AccountError as exc:
        raise ApiError(exc.status, exc.message) from None
    return web.json_response(pair.as_json())


async def _latest_sdk_version(request: web.Request) -> web.Response:
    # The WeChat build asks this once a day and reads a field named after its platform; the
    # reply's shape is undocumented. An empty object reads as "no newer version".
    return web.json_response({})


# ---------------------------------------------------------------- the app


def create_app(state: AppState) -> web.Application:
    """The engine's aiohttp application over *state*."""
    app = web.Application(
        middlewares=[_serve_middleware], client_max_size=state.config.max_body_bytes
    )
    app[STATE] = state
    app.on_response_prepare.append(_add_request_id)
    r = app.router
    r.add_post("/hserve/v2.0/login/anonymous/", _anonymous_login)
    kinds: tuple[LoginKind, ...] = ("username", "email", "phone")
    for kind in kinds:
        r.add_post(f"/hserve/v2.1/login/{kind}/", _login(kind))
        r.add_post(f"/hserve/v2.1/register/{kind}/", _register(kind))
    r.add_get("/hserve/v2.5/user/info/{user_id}/", _user_info)
    r.add_post("/hserve/v2.0/session/destroy/", _destroy_session)
    r.add_post("/hserve/v1/cloud-function/job/", _hserve_job, name="hserve-job")
    r.add_get("/hserve/v1/latest-sdk-version/", _latest_sdk_version)

    r.add_post(_AUTHORIZE, _authorize)
    r.add_get(_AUTHORIZE_CONFIRM, _authorize_confirm)
    r.add_get(_AUTHORIZE_CODE, _authorize_code)
    r.add_post("/api/oauth2/access_token/", _access_token)

    r.add_post("/oserve/v1/cloud-function/job/", _oserve_job, name="oserve-job")
    # ".+" so names with "/" reach the handler and get the function-not-found reply.
    base = "/oserve/v1.3/cloud-function/{name:.+}"
    r.add_get(base + "/job/{job_id:[0-9a-f]+}/log/", _oserve_job_log)
    job = r.add_resource(base + "/job/", name="oserve-v13-job")
    job.add_route("POST", _oserve_v13_job)
    job.add_route("GET", _oserve_job_list)
    r.add_post(base + "/debug/", _oserve_debug, name="oserve-debug")
    return app
