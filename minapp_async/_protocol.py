"""The wire protocol both sides speak: the SDK sends it, the engine serves it.

Every path, header name, auth scheme, job status, reply shape and platform limit that the SDK
and the engine share is defined here and nowhere else (PROTOCOL.md has the sources), so the two
agree by construction. Paths are relative to the API host, without a leading slash; the engine
adds one where it routes them.
"""

from __future__ import annotations

from typing import Final, Literal

# --- Headers ---------------------------------------------------------------------------------
CLIENT_ID_HEADER: Final = "X-Hydrogen-Client-ID"
CLIENT_VERSION_HEADER: Final = "X-Hydrogen-Client-Version"
CLIENT_PLATFORM_HEADER: Final = "X-Hydrogen-Client-Platform"
CLIENT_SDK_TYPE_HEADER: Final = "X-Hydrogen-Client-SDK-Type"
ENV_ID_HEADER: Final = "X-Hydrogen-Env-ID"
#: Set by the server on every reply; the SDK reads it into errors and results.
REQUEST_ID_HEADER: Final = "X-Request-Id"
#: Every header a browser page may send to the client API (the CORS allow-list).
CLIENT_HEADERS: Final = (
    CLIENT_ID_HEADER,
    CLIENT_VERSION_HEADER,
    CLIENT_PLATFORM_HEADER,
    CLIENT_SDK_TYPE_HEADER,
    ENV_ID_HEADER,
)

# --- Auth schemes ----------------------------------------------------------------------------
#: The client API: ``Authorization: Hydrogen-r1 <session token>``.
USER_AUTH_SCHEME: Final = "Hydrogen-r1"
#: The Open API: ``Authorization: Bearer <access token>``.
SERVER_AUTH_SCHEME: Final = "Bearer"

# --- Client API (hserve) paths ----------------------------------------------------------------
CLIENT_API_PREFIX: Final = "hserve/"
ANONYMOUS_LOGIN_PATH: Final = "hserve/v2.0/login/anonymous/"
LOGIN_PATH: Final = "hserve/v2.1/login/{kind}/"
REGISTER_PATH: Final = "hserve/v2.1/register/{kind}/"
LOGOUT_PATH: Final = "hserve/v2.0/session/destroy/"
USER_INFO_PATH: Final = "hserve/v2.5/user/info/{user_id}/"
CLIENT_JOB_PATH: Final = "hserve/v1/cloud-function/job/"
LATEST_SDK_VERSION_PATH: Final = "hserve/v1/latest-sdk-version/"
#: The login kinds: username, email or phone with a password.
LOGIN_KINDS: Final = ("username", "email", "phone")
#: The login kinds as a type (the same three words as LOGIN_KINDS).
LoginKind = Literal["username", "email", "phone"]

# --- Open API (oserve) and its OAuth flow ------------------------------------------------------
OPEN_API_JOB_PATH: Final = "oserve/v1.3/cloud-function/{name}/job/"
OPEN_API_LEGACY_JOB_PATH: Final = "oserve/v1/cloud-function/job/"
OPEN_API_FUNCTION_PREFIX: Final = "oserve/v1.3/cloud-function/{name}/"
#: The function list (GET) and create (POST); ``{name}/`` below it: get, update, delete.
OPEN_API_FUNCTIONS_PATH: Final = "oserve/v1.3/cloud-function/"
#: Incoming webhooks (BAAS.md §2.5): any of GET/POST/PUT/PATCH/DELETE, a JSON body.
INCOMING_WEBHOOK_PATH: Final = "oserve/v1/incoming-webhook/{key}/"
#: The local engine's own timer endpoints (no platform has them): list, and fire one now.
LOCAL_TIMERS_PATH: Final = "oserve/local/timer/"
LOCAL_TIMER_FIRE_PATH: Final = "oserve/local/timer/{name}/fire/"
AUTHORIZE_PATH: Final = "api/oauth2/hydrogen/openapi/authorize/"
ACCESS_TOKEN_PATH: Final = "api/oauth2/access_token/"

# --- Error replies (PROTOCOL.md §4.1) ---------------------------------------------------------
#: The field of an error reply that says what went wrong (the SDK's ``extractErrorMsg`` reads it).
ERROR_MSG_FIELD: Final = "error_msg"


def error_reply(message: str) -> dict[str, str]:
    """The JSON body of an error reply: ``{"status": "error", "error_msg": message}``."""
    return {"status": "error", ERROR_MSG_FIELD: message}


# --- Jobs ------------------------------------------------------------------------------------
JobStatus = Literal[
    "waiting",
    "executing",
    "fulfilled",
    "schedule_failed",
    "execution_rejected",
    "deadline_exceeded",
    "execution_failed",
]
#: The job never started (the platform could not schedule it): safe to retry.
SCHEDULE_FAILED: Final = "schedule_failed"
FINISHED_STATUSES: Final[frozenset[JobStatus]] = frozenset(
    {"fulfilled", "schedule_failed", "execution_rejected", "deadline_exceeded", "execution_failed"}
)
#: The whole reply to an accepted ``sync=False`` job.
ACCEPTED_REPLY: Final = {"status": "ok"}
#: The field of a failed job's 400 reply that names its status (the engine's addition: with
#: ``schedule_failed`` a client knows the function never started, so a retry is safe).
JOB_STATUS_FIELD: Final = "job_status"

# --- Platform limits (PROTOCOL.md §7.3) ----------------------------------------------------------
#: Seconds a function may run when invoked with ``sync=True``.
SYNC_TIME_LIMIT: Final = 5.0
#: Seconds a function may run when invoked with ``sync=False``.
ASYNC_TIME_LIMIT: Final = 300.0


def time_limit(sync: bool) -> float:
    """The platform's run-time limit for a job in that mode."""
    return SYNC_TIME_LIMIT if sync else ASYNC_TIME_LIMIT
