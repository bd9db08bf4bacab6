"""Shared test configuration: every async test runs on asyncio in debug mode."""

from __future__ import annotations

import pytest


@pytest.fixture(name="anyio_backend", scope="session")
def _anyio_backend() -> tuple[str, dict[str, bool]]:
    """aiohttp is asyncio-only; debug mode surfaces never-awaited coroutines and slow callbacks."""
    return ("asyncio", {"debug": True})
