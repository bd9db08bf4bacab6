"""Issue 11, secrets: a hostile server cannot pull a secret out of its origin (redirects), get
one echoed into what the SDK shows (errors, logs, spans), or find one in the frame locals an
error reporter captures.

Assumed for the implementer: a refused redirect raises an ``HError`` whose message says
"redirect" (the class is left open: ``NetworkError`` or ``ResponseFormatError`` both fit);
secrets are matched by their exact values (password, client secret, tokens, the OAuth code).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hostile_servers import (
    ACCESS_TOKEN,
    AUTHORIZE_PATH,
    CLIENT_ID,
    CLIENT_SECRET,
    CODE,
    JOB_PATH,
    LOGIN_PATH,
    PASSWORD,
    REFRESH_TOKEN,
    TOKEN,
    TOKEN_PATH,
    Handler,
    Hostile,
    frames_of,
    hostile_server,
    leaked_secrets,
    local_reprs,
    reply,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import minapp_async
from minapp_async import Retry, Session, UserCredentials

pytestmark = pytest.mark.anyio

OPEN_JOB = "/oserve/v1.3/cloud-function/f/job/"

_exporter = InMemorySpanExporter()
_exporting: list[bool] = []


@pytest.fixture(name="spans")
def _spans() -> InMemorySpanExporter:
    """The finished spans. A process has one tracer provider, set once: this adds to the one
    another test module set at import (tests/sdk/test_hooks.py), set at run time so that it
    never takes that module's place, or sets one when there is none."""
    if not _exporting:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        _exporting.append(True)
    _exporter.clear()
    return _exporter


@pytest.fixture(name="a")
async def _a() -> AsyncIterator[Hostile]:
    """The origin the Session is pointed at."""
    async with hostile_server() as server:
        yield server


@pytest.fixture(name="b")
async def _b() -> AsyncIterator[Hostile]:
    """Another origin (127.0.0.1 on another port), answering like a willing accomplice."""
    async with hostile_server() as server:
        server.routes["*"] = reply(200, {"code": "evil-code-from-b", "expires_in": 600})
        yield server


async def failure(call: Any) -> minapp_async.HError:
    try:
        await call
    except minapp_async.HError as err:
        return err
    raise AssertionError("the call succeeded")


# -- 1. a secret never leaves its origin ---------------------------------------------------------


def redirect_to(status: int, location: Callable[[], str], cookie: bool = False) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=status, headers={"Location": location()})
        if cookie:
            response.set_cookie("flow", "f-secret-cookie")
        return response

    return handle


@pytest.mark.parametrize("status", [307, 308])
async def test_a_307_or_308_to_another_origin_gets_no_secret(
    a: Hostile, b: Hostile, status: int
) -> None:
    """Authorize answered with a 307/308 to another origin: the other server receives
    nothing at all (the secret would ride along in the re-sent body), and the call fails with
    an HError that says it refused a redirect."""
    a.routes[AUTHORIZE_PATH] = redirect_to(status, lambda: b.url + AUTHORIZE_PATH)

    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=a.url) as s:
        err = await failure(s.invoke("f"))

    assert [] == b.texts()
    assert "redirect" in str(err).lower()


@pytest.mark.parametrize("status", [307, 308])
async def test_a_307_or_308_on_the_same_origin_is_not_followed_with_the_secret(
    a: Hostile, status: int
) -> None:
    """The flow needs only 302/303 without a body: a 307/308 (which re-sends the body with
    the secret) is refused even on the same origin; the secret is sent exactly once."""
    a.routes[AUTHORIZE_PATH] = redirect_to(status, lambda: a.url + "/collect/")

    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=a.url) as s:
        err = await failure(s.invoke("f"))

    assert [AUTHORIZE_PATH] == [seen.path for seen in a.seen]
    assert "redirect" in str(err).lower()


