"""User logins (client API) and server credentials (Open API), against a scripted server."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from fakeserver import CLIENT_ID, FakeServer

import minapp_async

pytestmark = pytest.mark.anyio

JOB = "/hserve/v1/cloud-function/job/"


class Accounts:
    """Scripted login endpoints: each login issues a fresh token."""

    def __init__(self, server: FakeServer, expires_in: int = 2592000) -> None:
        self.server = server
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.valid: set[str] = set()
        for path in (
            "/hserve/v2.0/login/anonymous/",
            "/hserve/v2.1/login/username/",
            "/hserve/v2.1/login/email/",
            "/hserve/v2.1/login/phone/",
            "/hserve/v2.1/register/username/",
        ):
            server.handlers[path] = self.login
        server.handlers["/hserve/v2.5/user/info/7/"] = self.info
        server.handlers["/hserve/v2.0/session/destroy/"] = self.logout
        server.handlers[JOB] = self.job

    async def login(self, request: web.Request) -> web.Response:
        await anyio.sleep(0.05)  # long enough for concurrent callers to pile up behind it
        token = f"tok{len(self.issued)}"
        self.issued.append(token)
        self.valid.add(token)
        body = {"token": token, "user_id": 7, "expires_in": self.expires_in}
        return web.json_response(body, status=201)

    def token_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth.removeprefix("Hydrogen-r1 ") if auth.startswith("Hydrogen-r1 ") else None

    async def info(self, request: web.Request) -> web.Response:
        anonymous = self.server.requests[-2].path.endswith("/anonymous/")
        return web.json_response({"id": 7, "_anonymous": anonymous})

    async def logout(self, request: web.Request) -> web.Response:
        self.valid.discard(self.token_of(request) or "")
        return web.json_response({"message": "Destroy succeed.", "status": "ok"}, status=201)

    async def job(self, request: web.Request) -> web.Response:
        if self.token_of(request) not in self.valid:
            return web.json_response({"status": "error", "error_msg": "bad token"}, status=401)
        return web.json_response({"code": 0, "data": self.token_of(request), "error": {}})

    def logins(self) -> int:
        return sum("/login/" in r.path for r in self.server.requests)


@pytest.fixture(name="accounts")
def _accounts(server: FakeServer) -> Accounts:
    """Login endpoints on the recording server."""
    return Accounts(server)


async def test_anonymous_login(server: FakeServer, accounts: Accounts) -> None:
    """anonymous_login posts {} then fetches the user, and stores the JS SDK's expiry."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        before = int(time.time())
        user = await s.auth.anonymous_login()
        result = await s.invoke("f")

    login, info, job = server.requests
    assert (login.path, login.body) == ("/hserve/v2.0/login/anonymous/", b"{}")
    assert (
        info.method,
        info.path,
        info.header("Authorization"),
    ) == ("GET", "/hserve/v2.5/user/info/7/", "Hydrogen-r1 tok0")
    assert (user.id, user.anonymous, user.info) == (7, True, {"id": 7, "_anonymous": True})
    assert user.expires_at is not None
    assert before + 2592000 - 30 <= user.expires_at <= time.time() + 2592000 - 30
    assert job.header("Authorization") == "Hydrogen-r1 tok0"
    assert result.data == "tok0"


@pytest.mark.parametrize(
    ("kwargs", "path", "body"),
    [
        ({"username": "u"}, "/hserve/v2.1/login/username/", {"username": "u", "password": "pw"}),
        ({"email": "e@x"}, "/hserve/v2.1/login/email/", {"email": "e@x", "password": "pw"}),
        ({"phone": "138"}, "/hserve/v2.1/login/phone/", {"phone": "138", "password": "pw"}),
    ],
)
async def test_password_logins(
    server: FakeServer, accounts: Accounts, kwargs: dict[str, str], path: str, body: Any
) -> None:
    """Each kind of password login goes to its own endpoint with the JS SDK's body."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        user = await s.auth.login(password="pw", **kwargs)

    assert (path, body) == (server.requests[0].path, json.loads(server.requests[0].body))
    assert (user.id, user.anonymous) == (7, False)


async def test_register(server: FakeServer, accounts: Accounts) -> None:
    """register() creates the user and logs in as it."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        await s.auth.register(username="new", password="pw")
        assert (await s.auth.get_current_user()).id == 7

    assert server.requests[0].path == "/hserve/v2.1/register/username/"


async def test_logout(server: FakeServer, accounts: Accounts) -> None:
    """logout() destroys the session on the server; later calls carry no token."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        await s.auth.login(username="u", password="pw")
        await s.auth.logout()
        assert await s.auth.current_user() is None
        with pytest.raises(minapp_async.AuthenticationError):
            await s.invoke("f")

    destroy = server.requests[2]
    assert (
        destroy.path,
        destroy.body,
        destroy.header("Authorization"),
    ) == ("/hserve/v2.0/session/destroy/", b"{}", "Hydrogen-r1 tok0")
    assert server.requests[-1].header("Authorization") is None


async def test_get_current_user_without_login(server: FakeServer) -> None:
    """get_current_user() without a session is 604, like auth.getCurrentUser() in JS."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        with pytest.raises(minapp_async.SessionMissingError) as info:
            await s.auth.get_current_user()
    assert info.value.message == "604: session missing"


