"""examples/fastapi_app.py: one Session opened by the lifespan, per-request users."""

from __future__ import annotations

import fastapi_app
import httpx
import pytest
from _local import Target
from examples_support import interrupt, serving_script, user_token

from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio


async def test_hello_through_the_lifespan_session(engine: Engine, target: Target) -> None:
    """The lifespan opens the Session; /hello invokes helloWorld; shutdown closes it."""
    app = fastapi_app.create_app(target)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            reply = await client.get("/hello", params={"name": "allen"})
        session = app.state.minapp
        assert not session.closed
    assert session.closed
    assert 200 == reply.status_code
    assert "hello allen" == reply.json()["greeting"]
    assert reply.json()["request_id"]


async def test_a_request_token_invokes_as_that_user(engine: Engine, target: Target) -> None:
    """X-MinApp-Token makes the call as that user; a bad token is a 401 with a request id."""
    user_id, token = await user_token(engine, "dave")
    app = fastapi_app.create_app(target)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            ok = await client.get("/hello", headers={"X-MinApp-Token": token})
            refused = await client.get("/hello", headers={"X-MinApp-Token": "e" * 40})
    assert 200 == ok.status_code
    assert user_id == (await engine.jobs("helloWorld"))[0].user_id
    assert 401 == refused.status_code
    assert refused.json()["detail"]["error"].startswith("401: ")
    assert refused.json()["detail"]["request_id"]


async def test_the_script_serves_with_uvicorn_and_stops_on_ctrl_c() -> None:
    """python examples/fastapi_app.py serves /hello under uvicorn and exits 0 on Ctrl-C."""
    async with serving_script(
        "fastapi_app.py", "--port", "0", pattern=r"running on (http://\S+)"
    ) as (url, process):
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{url}/hello", params={"name": "uv"})
        assert "hello uv" == reply.json()["greeting"]
        rest = await interrupt(process)
    assert "Traceback" not in rest
