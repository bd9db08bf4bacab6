"""Fixtures for the engine's HTTP tests: a running engine over real functions, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from engine_api import FUNCTIONS, Api

from minapp_async.engine import Engine
from minapp_async.testing import running_engine


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """An engine over FUNCTIONS with short limits, so failure paths are quick."""
    async with running_engine(
        FUNCTIONS, sync_time_limit=2.0, async_time_limit=5.0, schedule_wait=0.3
    ) as engine:
        yield engine


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    """A cookie-less client session."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture(name="api")
def _api(engine: Engine, http: aiohttp.ClientSession) -> Api:
    """Requests against the engine fixture."""
    return Api(engine, http)
