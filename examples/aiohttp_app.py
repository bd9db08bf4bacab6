"""An aiohttp web app that invokes cloud functions through one shared Session.

    python examples/aiohttp_app.py                  # serves http://127.0.0.1:8080
    curl 'http://127.0.0.1:8080/hello?name=allen'   # {"greeting": "hello allen", ...}
    curl http://127.0.0.1:8080/metrics              # invocations counted by function and code

One Session serves the whole app: it holds the connection pool and the service user's login,
and ``cleanup_ctx`` closes it at shutdown. A request that carries a user's token in the
``X-MinApp-Token`` header invokes as that user (``session.as_user``), on the same pool.
A response hook counts invocations for ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from _local import Target, add_target_arguments, target
from aiohttp import web

import minapp_async

SESSION = web.AppKey("session", minapp_async.Session)


class Metrics:
    """Invocations by function and code (the result's code, or the HError's): a hook feeds it.

    ``on_response`` runs after every try, so a retried call counts once per try.
    """

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()

    def on_response(self, info: minapp_async.CallInfo) -> None:
        code = info.code if info.error is None else info.error.code
        self.calls[(info.function_name, code if code is not None else -1)] += 1

    def render(self) -> str:
        """The Prometheus text format."""
        lines = ["# TYPE minapp_invocations_total counter"]
        for (function, code), n in sorted(self.calls.items()):
            lines.append(f'minapp_invocations_total{{function="{function}",code="{code}"}} {n}')
        return "\n".join(lines) + "\n"


METRICS = web.AppKey("metrics", Metrics)


def create_app(app_target: Target) -> web.Application:
    app = web.Application()
    app[METRICS] = Metrics()

    async def minapp_session(app: web.Application) -> AsyncIterator[None]:
        # Opened at startup, closed at shutdown: one pool and one login for all requests.
        async with minapp_async.Session(
            app_target.client_id,
            base_url=app_target.base_url,
            credentials=app_target.credentials,  # logs in by itself, again when it expires
            on_response=app[METRICS].on_response,
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(minapp_session)
    app.router.add_get("/hello", hello)
    app.router.add_get("/metrics", metrics)
    return app


async def hello(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    token = request.headers.get("X-MinApp-Token")
    if token:
        session = session.as_user(token)  # this request's user; the pool is shared
    try:
        result = await session.invoke("helloWorld", {"name": request.query.get("name", "world")})
        result.raise_for_code()  # code != 0: the function failed
    except minapp_async.HError as err:
        # The server's request id lets whoever reads the logs find the call on the platform.
        body = {"error": err.message, "request_id": err.details.request_id}
        return web.json_response(body, status=_status_for(err))
    return web.json_response({"greeting": result.data, "request_id": result.request_id})


def _status_for(err: minapp_async.HError) -> int:
    if isinstance(err, minapp_async.AuthenticationError | minapp_async.SessionMissingError):
        return 401  # the caller's token was refused
    if isinstance(err, minapp_async.ForbiddenError):
        return 403
    if isinstance(err, minapp_async.RequestTimeoutError):
        return 504
    return 502  # the upstream call failed


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[METRICS].render())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    add_target_arguments(parser)
    args = parser.parse_args()
    async with target(args) as app_target:
        runner = web.AppRunner(create_app(app_target))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", args.port)
            await site.start()
            print(
                f"serving on http://127.0.0.1:{runner.addresses[0][1]}  (Ctrl-C stops)", flush=True
            )
            await asyncio.Event().wait()  # until Ctrl-C cancels it
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: main's cleanup has already run
        asyncio.run(main())
