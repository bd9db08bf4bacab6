"""Server credentials: the Open API code flow (two 302s and a cookie), Bearer, refresh."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from aiohttp import web
from fakeserver import FakeServer

import minapp_async

pytestmark = pytest.mark.anyio

AUTHORIZE = "/api/oauth2/hydrogen/openapi/authorize/"
TOKEN = "/api/oauth2/access_token/"


class OpenAPI:
    """Scripted Open API: authorize answers through two redirects that need the cookie."""

    def __init__(self, server: FakeServer, expires_in: int = 31535999) -> None:
        self.server = server
        self.expires_in = expires_in
        self.grants: list[dict[str, Any]] = []
        self.valid: set[str] = set()
        server.handlers[AUTHORIZE] = self.authorize
        server.handlers["/authorize/step2/"] = self.step2
        server.handlers["/authorize/done/"] = self.done
        server.handlers[TOKEN] = self.token
        server.handlers["/oserve/v1.3/cloud-function/hello%2Fworld/job/"] = self.job
        server.handlers["/oserve/v1.3/cloud-function/hello/job/"] = self.job

    async def authorize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"client_id": "cid", "client_secret": "s3cret"}:
            return web.json_response({"error_msg": "bad client"}, status=401)
        resp = web.HTTPFound("/authorize/step2/")
        resp.set_cookie("flow", "f1")
        raise resp

    async def step2(self, request: web.Request) -> web.Response:
        if request.cookies.get("flow") != "f1":
            return web.json_response({"error_msg": "no cookie"}, status=400)
        raise web.HTTPFound("/authorize/done/")

    async def done(self, request: web.Request) -> web.Response:
        if request.cookies.get("flow") != "f1":
            return web.json_response({"error_msg": "no cookie"}, status=400)
        return web.json_response({"code": "c" * 40, "expires_in": 600})

    async def token(self, request: web.Request) -> web.Response:
        grant = await request.json()
        self.grants.append(grant)
        await anyio.sleep(0.05)
        access = f"acc{len(self.grants)}"
        self.valid = {access}
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "refresh_token": f"ref{len(self.grants)}",
                "scope": "write",
            }
        )

    async def job(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid:
            return web.json_response({"status": "error", "error_msg": "bad token"}, status=401)
        return web.json_response({"code": 0, "data": auth, "error": {}})


@pytest.fixture(name="openapi")
def _openapi(server: FakeServer) -> OpenAPI:
    """Open API endpoints on the recording server."""
    return OpenAPI(server)


async def test_code_flow_then_invoke(server: FakeServer, openapi: OpenAPI) -> None:
    """The first invoke gets a code (following redirects with a cookie), a token, then posts
    to the v1.3 job path with Bearer auth and the Open API body."""
    async with minapp_async.Session("cid", client_secret="s3cret", base_url=server.url) as s:
        result = await s.invoke("hello", {"name": "allen"})

    assert result.data == "Bearer acc1"
    assert openapi.grants[0] == {
        "client_id": "cid",
        "client_secret": "s3cret",
        "code": "c" * 40,
        "grant_type": "authorization_code",
    }
    job = server.requests[-1]
    assert (
        job.path,
        job.body,
    ) == ("/oserve/v1.3/cloud-function/hello/job/", b'{"data":{"name":"allen"},"sync":true}')
    assert job.header("X-Hydrogen-Client-ID") is None


async def test_no_params_sends_empty_data(server: FakeServer, openapi: OpenAPI) -> None:
    """The Open API requires data: {} is sent when no params are given; names are quoted."""
    async with minapp_async.Session("cid", client_secret="s3cret", base_url=server.url) as s:
        await s.invoke("hello/world", sync=False)

    job = server.requests[-1]
    assert (
        job.path,
        json.loads(job.body),
    ) == ("/oserve/v1.3/cloud-function/hello%2Fworld/job/", {"data": {}, "sync": False})


async def test_token_fetch_is_single_flight(server: FakeServer, openapi: OpenAPI) -> None:
    """Fifty concurrent first calls share one code flow."""
    async with minapp_async.Session("cid", client_secret="s3cret", base_url=server.url) as s:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(_hello, s)

    assert len(openapi.grants) == 1


async def _hello(s: minapp_async.Session) -> None:
    assert (await s.invoke("hello")).ok


async def test_401_refreshes_once(server: FakeServer, openapi: OpenAPI) -> None:
    """A refused token is refreshed with the refresh grant, once for all waiting calls."""
    async with minapp_async.Session("cid", client_secret="s3cret", base_url=server.url) as s:
        await s.invoke("hello")
        openapi.valid.clear()  # the server forgets the token
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(_hello, s)

    assert [g["grant_type"] for g in openapi.grants] == ["authorization_code", "refresh_token"]
    assert openapi.grants[1]["refresh_token"] == "ref1"


async def test_refresh_before_expiry(server: FakeServer) -> None:
    """A token at the end of its life is refreshed before it is used. A token said to be
    over when issued (``expires_in=0``) is still used for 1 s (a login per call is what a
    short lifetime must not cost): the second call comes once that second has passed."""
    openapi = OpenAPI(server, expires_in=0)  # due for refresh as soon as the floor passes
    async with minapp_async.Session("cid", client_secret="s3cret", base_url=server.url) as s:
        await s.invoke("hello")
        await anyio.sleep(1.1)  # the token's time passing is the subject here, not a race
        await s.invoke("hello")

    assert [g["grant_type"] for g in openapi.grants] == ["authorization_code", "refresh_token"]


async def test_bad_secret_is_401(server: FakeServer, openapi: OpenAPI) -> None:
    """Wrong server credentials raise the server's 401, with the secret nowhere in it."""
    async with minapp_async.Session("cid", client_secret="wrong-s3cret", base_url=server.url) as s:
        with pytest.raises(minapp_async.AuthenticationError) as info:
            await s.invoke("hello")

    assert info.value.message == "401: bad client"
    assert "wrong-s3cret" not in str(info.value) + repr(info.value)


async def test_user_auth_is_refused_for_server_sessions(server: FakeServer) -> None:
    """session.auth is for user logins; a server-credential Session says so (611)."""
    s = minapp_async.Session("cid", client_secret="s3cret", base_url=server.url)
    with pytest.raises(minapp_async.HError) as info:
        s.auth  # noqa: B018

    assert info.value.code == 611
