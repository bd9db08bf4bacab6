"""Browser pages (the JS SDK's web build) can call the engine's client API cross-origin."""

from __future__ import annotations

import aiohttp
import pytest

from minapp_async.engine import Engine

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
        assert "*" == resp.headers["Access-Control-Allow-Origin"]
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
        assert "*" == resp.headers["Access-Control-Allow-Origin"]
    async with http.post(
        engine.url + "/hserve/v1/cloud-function/job/",
        json={"function_name": "helloWorld"},
        headers={"Origin": "http://localhost:5173", "X-Hydrogen-Client-ID": engine.client_id},
    ) as resp:
        assert 401 == resp.status
        assert "*" == resp.headers["Access-Control-Allow-Origin"]


async def test_no_cors_without_origin(engine: Engine, http: aiohttp.ClientSession) -> None:
    """Plain API clients get no CORS headers, and OPTIONS without Origin stays a 405."""
    async with http.options(engine.url + "/hserve/v1/cloud-function/job/") as resp:
        assert 405 == resp.status
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_latest_sdk_version(engine: Engine, http: aiohttp.ClientSession) -> None:
    """The WeChat build's daily version check gets an empty object, read as up to date."""
    async with http.get(engine.url + "/hserve/v1/latest-sdk-version/") as resp:
        assert (200, {}) == (resp.status, await resp.json())
