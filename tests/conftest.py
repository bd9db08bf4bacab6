"""Shared test configuration: every async test runs on asyncio in debug mode."""

from __future__ import annotations

import signal

import pytest


def pytest_configure() -> None:
    """Tests press Ctrl-C on child processes with SIGINT. A shell starts background jobs with
    SIGINT ignored, and children inherit that; a handled signal is reset to the default on
    exec instead, so the children of a backgrounded run still see their Ctrl-C."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(name="anyio_backend", scope="session")
def _anyio_backend() -> tuple[str, dict[str, bool]]:
    """aiohttp is asyncio-only; debug mode surfaces never-awaited coroutines and slow callbacks."""
    return ("asyncio", {"debug": True})
