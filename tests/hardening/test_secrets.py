"""Proof 6: tokens, passwords and the client secret never show in a repr or str, in a log
record at any level (in process and through MINAPP_ASYNC_LOG in a subprocess), in an error
message or a formatted traceback; TLS is verified by default and plain http to another host
warns."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
import traceback
import warnings
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from hardening_support import FUNCTIONS, PASSWORD, USERNAME
from support import token_in

import minapp_async
from minapp_async import FileTokenStore, MemoryTokenStore, Retry, Session, UserCredentials
from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

CLIENT_SECRET = "cs-Vb72-client-secret-never-logged"


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """An engine with a distinctive client secret and the test user."""
    async with running_engine(FUNCTIONS, client_secret=CLIENT_SECRET) as engine:
        engine.create_user(username=USERNAME, password=PASSWORD)
        yield engine


class Secrets:
    """Every secret the test has seen, to search any text for."""

    def __init__(self) -> None:
        self.values = {PASSWORD, CLIENT_SECRET}

    def collect(self, *sessions: Session) -> None:
        for s in sessions:
            auth = s._auth
            for name in ("_access", "_refresh", "_client_secret"):
                value = getattr(auth, name, None)
                if value:
                    self.values.add(value)
            stored = getattr(auth, "_session", None)
            if stored is not None:
                self.values.add(stored.token)

    def assert_absent(self, texts: Iterable[str]) -> None:
        for text in texts:
            leaked = [v for v in self.values if v in text]
            assert not leaked, f"{leaked} leaked into {text[:300]!r}"


def formatted(err: BaseException) -> str:
    """str, repr, and the whole formatted traceback with its chained causes."""
    return "\n".join([str(err), repr(err), *traceback.format_exception(err)])


async def test_no_public_object_shows_a_secret(engine: Engine, tmp_path: Path) -> None:
    """repr and str of sessions, views, auth objects, credentials, stores, users, results."""
    found = Secrets()
    creds = UserCredentials(username=USERNAME, password=PASSWORD)
    store = FileTokenStore(tmp_path / "session.json")
    async with (
        Session(
            engine.client_id, base_url=engine.url, credentials=creds, token_store=store
        ) as user,
        Session(engine.client_id, client_secret=CLIENT_SECRET, base_url=engine.url) as app,
    ):
        result = await user.invoke("echo", 1)
        await app.invoke("echo", 1)
        found.collect(user, app)
        token = await token_in(store)
        memory = MemoryTokenStore()
        await memory.save(await store.load())  # type: ignore[arg-type]
        objects = [
            user,
            app,
            user.as_user(token),
            user.with_options(timeout=3),
            user.auth,
            app._auth,
            creds,
            store,
            memory,
            await store.load(),
            await user.auth.current_user(),
            result,
        ]

    assert len(found.values) >= 5  # password, secret, user token, access and refresh tokens
    found.assert_absent([repr(o) for o in objects] + [str(o) for o in objects])


async def test_logs_at_debug_never_show_a_secret(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Logins, re-logins, refreshes, 401s, failures and echoed secrets, logged at DEBUG by
    every logger: no secret in any record."""
    caplog.set_level(logging.DEBUG)
    found = Secrets()
    creds = UserCredentials(username=USERNAME, password=PASSWORD)
    async with (
        Session(engine.client_id, base_url=engine.url, credentials=creds) as user,
        Session(engine.client_id, client_secret=CLIENT_SECRET, base_url=engine.url) as app,
    ):
        await user.invoke("echo", 1)
        await app.invoke("echo", 1)
        found.collect(user, app)
        engine.expire_sessions()
        engine.faults.add("status", status=503, retry_after=0.01)  # a retry is logged
        await user.invoke("echo", 2)
        await app.invoke("echo", 2)
        found.collect(user, app)
        engine.faults.add("malformed", body=_echoing(found))
        with pytest.raises(minapp_async.ResponseFormatError):
            await user.invoke("echo", 3)
        with pytest.raises(minapp_async.AuthenticationError):
            await user.auth.login(username=USERNAME, password=PASSWORD + "-wrong")

    debug = [r for r in caplog.records if r.name.startswith("minapp_async")]
    assert any(r.levelno == logging.DEBUG and "retrying" in r.getMessage() for r in debug)
    assert any("/hserve/v2.1/login/username/" in r.getMessage() for r in debug)
    found.assert_absent([caplog.text] + [r.getMessage() for r in caplog.records])


def _echoing(found: Secrets) -> bytes:
    """A reply body that repeats every secret seen so far, in the shapes servers use."""
    values = sorted(found.values)
    return json.dumps(
        {
            "token": values[0],
            "password": values[1],
            "client_secret": values[2],
            "detail": f"Authorization: Hydrogen-r1 {values[3]}; Bearer {values[-1]}",
        }
    ).encode()


CHILD = """
import asyncio, json, os, sys
import minapp_async

async def main():
    url, cid = os.environ["ENGINE_URL"], os.environ["ENGINE_CLIENT_ID"]
    creds = minapp_async.UserCredentials(username=os.environ["U"], password=os.environ["P"])
    seen = []
    store = minapp_async.MemoryTokenStore()
    async with minapp_async.Session(cid, base_url=url, credentials=creds, token_store=store) as user, \\
            minapp_async.Session(cid, client_secret=os.environ["S"], base_url=url) as app:
        await user.invoke("echo", 1)
        await app.invoke("echo", 1)
        seen += [(await store.load()).token, app._auth._access, app._auth._refresh]
        try:
            await user.auth.login(username=os.environ["U"], password="wrong-" + os.environ["P"])
        except minapp_async.HError:
            pass
    print(json.dumps(seen))

asyncio.run(main())
"""


