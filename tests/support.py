"""Helpers every test directory shares (tests/ is on the path: ``from support import ...``)."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from minapp_async import TokenStore


async def wait_until(
    check: Callable[[], bool], *, within: float = 10.0, what: str = "the condition"
) -> None:
    """Poll *check* until it holds; fail the test after *within* seconds.

    For state with no event to await from the test: server gauges, engine counters, /proc,
    files. Polling every 5 ms keeps a passing test quick without busying the CPU.
    """
    with anyio.move_on_after(within):
        while not check():  # noqa: ASYNC110 - the state lives elsewhere: nothing to await
            await anyio.sleep(0.005)
    assert check(), f"gave up waiting for {what} after {within:g} s"


async def token_in(store: TokenStore) -> str:
    """The user token a Session made with ``token_store=store`` holds now."""
    stored = await store.load()
    assert stored is not None, "no user session in the store"
    return stored.token
