"""Fixtures for the hardening proofs: a real engine over real functions, and a user."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hardening_support import ENGINE_CONFIG, FUNCTIONS, PASSWORD, USERNAME

import minapp_async
from minapp_async.engine import Engine
from minapp_async.testing import running_engine


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """An engine over FUNCTIONS with short limits, and one user."""
    async with running_engine(FUNCTIONS, **ENGINE_CONFIG) as engine:
        engine.create_user(username=USERNAME, password=PASSWORD)
        yield engine


@pytest.fixture(name="credentials")
def _credentials() -> minapp_async.UserCredentials:
    """The engine user's login."""
    return minapp_async.UserCredentials(username=USERNAME, password=PASSWORD)