async def test_the_env_switch_logs_to_stderr_without_secrets(engine: Engine) -> None:
    """MINAPP_ASYNC_LOG=debug in a fresh process: requests are logged, no secret is."""
    env = {
        **os.environ,
        "MINAPP_ASYNC_LOG": "debug",
        "ENGINE_URL": engine.url,
        "ENGINE_CLIENT_ID": engine.client_id,
        "U": USERNAME,
        "P": PASSWORD,
        "S": CLIENT_SECRET,
    }
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", CHILD], env=env, check=False)
    stderr = done.stderr.decode()

    assert 0 == done.returncode, stderr
    found = Secrets()
    found.values.update(json.loads(done.stdout))
    assert "DEBUG minapp_async: POST /hserve/v2.1/login/username/ -> 201" in stderr
    assert "POST /api/oauth2/access_token/ -> 200" in stderr
    found.assert_absent([stderr])


async def test_errors_and_tracebacks_never_show_a_secret(engine: Engine) -> None:
    """Failed logins (wrong password, wrong client secret), a refused token, and a reply
    echoing secrets: no secret in the message, repr or formatted traceback."""
    found = Secrets()
    wrong_secret = "cs-wrong-" + CLIENT_SECRET
    found.values.add(wrong_secret)
    errors: list[BaseException] = []
    creds = UserCredentials(username=USERNAME, password=PASSWORD)
    store = MemoryTokenStore()
    async with Session(
        engine.client_id,
        base_url=engine.url,
        credentials=creds,
        retry=Retry(attempts=1),
        token_store=store,
    ) as user:
        await user.invoke("echo", 1)
        found.collect(user)
        token = await token_in(store)
        for failing in (
            user.auth.login(username=USERNAME, password="pw-wrong-" + PASSWORD),
            _invoke_with_fault(engine, user, "malformed", body=_echoing(found)),
            _invoke_with_fault(engine, user, "status", status=500),
        ):
            with pytest.raises(minapp_async.HError) as info:
                await failing
            errors.append(info.value)
        found.values.add("pw-wrong-" + PASSWORD)
        engine.expire_sessions()
        with pytest.raises(minapp_async.AuthenticationError) as refused:
            await user.as_user(token).invoke("echo", 2)
        errors.append(refused.value)
    async with Session(engine.client_id, client_secret=wrong_secret, base_url=engine.url) as app:
        with pytest.raises(minapp_async.AuthenticationError) as info:
            await app.invoke("echo", 1)
        errors.append(info.value)

    assert [401, 200, 500, 401, 401] == [getattr(e, "code", None) for e in errors]
    found.assert_absent([formatted(e) for e in errors])


async def _invoke_with_fault(engine: Engine, session: Session, kind: str, **fault: object) -> None:
    engine.faults.add(kind, **fault)  # type: ignore[arg-type]
    await session.invoke("echo", "x")


# ---------------------------------------------------------------- TLS and plain http


@pytest.fixture(name="self_signed")
async def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1 (openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with anyio.fail_after(60):
        await anyio.run_process(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(key), "-out", str(cert),
            ]
        )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_a_self_signed_certificate_is_refused_and_nothing_is_sent(
    self_signed: ssl.SSLContext,
) -> None:
    """TLS is verified by default: a self-signed server gets no request, the call a 600."""
    received: list[str] = []
    # The server's side of each refused handshake reaches the loop's exception handler: keep
    # them, as the evidence that the client hung up during the handshake.
    loop = asyncio.get_running_loop()
    handshakes: list[BaseException | None] = []
    loop.set_exception_handler(lambda _, context: handshakes.append(context.get("exception")))

    async def handle(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.json_response({"code": 0, "data": None, "error": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with Session("a4d2d62965ddb57fa4d6", base_url=url, token="tok-secret") as s:
            with anyio.fail_after(10), pytest.raises(minapp_async.NetworkError) as info:
                await s.invoke("echo", 1)
    finally:
        await runner.cleanup()
        loop.set_exception_handler(None)

    assert [] == received
    assert handshakes and all(
        isinstance(e, ConnectionResetError | ssl.SSLError) for e in handshakes
    )
    assert (600, False) == (info.value.code, info.value.may_have_executed)
    assert "certificate" in info.value.message.lower()


@pytest.mark.parametrize(
    ("base_url", "warns"),
    [
        ("http://10.1.2.3", True),
        ("http://example.com:8000/", True),
        ("http://127.0.0.1:8000", False),
        ("http://[::1]:8000", False),
        ("http://localhost", False),
        ("https://example.com", False),
    ],
)
def test_plain_http_to_another_host_warns(base_url: str, warns: bool) -> None:
    """A non-loopback http:// base URL gives InsecureURLWarning; loopback and https do not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Session("a4d2d62965ddb57fa4d6", base_url=base_url)

    assert [warns] == [any(w.category is minapp_async.InsecureURLWarning for w in caught)]