@pytest.mark.parametrize("hops", [1, 2], ids=["direct", "after-a-same-origin-hop"])
async def test_a_302_to_another_origin_is_refused_and_its_code_never_used(
    a: Hostile, b: Hostile, hops: int
) -> None:
    """A 302 to another origin (directly, or after a same-origin hop that set the flow's
    cookie): the other server gets no request (so no cookie either), the code it would mint
    never reaches the token endpoint, and the call fails with an HError about the redirect."""
    if hops == 1:
        a.routes[AUTHORIZE_PATH] = redirect_to(302, lambda: b.url + "/done/", cookie=True)
    else:
        a.routes[AUTHORIZE_PATH] = redirect_to(302, lambda: a.url + "/step2/", cookie=True)
        a.routes["/step2/"] = redirect_to(302, lambda: b.url + "/done/")
    a.routes[TOKEN_PATH] = reply(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600})

    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=a.url) as s:
        err = await failure(s.invoke("f"))

    assert [] == b.texts()
    assert 0 == a.count(TOKEN_PATH)
    assert 0 == a.count(OPEN_JOB)
    assert "redirect" in str(err).lower()


@pytest.fixture(name="certificate")
async def _certificate(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A fresh self-signed certificate for 127.0.0.1 (openssl), and a server context for it."""
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
    return cert, context


DOWNGRADE_CHILD = """
import asyncio, os
import minapp_async

async def main():
    async with minapp_async.Session(
        os.environ["CID"], client_secret=os.environ["SECRET"], base_url=os.environ["URL"]
    ) as s:
        try:
            await s.invoke("f", timeout=10)
        except minapp_async.HError as err:
            print(type(err).__name__, err)
            return
    print("succeeded")

asyncio.run(main())
"""


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_from_https_to_plain_http_is_refused(
    b: Hostile, certificate: tuple[Path, ssl.SSLContext], status: int
) -> None:
    """Authorize over https answered with a 302 or 307 to a plain http:// URL: the http
    server receives nothing (no secret, no cookie, no request for a code) and the call fails
    with an HError about the redirect. Run in a child process that trusts the test's
    self-signed certificate (SSL_CERT_FILE), so the SDK's TLS verification stays on."""
    cert, context = certificate
    async with hostile_server(ssl_context=context) as a:
        a.routes[AUTHORIZE_PATH] = redirect_to(status, lambda: b.url + "/done/", cookie=True)
        env = {**os.environ, "SSL_CERT_FILE": str(cert), "CID": CLIENT_ID,
               "SECRET": CLIENT_SECRET, "URL": a.url}  # fmt: skip
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-c", DOWNGRADE_CHILD], env=env, check=False
            )
        reached_a = [seen.path for seen in a.seen]

    output = done.stdout.decode() + done.stderr.decode()
    assert AUTHORIZE_PATH in reached_a, output  # TLS to the https origin worked
    assert [] == b.texts()
    assert [AUTHORIZE_PATH] == reached_a  # and no code from the http server was used
    assert "redirect" in output.lower(), output


# -- 2. secrets echoed by a server are scrubbed --------------------------------------------------


def _echo_json(secret: str) -> tuple[str, str]:
    return json.dumps({"error_msg": f"refused: {secret}", "detail": secret}), "application/json"


def _echo_html(secret: str) -> tuple[str, str]:
    return f"<html><body><h1>Denied</h1><pre>{secret}</pre></body></html>", "text/html"


def _echo_camel(secret: str) -> tuple[str, str]:
    body = {"clientSecret": secret, "userPassword": secret, "accessToken": secret}
    return json.dumps({"error_msg": "denied", **body}), "application/json"


def _echo_repr(secret: str) -> tuple[str, str]:
    return f"{{'client_secret': '{secret}', 'password': '{secret}', 'x': 1}}", "text/plain"


ECHOES = {"json": _echo_json, "html": _echo_html, "camel": _echo_camel, "repr": _echo_repr}


def echo(status: int, shape: str, *secrets: str) -> Handler:
    body, content_type = ECHOES[shape](" ".join(secrets))
    return reply(status, body, content_type=content_type)


async def _echoed_password(server: Hostile, shape: str) -> minapp_async.HError:
    server.routes[LOGIN_PATH] = echo(401, shape, PASSWORD)
    creds = UserCredentials(username="u", password=PASSWORD)
    async with Session(CLIENT_ID, base_url=server.url, credentials=creds, tracing=True) as s:
        return await failure(s.invoke("f"))


async def _echoed_client_secret(server: Hostile, shape: str) -> minapp_async.HError:
    server.routes[AUTHORIZE_PATH] = echo(401, shape, CLIENT_SECRET)
    async with Session(
        CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.url, tracing=True
    ) as s:
        return await failure(s.invoke("f"))


