"""examples/aiohttp_app.py: one Session in cleanup_ctx, per-request users, a metrics hook."""

from __future__ import annotations

import aiohttp
import pytest
from _local import Target
from aiohttp.test_utils import TestServer
from aiohttp_app import SESSION, create_app
from examples_support import interrupt, serving_script, user_token

from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio


async def test_hello_uses_the_shared_session_and_closes_it(engine: Engine, target: Target) -> None:
    """GET /hello invokes helloWorld as the service user; shutdown closes the Session."""
    app = create_app(target)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        for name in ("allen", "bob"):
            async with http.get(server.make_url("/hello"), params={"name": name}) as reply:
                assert 200 == reply.status
                body = await reply.json()
            assert f"hello {name}" == body["greeting"]
            assert body["request_id"]  # the engine's X-Request-Id, passed on
        session = app[SESSION]
        assert not session.closed
    assert session.closed
    jobs = await engine.jobs("helloWorld")
    assert 2 == len(jobs)
    assert 1 == len({job.user_id for job in jobs})  # one login served both requests


async def test_a_request_token_invokes_as_that_user(engine: Engine, target: Target) -> None:
    """X-MinApp-Token makes the call as that user; a bad token is a 401 with a request id."""
    user_id, token = await user_token(engine, "carol")
    async with TestServer(create_app(target)) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/hello")
        async with http.get(url, headers={"X-MinApp-Token": token}) as reply:
            assert 200 == reply.status
        async with http.get(url, headers={"X-MinApp-Token": "f" * 40}) as reply:
            assert 401 == reply.status
            refused = await reply.json()
    assert user_id == (await engine.jobs("helloWorld"))[0].user_id
    assert refused["error"].startswith("401: ")
    assert refused["request_id"]


async def test_metrics_count_calls_by_code(engine: Engine, target: Target) -> None:
    """The response hook counts invocations by function and code, shown at /metrics."""
    async with TestServer(create_app(target)) as server, aiohttp.ClientSession() as http:
        for headers in ({}, {}, {"X-MinApp-Token": "0" * 40}):
            async with http.get(server.make_url("/hello"), headers=headers) as reply:
                await reply.read()
        async with http.get(server.make_url("/metrics")) as reply:
            text = await reply.text()
    assert 'minapp_invocations_total{function="helloWorld",code="0"} 2' in text
    assert 'minapp_invocations_total{function="helloWorld",code="401"} 1' in text


async def test_the_script_serves_and_stops_on_ctrl_c() -> None:
    """python examples/aiohttp_app.py starts its own engine, serves /hello, exits 0 on Ctrl-C."""
    async with serving_script(
        "aiohttp_app.py", "--port", "0", pattern=r"serving on (http://\S+)"
    ) as (url, process):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/hello", params={"name": "script"}) as reply:
                assert "hello script" == (await reply.json())["greeting"]
        rest = await interrupt(process)
    assert "Traceback" not in rest