async def test_expired_session_is_604_before_sending(server: FakeServer) -> None:
    """An expired session without credentials raises 604 and sends nothing."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        await s.auth.set_token("old", user_id=7, expires_in=0)  # already expired
        with pytest.raises(minapp_async.SessionMissingError, match="expired"):
            await s.invoke("f")

    assert server.requests == []


async def test_relogin_is_single_flight(server: FakeServer, accounts: Accounts) -> None:
    """100 concurrent calls with an expired session make exactly one login request."""
    creds = minapp_async.UserCredentials(username="u", password="pw")
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, credentials=creds) as s:
        await s.auth.set_token("old", user_id=7, expires_in=0)
        results: list[Any] = []

        async def call() -> None:
            results.append((await s.invoke("f")).data)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(call)

    assert accounts.logins() == 1
    assert results == ["tok0"] * 100


async def test_401_relogs_in_once_and_replays(server: FakeServer, accounts: Accounts) -> None:
    """A refused token is replaced once and the call replayed; concurrent 401s share one login."""
    creds = minapp_async.UserCredentials(username="u", password="pw")
    async with (
        minapp_async.Session(
            CLIENT_ID, base_url=server.url, credentials=creds, token="revoked"
        ) as s,
        anyio.create_task_group() as tg,
    ):
        for _ in range(20):
            tg.start_soon(_call, s)

    assert accounts.logins() == 1


async def _call(s: minapp_async.Session) -> None:
    assert (await s.invoke("f")).data == "tok0"


async def test_second_401_is_raised(server: FakeServer, accounts: Accounts) -> None:
    """When the fresh token is refused too, the 401 reaches the caller: no loop."""
    accounts.valid.clear()

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"status": "error", "error_msg": "nope"}, status=401)

    server.handlers[JOB] = refuse
    creds = minapp_async.UserCredentials(username="u", password="pw")
    async with minapp_async.Session(
        CLIENT_ID, base_url=server.url, credentials=creds, token="x"
    ) as s:
        with pytest.raises(minapp_async.AuthenticationError, match="401: nope"):
            await s.invoke("f")

    assert (accounts.logins(), sum(r.path == JOB for r in server.requests)) == (1, 2)


async def test_file_store_survives_restarts(
    server: FakeServer, accounts: Accounts, tmp_path: Path
) -> None:
    """A FileTokenStore keeps the session across Sessions, in a file only its owner can read."""
    path = tmp_path / "state" / "session.json"
    async with minapp_async.Session(
        CLIENT_ID, base_url=server.url, token_store=minapp_async.FileTokenStore(path)
    ) as s:
        await s.auth.login(username="u", password="pw")

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with minapp_async.Session(
        CLIENT_ID, base_url=server.url, token_store=minapp_async.FileTokenStore(path)
    ) as s:
        user = await s.auth.get_current_user()
        result = await s.invoke("f")

    assert (user.id, result.data) == (7, "tok0")
    assert "pw" not in path.read_text()


async def test_corrupt_store_is_a_logout(tmp_path: Path) -> None:
    """An unreadable store file means nobody is logged in, not a crash."""
    path = tmp_path / "session.json"
    path.write_text("{not json")

    assert await minapp_async.FileTokenStore(path).load() is None


async def test_as_user_views_are_isolated(server: FakeServer, accounts: Accounts) -> None:
    """as_user() invokes with that user's token and leaves the Session's own login alone."""
    accounts.valid.update({"alice", "bob"})
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, token="tok-own") as s:
        accounts.valid.add("tok-own")
        seen: dict[str, Any] = {}

        async def as_user(name: str) -> None:
            for _ in range(5):
                seen.setdefault(name, set()).add((await s.as_user(name).invoke("f")).data)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(as_user, "alice")
            tg.start_soon(as_user, "bob")
        own = await s.invoke("f")

    assert ({"alice"}, {"bob"}, "tok-own") == (seen["alice"], seen["bob"], own.data)


async def test_explicit_login_has_a_deadline(server: FakeServer) -> None:
    """A login the server never answers fails with 601 at the sync deadline, not a hang."""

    async def stall(request: web.Request) -> web.Response:
        await server.stopping.wait()
        raise AssertionError("unreachable")

    server.handlers["/hserve/v2.1/login/username/"] = stall
    timeouts = minapp_async.Timeouts(sync=0.3)
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, timeout=timeouts) as s:
        with anyio.fail_after(5):
            with pytest.raises(minapp_async.RequestTimeoutError) as info:
                await s.auth.login(username="u", password="pw")

    assert "/hserve/v2.1/login/username/" == info.value.details.path
    assert "pw" not in str(info.value)
