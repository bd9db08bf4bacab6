"""The Open API (oserve) a server calls with ``Authorization: Bearer <access token>``: invoking
functions, test runs, the job list and job logs; and the OAuth flow that issues those tokens
(PROTOCOL.md §6)."""

from __future__ import annotations

import math
from typing import Final, get_args

from aiohttp import web

from ..._protocol import (
    ACCESS_TOKEN_PATH,
    AUTHORIZE_PATH,
    OPEN_API_FUNCTION_PREFIX,
    OPEN_API_JOB_PATH,
    OPEN_API_LEGACY_JOB_PATH,
    SCHEDULE_FAILED,
    SERVER_AUTH_SCHEME,
    JobStatus,
)
from .._accounts import AccountError
from .._jobs import Job
from ._invoking import encode_data, invoke, lookup, run_sync
from ._middleware import (
    OPEN_API_DEBUG_ROUTE,
    OPEN_API_JOB_ROUTE,
    OPEN_API_LEGACY_JOB_ROUTE,
    STATE,
    ApiError,
    safe_name,
)
from ._parsing import float_param, form_or_json_body, int_param, json_body, sync_flag

_SCHEME: Final = SERVER_AUTH_SCHEME.lower()  # schemes are case-insensitive (RFC 9110 §11.1)
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
_JOB_STATUSES: Final[frozenset[str]] = frozenset(get_args(JobStatus))
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 20
#: Where a job's log is served, below its function's job path.
_JOB_LOG: Final = "{job_id}/log/"


# ---------------------------------------------------------------- functions and jobs


def _check_bearer(request: web.Request) -> None:
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, f"send Authorization: {SERVER_AUTH_SCHEME} <access token>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != _SCHEME or not token.strip():
        raise ApiError(
            401, f"the Authorization header must be '{SERVER_AUTH_SCHEME} <access token>'"
        )
    if not request.app[STATE].accounts.access_token_valid(token.strip()):
        raise ApiError(401, "the access token is invalid or expired")


async def _legacy_job(request: web.Request) -> web.Response:
    _check_bearer(request)
    body = await json_body(request)
    sync = sync_flag(body)
    function = lookup(request, body.get("function_name"))
    data_json = encode_data(body.get("data", {}))
    del body  # from here on the params live as JSON text only
    return await invoke(
        request, function, data_json=data_json, sync=sync, source="open_api", user=None
    )


async def _job(request: web.Request) -> web.Response:
    _check_bearer(request)
    function = lookup(request, request.match_info["name"])
    body = await json_body(request)
    if "data" not in body:
        raise ApiError(400, "data is required (send {} when the function takes none)")
    sync = sync_flag(body)
    data_json = encode_data(body["data"])
    del body  # from here on the params live as JSON text only
    return await invoke(
        request, function, data_json=data_json, sync=sync, source="open_api", user=None
    )


async def _debug(request: web.Request) -> web.Response:
    """A test run: the outcome with its log, job id and timings, as the dashboard shows."""
    _check_bearer(request)
    function = lookup(request, request.match_info["name"])
    body = await json_body(request)
    subject = body.get("subject", "open_api")
    if subject not in DEBUG_SUBJECTS:
        raise ApiError(400, f"subject must be one of {sorted(DEBUG_SUBJECTS)}")
    data_json = encode_data(body.get("data", {}))
    del body
    job = await run_sync(
        request, function, data_json=data_json, source=subject, user=None, debug=True
    )
    if job.status in (SCHEDULE_FAILED, "execution_rejected"):
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


async def _job_list(request: web.Request) -> web.Response:
    _check_bearer(request)
    name = lookup(request, request.match_info["name"]).name
    query = request.query
    limit = int_param(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    offset = int_param(request, "offset", 0, low=0, high=2**31)
    status = query.get("status")
    if status is not None and status not in _JOB_STATUSES:
        raise ApiError(400, f"status must be one of {sorted(_JOB_STATUSES)}")
    service_type = query.get("service_type")
    if service_type is not None and service_type not in ("time_sensitive", "batch"):
        raise ApiError(400, "service_type must be time_sensitive or batch")
    source = query.get("source")
    since, until = (
        float_param(request, "created_at__gte"),
        float_param(request, "created_at__lte"),
    )
    sync = None if service_type is None else service_type == "time_sensitive"
    board = request.app[STATE].board
    # Sync calls in flight are not in the store yet (each is recorded once it ends): they
    # lead the list, newest first, then the store's records.
    live = [
        j
        for j in reversed(board.in_flight(name, sync=True))
        if sync in (None, True)
        and status in (None, j.status)
        and source in (None, j.source)
        and (since is None or j.created_at >= since)
        and (until is None or j.created_at <= until)
    ]
    stored = await request.app[STATE].store.list_jobs(
        function_name=name,
        status=status,
        source=source,
        sync=sync,
        created_from=since,
        created_to=until,
        offset=max(0, offset - len(live)),
        limit=max(0, limit - len(live[offset:])),
    )
    current = {j.id: j for j in board.in_flight(name, sync=False)}
    page = live[offset : offset + limit] + [
        current.get(r.id) or Job.from_record(r) for r in stored.jobs
    ]
    total = len(live) + stored.total
    base = request.rel_url
    has_next = offset + limit < total
    log_root = request.url.origin().with_path("/" + OPEN_API_JOB_PATH.format(name=name))
    return web.json_response(
        {
            "meta": {
                "limit": limit,
                "offset": offset,
                "total_count": total,
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
                    "user_log_url": str(log_root) + _JOB_LOG.format(job_id=j.id),
                    # The engine's additions: how often the job started, and whether an
                    # engine stop cut it off mid-run so that it ran again.
                    "attempts": j.attempts,
                    "rerun": j.rerun,
                }
                for j in page
            ],
        }
    )