async def _echoed_token(server: Hostile, shape: str) -> minapp_async.HError:
    server.routes[JOB_PATH] = echo(500, shape, TOKEN)
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN, tracing=True) as s:
        return await failure(s.invoke("f"))


async def _echoed_access_token(server: Hostile, shape: str) -> minapp_async.HError:
    server.routes[AUTHORIZE_PATH] = reply(200, {"code": CODE, "expires_in": 600})
    server.routes[TOKEN_PATH] = reply(
        200,
        {"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN, "expires_in": 3600},
    )
    server.routes[OPEN_JOB] = echo(500, shape, ACCESS_TOKEN, REFRESH_TOKEN, CODE)
    async with Session(
        CLIENT_ID,
        client_secret=CLIENT_SECRET,
        base_url=server.url,
        tracing=True,
        retry=Retry(attempts=1),
    ) as s:
        return await failure(s.invoke("f"))


@pytest.mark.parametrize("shape", list(ECHOES))
@pytest.mark.parametrize(
    "scenario",
    [_echoed_password, _echoed_client_secret, _echoed_token, _echoed_access_token],
    ids=["password", "client-secret", "user-token", "access-refresh-code"],
)
async def test_an_echoed_secret_is_scrubbed_everywhere(
    a: Hostile,
    caplog: pytest.LogCaptureFixture,
    spans: InMemorySpanExporter,
    shape: str,
    scenario: Callable[[Hostile, str], Any],
) -> None:
    """A server echoes a secret the Session holds in its error body (JSON text, HTML, camelCase
    keys, a Python repr). The exact value appears in none of: str(err), repr(err),
    err.details, the formatted traceback, any log record at DEBUG, the OpenTelemetry span's
    exception event."""
    caplog.set_level(logging.DEBUG)

    err = await scenario(a, shape)

    texts = [str(err), repr(err), repr(err.details), str(err.details.body)]
    texts += traceback.format_exception(err)
    texts += [caplog.text] + [r.getMessage() for r in caplog.records]
    finished = spans.get_finished_spans()
    assert finished, "tracing=True made no span"
    for span in finished:
        texts.append(repr(dict(span.attributes or {})))
        texts.append(str(span.status.description))
        texts += [repr(dict(event.attributes or {})) for event in span.events]
    assert [] == leaked_secrets(texts)


# -- 3. no plaintext secret in the SDK's frame locals ---------------------------------------------


async def _failed_auto_login(server: Hostile) -> minapp_async.HError:
    creds = UserCredentials(username="u", password=PASSWORD)
    async with Session(CLIENT_ID, base_url=server.url, credentials=creds) as s:
        return await failure(s.invoke("f"))


async def _failed_explicit_login(server: Hostile) -> minapp_async.HError:
    async with Session(CLIENT_ID, base_url=server.url) as s:
        return await failure(s.auth.login(username="u", password=PASSWORD))


async def _failed_authorize(server: Hostile) -> minapp_async.HError:
    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.url) as s:
        return await failure(s.invoke("f"))


async def _failed_token_grant(server: Hostile) -> minapp_async.HError:
    server.routes[AUTHORIZE_PATH] = reply(200, {"code": CODE, "expires_in": 600})
    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.url) as s:
        return await failure(s.invoke("f"))


@pytest.mark.parametrize(
    "scenario",
    [_failed_auto_login, _failed_explicit_login, _failed_authorize, _failed_token_grant],
    ids=["credentials-login", "auth.login", "authorize", "token-grant"],
)
async def test_no_frame_of_a_failed_login_holds_a_plain_secret(
    a: Hostile, scenario: Callable[[Hostile], Any]
) -> None:
    """After a refused login, authorize or token grant (a plain 401), the repr of every local
    of every frame in the error's traceback (causes and contexts included), and of the items
    of container locals, shows neither the password nor the client secret nor the code: an
    error reporter that captures locals sends what these reprs show."""
    for path in (LOGIN_PATH, AUTHORIZE_PATH, TOKEN_PATH):
        a.routes[path] = reply(401, {"error_msg": "invalid credentials"})

    err = await scenario(a)

    assert 401 == err.code
    shown = [f"{f.f_code.co_name}: {name} = {text}" for f in frames_of(err) for name, text in
             local_reprs(f)]  # fmt: skip
    assert any("minapp_async" in f.f_code.co_filename for f in frames_of(err))
    assert [] == leaked_secrets(shown, (PASSWORD, CLIENT_SECRET, CODE))
