"""Fixtures for the SDK tests: a recording server and a Session pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakeserver import CLIENT_ID, FakeServer, fake_server

import minapp_async


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[FakeServer]:
    """A recording server on 127.0.0.1."""
    async with fake_server() as server:
        yield server


@pytest.fixture(name="session")
async def _session(server: FakeServer) -> AsyncIterator[minapp_async.Session]:
    """A client API Session with a user token, talking to the recording server."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, token="tok123") as s:
        yield s
