"""Proof 7: the engine's own security. Already proven in tests/engine and not repeated here:
expired tokens refused (test_app_hserve.py::test_expired_session_is_refused), 413 for large
bodies (test_app_bad_input.py::test_body_over_the_limit_is_413), traversal names are 404
(test_app_bad_input.py::test_bad_or_unknown_function_names_are_404, test_runtime.py::
test_find_never_leaves_the_folder). This adds: the default bind, token shape and uniqueness,
and that no function, Node or Python, can see any caller's token in its event or environment."""

from __future__ import annotations

import json
import re
import socket

import anyio
import pytest
from hardening_support import FUNCTIONS
from support import token_in

import minapp_async
from minapp_async.engine import Engine, EngineConfig
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio


def test_the_default_host_is_loopback(tmp_path: object) -> None:
    """Unless told otherwise the engine listens on 127.0.0.1 only."""
    assert "127.0.0.1" == EngineConfig(functions_dir=str(tmp_path)).host


async def test_the_engine_is_not_reachable_on_other_addresses() -> None:
    """A running engine accepts on 127.0.0.1, and nothing listens on its port elsewhere."""
    async with running_engine(FUNCTIONS) as engine:
        port = int(engine.url.rsplit(":", 1)[1])
        other = _non_loopback_address()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass

    assert engine.url.startswith("http://127.0.0.1:")


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only, nothing goes out
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_user_tokens_are_32_random_characters_and_unique(
    engine: Engine, credentials: minapp_async.UserCredentials
) -> None:
    """200 logins give 200 distinct tokens of 32 lowercase alphanumerics."""
    tokens = set()
    store = minapp_async.MemoryTokenStore()
    async with minapp_async.Session(engine.client_id, base_url=engine.url, token_store=store) as s:
        for _ in range(200):
            await s.auth.login(username=credentials.username, password=credentials.password)
            tokens.add(await token_in(store))

    assert 200 == len(tokens)
    assert all(re.fullmatch(r"[a-z0-9]{32}", t) for t in tokens)
    # 200 tokens of 32 characters: every character class shows up, no position is constant.
    assert all(len({t[i] for t in tokens}) > 10 for i in range(32))


@pytest.mark.parametrize("function", ["dump.py", "dump.js"])
async def test_no_function_sees_any_callers_token(
    engine: Engine, credentials: minapp_async.UserCredentials, function: str
) -> None:
    """Concurrent callers, user and server: the event and environment the function dumps
    hold none of their tokens or the client secret."""
    name = function.rsplit(".", 1)[0]
    engine.create_user(username="other", password="pw-other")
    other = minapp_async.UserCredentials(username="other", password="pw-other")
    dumps: list[str] = []
    store_a, store_b = minapp_async.MemoryTokenStore(), minapp_async.MemoryTokenStore()
    async with (
        minapp_async.Session(
            engine.client_id, base_url=engine.url, credentials=credentials, token_store=store_a
        ) as a,
        minapp_async.Session(
            engine.client_id, base_url=engine.url, credentials=other, token_store=store_b
        ) as b,
        minapp_async.Session(
            engine.client_id, client_secret=engine.client_secret, base_url=engine.url
        ) as app,
    ):

        async def dump(session: minapp_async.Session) -> None:
            dumps.append((await session.invoke(name, {"k": 1})).data)  # type: ignore[arg-type]

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for session in (a, b, app) * 3:
                    tg.start_soon(dump, session)
        secrets = {
            await token_in(store_a),
            await token_in(store_b),
            app._auth._access,  # type: ignore[union-attr]
            app._auth._refresh,  # type: ignore[union-attr]
            engine.client_secret,
        }

    assert 9 == len(dumps) and all(isinstance(d, str) for d in dumps)
    assert {"event", "env"} == set(json.loads(dumps[0]))
    assert None not in secrets
    assert not [s for s in secrets if any(s in d for d in dumps)]  # type: ignore[operator]
