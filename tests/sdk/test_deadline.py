"""A call's deadline is an anyio cancel scope: shields inside it hold, outer scopes compose."""

from __future__ import annotations

import anyio
import pytest
from fakeserver import CLIENT_ID, FakeServer, Reply

import minapp_async
from minapp_async import StoredSession

pytestmark = pytest.mark.anyio


class ShieldedStore:
    """A token store whose load does shielded I/O (as a store that must not be cut off
    halfway through a read would): it runs inside the first call's deadline."""

    def __init__(self) -> None:
        self.loads_finished = 0

    async def load(self) -> StoredSession | None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.3)  # six times the call's deadline
            self.loads_finished += 1
        return StoredSession(token="tok-shielded")

    async def save(self, session: StoredSession) -> None:
        pass

    async def clear(self) -> None:
        pass


async def test_a_shielded_scope_inside_the_deadline_runs_to_its_end(server: FakeServer) -> None:
    """The store's shielded 0.3 s load inside a 0.05 s deadline completes; the deadline takes
    effect at the next checkpoint after it, before the request reaches the server."""
    store = ShieldedStore()
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, token_store=store) as s:
        with pytest.raises(minapp_async.RequestTimeoutError) as info:
            await s.invoke("f", timeout=0.05)

    assert 1 == store.loads_finished
    assert "no reply within 0.05 s" in info.value.message
    assert [] == server.requests


async def test_an_outer_cancel_scope_is_not_reported_as_the_calls_timeout(
    server: FakeServer,
) -> None:
    """An enclosing scope that expires first cancels the call as its own: no
    RequestTimeoutError, and the call's deadline does not swallow it."""
    server.reply(Reply(hang=True))
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, token="t") as s:
        with anyio.move_on_after(0.1) as outer:
            await s.invoke("f", timeout=30)
        assert outer.cancelled_caught
        assert 0 == s.pool_stats.in_use


async def test_the_deadline_inside_an_expired_outer_scope_names_the_reply_phase(
    server: FakeServer,
) -> None:
    """The call's own deadline, shorter than an enclosing one, raises RequestTimeoutError
    naming the phase; the enclosing scope is not cancelled."""
    server.reply(Reply(hang=True))
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, token="t") as s:
        with anyio.fail_after(30) as outer:
            with pytest.raises(minapp_async.RequestTimeoutError) as info:
                await s.invoke("f", timeout=0.05)
        assert not outer.cancel_called
    assert "(waiting for the reply)" in info.value.message
    assert info.value.may_have_executed
