"""A FastAPI app that invokes cloud functions through one Session opened by the lifespan.

    pip install fastapi uvicorn
    python examples/fastapi_app.py                  # serves http://127.0.0.1:8000
    curl 'http://127.0.0.1:8000/hello?name=allen'   # {"greeting": "hello allen", ...}

The lifespan opens the Session when the app starts and closes it when the app stops; handlers
get it through a dependency. A request carrying a user's token in the ``X-MinApp-Token``
header invokes as that user (``session.as_user``), sharing the Session's connection pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from _local import Target, add_target_arguments, target
from fastapi import Depends, FastAPI, Header, HTTPException, Request

import minapp_async


def create_app(app_target: Target) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with minapp_async.Session(
            app_target.client_id,
            base_url=app_target.base_url,
            credentials=app_target.credentials,  # logs in by itself, again when it expires
        ) as session:
            app.state.minapp = session
            yield

    app = FastAPI(lifespan=lifespan)
    app.get("/hello")(hello)
    return app


def get_session(
    request: Request, x_minapp_token: Annotated[str | None, Header()] = None
) -> minapp_async.Session:
    """The app's Session, or a view of it acting as the user whose token the request carries."""
    session: minapp_async.Session = request.app.state.minapp
    return session.as_user(x_minapp_token) if x_minapp_token else session


MinApp = Annotated[minapp_async.Session, Depends(get_session)]


async def hello(session: MinApp, name: str = "world") -> dict[str, object]:
    try:
        result = await session.invoke("helloWorld", {"name": name})
        result.raise_for_code()  # code != 0: the function failed
    except minapp_async.HError as err:
        status = 401 if isinstance(err, minapp_async.AuthenticationError) else 502
        detail = {"error": err.message, "request_id": err.details.request_id}
        raise HTTPException(status_code=status, detail=detail) from err
    return {"greeting": result.data, "request_id": result.request_id}


async def main() -> None:
    import uvicorn  # the server is only needed to run it; tests drive the app directly

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    add_target_arguments(parser)
    args = parser.parse_args()
    async with target(args) as app_target:
        config = uvicorn.Config(create_app(app_target), host="127.0.0.1", port=args.port)
        await uvicorn.Server(config).serve()  # until Ctrl-C


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