async def _job_log(request: web.Request) -> web.Response:
    """The log behind a job's ``user_log_url``, as plain text."""
    _check_bearer(request)
    name = lookup(request, request.match_info["name"]).name
    job_id = request.match_info["job_id"]
    job = await request.app[STATE].board.get(job_id)
    if job is None or job.function_name != name:
        raise ApiError(404, f"job {safe_name(job_id)} of cloud function {name!r} not found")
    return web.Response(text=job.log, content_type="text/plain")


# ---------------------------------------------------------------- OAuth (PROTOCOL.md §6.1)

_AUTHORIZE: Final = "/" + AUTHORIZE_PATH
# The two redirects after it are the engine's own: only their order and the cookie matter.
_AUTHORIZE_CONFIRM: Final = _AUTHORIZE + "confirm/"
_AUTHORIZE_CODE: Final = _AUTHORIZE + "code/"
AUTHORIZE_COOKIE: Final = "minapp_engine_authorize"
_COOKIE_PATH: Final = "/api/oauth2/"
_NO_COOKIE: Final = (
    "the authorization cookie is missing or stale: follow the redirects with a cookie jar "
    "and keep the cookie the first reply set"
)


def _redirect(location: str) -> web.Response:
    # A plain 302 response: returning (not raising) web.HTTPFound is deprecated in aiohttp.
    return web.Response(status=302, headers={"Location": location})


async def _authorize(request: web.Request) -> web.StreamResponse:
    """Step 1: check the client, set a cookie, redirect. Two 302s, as the platform does."""
    body = await form_or_json_body(request)
    accounts = request.app[STATE].accounts
    if not accounts.check_client(body.get("client_id"), body.get("client_secret")):
        raise ApiError(401, "client_id or client_secret is wrong")
    state = accounts.begin_authorization()
    response = _redirect(_AUTHORIZE_CONFIRM)
    response.set_cookie(AUTHORIZE_COOKIE, state, httponly=True, path=_COOKIE_PATH)
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
    code = await request.app[STATE].accounts.finish_authorization(state, 2)
    if code is None:
        raise ApiError(400, _NO_COOKIE)
    response = web.json_response({"code": code, "expires_in": 600})
    response.del_cookie(AUTHORIZE_COOKIE, path=_COOKIE_PATH)
    return response


async def _access_token(request: web.Request) -> web.Response:
    body = await form_or_json_body(request)
    accounts = request.app[STATE].accounts
    if not accounts.check_client(body.get("client_id"), body.get("client_secret")):
        raise ApiError(401, "client_id or client_secret is wrong")
    grant_type = body.get("grant_type")
    try:
        if grant_type == "authorization_code":
            pair = await accounts.exchange_code(body.get("code"))
        elif grant_type == "refresh_token":
            pair = await accounts.refresh(body.get("refresh_token"))
        else:
            raise ApiError(400, "grant_type must be authorization_code or refresh_token")
    except AccountError as exc:
        raise ApiError(exc.status, exc.message) from None
    return web.json_response(pair.as_json())


def add_open_api_routes(router: web.UrlDispatcher) -> None:
    """Route the Open API's and the OAuth flow's paths to their handlers."""
    router.add_post(_AUTHORIZE, _authorize)
    router.add_get(_AUTHORIZE_CONFIRM, _authorize_confirm)
    router.add_get(_AUTHORIZE_CODE, _authorize_code)
    router.add_post("/" + ACCESS_TOKEN_PATH, _access_token)

    router.add_post("/" + OPEN_API_LEGACY_JOB_PATH, _legacy_job, name=OPEN_API_LEGACY_JOB_ROUTE)
    # ".+" so names with "/" reach the handler and get the function-not-found reply.
    any_name = "{name:.+}"
    jobs = "/" + OPEN_API_JOB_PATH.format(name=any_name)
    router.add_get(jobs + _JOB_LOG.format(job_id="{job_id:[0-9a-f]+}"), _job_log)
    job = router.add_resource(jobs, name=OPEN_API_JOB_ROUTE)
    job.add_route("POST", _job)
    job.add_route("GET", _job_list)
    debug = "/" + OPEN_API_FUNCTION_PREFIX.format(name=any_name) + "debug/"
    router.add_post(debug, _debug, name=OPEN_API_DEBUG_ROUTE)
