"""Running a cloud function for a request, shared by the client API and the Open API: the
function lookup, the job record, the function's ``event`` and the platform's replies."""

from __future__ import annotations

import difflib
import json
import secrets
from typing import Any, Final

from aiohttp import web

from ..._protocol import ACCEPTED_REPLY, JOB_STATUS_FIELD, error_reply
from .._accounts import User
from .._config import EngineConfig
from .._jobs import QUEUE_FULL_RETRY_AFTER, Job, QueueFull
from .._store import StoreError
from ..runtime import FunctionFile
from ._middleware import STATE, ApiError, json_reply, request_id, safe_name
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


def build_event(
    config: EngineConfig,
    job: Job,
    *,
    time_limit: float,
    user: User | None,
    meta: dict[str, str] | None = None,
    env: str | None = None,
    debug: bool = False,
) -> dict[str, Any]:
    """The function's ``event`` (PROTOCOL.md §7.2) without its ``data``, which the engine
    keeps as JSON text and the runtime splices in. It never carries a token."""
    event: dict[str, Any] = {
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
            "meta": meta or {"ip_address": "", "user_agent": ""},
            "user": {
                "id": user.id,
                "nickname": user.username or "",
                "avatar_url": "",
                "openid": "",
                "unionid": "",
            },
        }
    if env is not None:
        event["env"] = {"id": env, "name": env}
    return event


def event_for(
    request: web.Request, job: Job, *, user: User | None, debug: bool = False
) -> dict[str, Any]:
    """The event for a job started by *request* (without its data, see :func:`build_event`)."""
    state = request.app[STATE]
    meta = None
    if user is not None:
        meta = {
            "ip_address": request.remote or "",
            "user_agent": request.headers.get("User-Agent", ""),
        }
    return build_event(
        state.config,
        job,
        time_limit=state.board.time_limit(sync=job.sync),
        user=user,
        meta=meta,
        env=env_id(request),
        debug=debug,
    )


def new_job(
    request: web.Request, function: FunctionFile, *, sync: bool, source: str, user: User | None
) -> Job:
    """An in-flight job record for *function*; 503 once the engine is shutting down."""
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


def encode_data(data: Any) -> str:
    """``event.data`` as compact JSON text, how the engine keeps and forwards it."""
    return _to_json(data)


async def run_sync(
    request: web.Request,
    function: FunctionFile,
    *,
    data_json: str,
    source: str,
    user: User | None,
    debug: bool = False,
) -> Job:
    """Run a sync job for *request* (``event.data`` given as JSON text) and return it once
    it ended."""
    board = request.app[STATE].board
    job = new_job(request, function, sync=True, source=source, user=user)
    event = event_for(request, job, user=user, debug=debug)
    return await board.run_sync(job.id, function, event, data_json)


async def accept_async(
    request: web.Request,
    function: FunctionFile,
    *,
    data_json: str,
    source: str,
    user: User | None,
) -> None:
    """Store and queue an async job; 503 with Retry-After when the queue is full, 503 when
    the state file cannot be written."""
    board = request.app[STATE].board
    size = len(data_json)
    try:
        board.admit(size)
    except QueueFull as exc:
        raise ApiError(
            503, str(exc), headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)}
        ) from None
    except RuntimeError as exc:
        raise ApiError(503, str(exc)) from None
    try:
        job = new_job(request, function, sync=False, source=source, user=user)
    except BaseException:
        board.unadmit(size)
        raise
    event = event_for(request, job, user=user)
    try:
        await board.accept(job, function, event, data_json)
    except StoreError as exc:
        raise ApiError(503, str(exc)) from None
    except RuntimeError as exc:  # the store closed: the engine is shutting down
        raise ApiError(503, f"the engine is shutting down ({exc})") from None


async def invoke(
    request: web.Request,
    function: FunctionFile,
    *,
    data_json: str,
    sync: bool,
    source: str,
    user: User | None,
) -> web.Response:
    """Run a job and answer as the platform does: the envelope, or ``{"status": "ok"}`` once
    the job is durably stored. The caller encodes ``event.data`` with :func:`encode_data`
    and drops the parsed body first: a queued job's params are kept only as JSON text."""
    if not sync:
        await accept_async(request, function, data_json=data_json, source=source, user=user)
        return json_reply(ACCEPTED_REPLY)
    job = await run_sync(request, function, data_json=data_json, source=source, user=user)
    if job.result is not None:
        # User-code failures come back as 200 with code 1: the SDK resolves with them.
        return json_reply(job.result)
    # Platform failures (scheduling, timeout, a dead worker) are 400s (PROTOCOL.md §7.3).
    # The job's status is our addition: it tells a client whether the function ever started
    # (schedule_failed: it did not, so a retry cannot run it twice).
    body: dict[str, Any] = error_reply(job.error_msg or f"cloud function {function.name!r} failed")
    body[JOB_STATUS_FIELD] = job.status
    return json_reply(body, status=400)


_to_json: Final = json.JSONEncoder(separators=(",", ":")).encode
