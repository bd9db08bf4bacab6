"""Incoming webhooks (BAAS.md §2.3, §2.5): ``/oserve/v1/incoming-webhook/<key>/`` runs the
function the triggers file names for *key*, as an async job, and answers ``{"status": "ok"}``.

``event.data`` is the platform's V1 shape: ``{"meta": {"headers", "remote_address",
"request_method"}, "payload": <the JSON body>}``, with header names upper-cased and ``-``
turned into ``_`` (``Content-Type`` → ``CONTENT_TYPE``, ``X-Hydrogen-Foo`` → ``X_HYDROGEN_FOO``).
Credentials a caller sends (``Authorization``, ``Cookie``) are left out: the function's log
could show them.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from ..._protocol import ACCEPTED_REPLY, INCOMING_WEBHOOK_PATH
from .._schedule import TriggerRunner
from ._middleware import ApiError, safe_name
from ._parsing import json_body

#: Set by the engine: who runs the webhook's function (absent: no webhook is configured).
TRIGGERS: Final = web.AppKey("minapp_engine_triggers", TriggerRunner)
_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
_WITHHELD: Final = frozenset({"AUTHORIZATION", "COOKIE", "PROXY_AUTHORIZATION"})


def _headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key not in _WITHHELD:
            out[key] = value if key not in out else f"{out[key]},{value}"
    return out


async def _incoming(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    runner = request.app.get(TRIGGERS)
    webhook = runner.webhook(key) if runner is not None else None
    if runner is None or webhook is None:
        raise ApiError(404, f"incoming webhook {safe_name(key)} not found")
    payload: Any = await json_body(request)  # JSON bodies only, as on the platform
    data = {
        "meta": {
            "headers": _headers(request),
            "remote_address": request.remote or "",
            "request_method": request.method,
        },
        "payload": payload,
    }
    try:
        await runner.start_job(webhook.function, data, source="incoming_webhook")
    except LookupError as exc:
        raise ApiError(404, f"incoming webhook {safe_name(key)}: {exc}") from None
    except RuntimeError as exc:
        raise ApiError(503, str(exc)) from None
    return web.json_response(ACCEPTED_REPLY)


def add_webhook_routes(router: web.UrlDispatcher) -> None:
    resource = router.add_resource("/" + INCOMING_WEBHOOK_PATH.format(key="{key}"))
    for method in _METHODS:
        resource.add_route(method, _incoming)
