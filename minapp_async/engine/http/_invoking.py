"""Running a cloud function for a request, shared by the client API and the Open API: the
function lookup, the job record, the function's ``event`` and the platform's replies."""

from __future__ import annotations

import difflib
import secrets
from typing import Any

from aiohttp import web

from ..._protocol import ACCEPTED_REPLY, JOB_STATUS_FIELD, error_reply
from .._accounts import User
from .._jobs import Job
from ..runtime import FunctionFile
from ._middleware import STATE, ApiError, request_id, safe_name
from ._parsing import env_id, json_type


def lookup(request: web.Request, name: object) -> FunctionFile:
    """The named function's file, resolved once for this request; 404 when there is none
    (PROTOCOL.md §3.1 / §9)."""
    if not isinstance(name, str) or not name:
        raise ApiError(
            404,
            "cloud function not found: function_name must be a non-empty string, "
            f"got {json_type(name)}",
        )
    state = request.app[STATE]
    function = state.locate_function(name)
    if function is None:
        raise ApiError(
            404,
            f"cloud function {safe_name(name)} not found{_did_you_mean(name, state.function_names())}",
        )
    return function


def _did_you_mean(name: str, names: list[str]) -> str:
    """A hint naming the closest functions there are, or saying the folder is empty."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:
        # Case slips ("helloworld") score low on ratio alone.
        close = [n for n in names if n.lower() == name.lower()]
    if close:
        return ": did you mean " + " or ".join(repr(n) for n in close) + "?"
    return "" if names else " (the functions folder is empty)"


def event_for(
    request: web.Request,
    job: Job,
    *,
    data: Any,
    user: User | None,
    debug: bool = False,
) -> dict[str, Any]:
    """The function's ``event`` (PROTOCOL.md §7.2). It never carries a token."""
    state = request.app[STATE]
    config = state.config
    time_limit = state.board.time_limit(sync=job.service_type == "time_sensitive")
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
    env = env_id(request)
    if env is not None:
        event["env"] = {"id": env, "name": env}
    return event


def new_job(
    request: web.Request, function: FunctionFile, *, sync: bool, source: str, user: User | None
) -> Job:
    """A job record for *function*; 503 once the engine is shutting down."""
    try:
        return request.app[STATE].board.create(
            function.name,
            sync=sync,
            source=source,
            request_id=request_id(request),
            user_id=user.id if user is not None else None,
        )
    except RuntimeError as exc:
        raise ApiError(503, str(exc)) from None


async def invoke(
    request: web.Request,
    function: FunctionFile,
    *,
    data: Any,
    sync: bool,
    source: str,
    user: User | None,
) -> web.Response:
    """Run a job and answer as the platform does: the envelope, or ``{"status": "ok"}``."""
    board = request.app[STATE].board
    job = new_job(request, function, sync=sync, source=source, user=user)
    event = event_for(request, job, data=data, user=user)
    if not sync:
        board.submit(job.id, function, event)
        return web.json_response(ACCEPTED_REPLY)
    job = await board.run_sync(job.id, function, event)
    if job.result is not None:
        # User-code failures come back as 200 with code 1: the SDK resolves with them.
        return web.json_response(job.result)
    # Platform failures (scheduling, timeout, a dead worker) are 400s (PROTOCOL.md §7.3).
    # The job's status is our addition: it tells a client whether the function ever started
    # (schedule_failed: it did not, so a retry cannot run it twice).
    body: dict[str, Any] = error_reply(job.error_msg or f"cloud function {function.name!r} failed")
    body[JOB_STATUS_FIELD] = job.status
    return web.json_response(body, status=400)
