"""Browser pages (the JS SDK's web build) can call the engine's client API cross-origin, from
loopback origins and those the developer allows; pages from elsewhere and foreign Host names
(DNS rebinding) cannot drive the engine."""

from __future__ import annotations

import aiohttp
import pytest

from minapp_async.engine import Engine
from minapp_async.testing import HELLO_WORLD_JS, running_engine

pytestmark = pytest.mark.anyio


async def test_preflight_is_answered(engine: Engine, http: aiohttp.ClientSession) -> None:
    """An OPTIONS preflight for a client API path gets 204 and the CORS headers."""
    async with http.options(
        engine.url + "/hserve/v1/cloud-function/job/",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,x-hydrogen-client-id",
        },
    ) as resp:
        assert 204 == resp.status
        assert "http://localhost:5173" == resp.headers["Access-Control-Allow-Origin"]
        assert "X-Hydrogen-Client-ID" in resp.headers["Access-Control-Allow-Headers"]
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]


async def test_replies_are_readable_cross_origin(
    engine: Engine, http: aiohttp.ClientSession
) -> None:
    """A cross-origin client API reply, errors included, carries Allow-Origin."""
    async with http.post(
        engine.url + "/hserve/v2.0/login/anonymous/",
        json={},
        headers={"Origin": "http://localhost:5173", "X-Hydrogen-Client-ID": engine.client_id},
    ) as resp:
        assert 201 == resp.status
        assert "http://localhost:5173" == resp.headers["Access-Control-Allow-Origin"]
    async with http.post(
        engine.url + "/hserve/v1/cloud-function/job/",
        json={"function_name": "helloWorld"},
        headers={"Origin": "http://localhost:5173", "X-Hydrogen-Client-ID": engine.client_id},
    ) as resp:
        assert 401 == resp.status
        assert "http://localhost:5173" == resp.headers["Access-Control-Allow-Origin"]


async def test_no_cors_without_origin(engine: Engine, http: aiohttp.ClientSession) -> None:
    """Plain API clients get no CORS headers, and OPTIONS without Origin stays a 405."""
    async with http.options(engine.url + "/hserve/v1/cloud-function/job/") as resp:
        assert 405 == resp.status
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_latest_sdk_version(engine: Engine, http: aiohttp.ClientSession) -> None:
    """The WeChat build's daily version check gets an empty object, read as up to date."""
    async with http.get(engine.url + "/hserve/v1/latest-sdk-version/") as resp:
        assert (200, {}) == (resp.status, await resp.json())


PREFLIGHT = {"Access-Control-Request-Method": "POST"}
JOB = "/hserve/v1/cloud-function/job/"


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:8080", "http://[::1]:3000", "https://app.localhost"]
)
async def test_loopback_origins_pass_the_preflight(
    engine: Engine, http: aiohttp.ClientSession, origin: str
) -> None:
    """Any loopback page, on any port, passes."""
    async with http.options(engine.url + JOB, headers={"Origin": origin, **PREFLIGHT}) as resp:
        assert (204, origin) == (resp.status, resp.headers["Access-Control-Allow-Origin"])


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://127.0.0.1.evil.example", "null"]
)
async def test_a_foreign_origin_gets_no_cors_and_is_refused(
    engine: Engine, http: aiohttp.ClientSession, origin: str
) -> None:
    """A page from elsewhere gets no allow headers on its preflight, and a request it sends
    anyway (a simple POST needs no preflight) is refused before it can do anything."""
    async with http.options(engine.url + JOB, headers={"Origin": origin, **PREFLIGHT}) as resp:
        assert 403 == resp.status
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        assert "--cors-origin" in (await resp.json())["error_msg"]
    async with http.post(
        engine.url + "/hserve/v2.0/login/anonymous/",
        data="{}",
        headers={"Origin": origin, "X-Hydrogen-Client-ID": engine.client_id},
    ) as resp:
        assert 403 == resp.status
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_configured_origin_is_allowed(http: aiohttp.ClientSession) -> None:
    """--cors-origin (EngineConfig.cors_origins) adds an origin; others stay refused."""
    async with running_engine(
        {"helloWorld.js": HELLO_WORLD_JS}, cors_origins=["https://dev.example.com"]
    ) as engine:
        headers = {"Origin": "https://dev.example.com", **PREFLIGHT}
        async with http.options(engine.url + JOB, headers=headers) as resp:
            assert 204 == resp.status
            assert "https://dev.example.com" == resp.headers["Access-Control-Allow-Origin"]
        headers = {"Origin": "https://other.example.com", **PREFLIGHT}
        async with http.options(engine.url + JOB, headers=headers) as resp:
            assert 403 == resp.status


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "10.0.0.5:8000"]
)
async def test_a_foreign_host_is_refused(
    engine: Engine, http: aiohttp.ClientSession, host: str
) -> None:
    """A request naming a Host that is not loopback (a DNS-rebound name) is refused with a
    JSON error naming the flag that allows it; nothing runs."""
    async with http.post(
        engine.url + "/hserve/v2.0/login/anonymous/",
        json={},
        headers={"Host": host, "X-Hydrogen-Client-ID": engine.client_id},
    ) as resp:
        assert 403 == resp.status
        body = await resp.json()
        assert "--allow-host" in body["error_msg"]
        assert "DNS rebinding" in body["error_msg"]


@pytest.mark.parametrize("host", ["localhost", "localhost:1234", "127.0.0.2", "[::1]:80"])
async def test_loopback_hosts_are_served(
    engine: Engine, http: aiohttp.ClientSession, host: str
) -> None:
    async with http.post(
        engine.url + "/hserve/v2.0/login/anonymous/",
        json={},
        headers={"Host": host, "X-Hydrogen-Client-ID": engine.client_id},
    ) as resp:
        assert 201 == resp.status


async def test_an_allowed_host_is_served(http: aiohttp.ClientSession) -> None:
    """--allow-host (EngineConfig.allowed_hosts) adds a name."""
    async with running_engine(allowed_hosts=["devbox.lan"]) as engine:
        for host, status in (("devbox.lan:8000", 201), ("other.lan", 403)):
            async with http.post(
                engine.url + "/hserve/v2.0/login/anonymous/",
                json={},
                headers={"Host": host, "X-Hydrogen-Client-ID": engine.client_id},
            ) as resp:
                assert status == resp.status
