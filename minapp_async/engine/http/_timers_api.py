"""The engine's own timer endpoints (not the platform's: its timers live in the console), for
``minapp-async timers``: the timers with their next run, and firing one now. Open API Bearer
token required, as for the platform's function endpoints."""

from __future__ import annotations

from aiohttp import web

from ..._protocol import LOCAL_TIMER_FIRE_PATH, LOCAL_TIMERS_PATH
from ._middleware import ApiError
from ._open_api import _check_bearer
from ._webhooks import TRIGGERS


async def _list(request: web.Request) -> web.Response:
    _check_bearer(request)
    runner = request.app.get(TRIGGERS)
    statuses = runner.statuses() if runner is not None else []
    return web.json_response(
        {
            "objects": [
                {
                    "name": s.name,
                    "function": s.function,
                    "cron": s.cron,
                    "params": s.params,
                    "next_fire": s.next_fire.isoformat(),
                }
                for s in statuses
            ]
        }
    )


async def _fire(request: web.Request) -> web.Response:
    _check_bearer(request)
    runner = request.app.get(TRIGGERS)
    if runner is None:
        raise ApiError(404, "no timers are configured")
    try:
        job = await runner.fire_timer(request.match_info["name"])
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    except RuntimeError as exc:
        raise ApiError(503, str(exc)) from None
    return web.json_response({"status": "ok", "job_id": job.id, "function": job.function_name})


def add_timers_api_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/" + LOCAL_TIMERS_PATH, _list)
    router.add_post("/" + LOCAL_TIMER_FIRE_PATH.format(name="{name}"), _fire)
