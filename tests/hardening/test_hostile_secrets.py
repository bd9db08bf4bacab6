"""Issue 11, secrets: a hostile server cannot pull a secret out of its origin (redirects), get
one echoed into what the SDK shows (errors, logs, spans), or find one in the frame locals an
error reporter captures.

Assumed for the implementer: a refused redirect raises an ``HError`` whose message says
"redirect" (the class is left open: ``NetworkError`` or ``ResponseFormatError`` both fit);
secrets are matched by their exact values (password, client secret, tokens, the OAuth code).
"""

from __future__ import annotations

import html
import json
import logging
import os
import ssl
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

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
    drop,
    frames_of,
    hang,
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
from minapp_async import Retry, Session, Timeouts, UserCredentials

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


# -- past the examples: what else a hostile server might try --------------------------------------


async def test_a_secret_cut_by_a_snippet_shows_none_of_its_start(a: Hostile) -> None:
    """Error bodies are shown cut (a snippet ending in "…"): with the token placed across the
    cut, at many offsets, neither the whole token nor its start shows, in an error reply's
    details nor in a 2xx reply's "not JSON" message."""
    async with Session(CLIENT_ID, base_url=a.url, token=TOKEN, retry=Retry(attempts=1)) as s:
        shown: list[str] = []
        for status, offsets in ((500, range(150, 260, 5)), (200, range(40, 130, 5))):
            for offset in offsets:
                body = "x" * offset + TOKEN + "y" * 300
                a.routes[JOB_PATH] = reply(status, body, content_type="text/plain")
                err = await failure(s.invoke("f"))
                assert "…" in str(err), "the body was not cut: the test proves nothing"
                shown += [str(err), repr(err), repr(err.details)]

    assert [] == leaked_secrets(shown, (TOKEN[:3],))


SPECIAL_PASSWORD = 'pw/Zq7"<&>+ =\u00fc%-special-never-shown'


def _encoded_forms(secret: str) -> list[str]:
    """How a server might echo *secret*: URL-encoded (both hex cases, '+' for space), JSON
    with and without ASCII escapes, HTML-escaped, a Python repr."""
    return [
        quote(secret, safe=""),
        quote(secret, safe="").lower(),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret),
        repr(secret)[1:-1],
    ]


async def test_an_encoded_echo_of_a_secret_is_scrubbed(
    a: Hostile, caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter
) -> None:
    """A password with characters that every encoding changes, echoed URL-encoded, JSON- and
    HTML-escaped and as a repr, in the error text and the body: none of those forms shows."""
    caplog.set_level(logging.DEBUG)
    forms = _encoded_forms(SPECIAL_PASSWORD)
    a.routes[LOGIN_PATH] = reply(401, json.dumps({"error_msg": " | ".join(forms), "f": forms}))
    creds = UserCredentials(username="u", password=SPECIAL_PASSWORD)
    async with Session(CLIENT_ID, base_url=a.url, credentials=creds, tracing=True) as s:
        err = await failure(s.invoke("f"))

    texts = [str(err), repr(err), repr(err.details), *traceback.format_exception(err)]
    texts += [caplog.text] + [repr(dict(e.attributes or {})) for sp in
                              spans.get_finished_spans() for e in sp.events]  # fmt: skip
    assert 401 == err.code
    assert [] == leaked_secrets(texts, [SPECIAL_PASSWORD, *forms])


async def test_a_secret_echoed_in_a_reply_header_is_scrubbed(
    a: Hostile, caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter
) -> None:
    """The server puts the token it was sent into its request id header: the error, its
    details, the hook's CallInfo, the span's attributes and the debug log (which names each
    reply's request id) show it scrubbed."""
    caplog.set_level(logging.DEBUG)
    a.routes[JOB_PATH] = reply(500, "{}", **{"X-Request-Id": f"rid-{TOKEN}"})
    seen: list[str] = []

    def hook(info: minapp_async.CallInfo) -> None:
        seen.append(repr(info) + str(info.request_id))

    async with Session(CLIENT_ID, base_url=a.url, token=TOKEN, tracing=True, on_response=hook) as s:
        err = await failure(s.invoke("f"))

    assert err.details.request_id is not None and err.details.request_id.startswith("rid-")
    assert "rid-" in caplog.text, "no debug record names the request id: nothing proven"
    texts = [str(err), repr(err.details), *seen, caplog.text]
    texts += [repr(dict(span.attributes or {})) for span in spans.get_finished_spans()]
    assert [] == leaked_secrets(texts)


@pytest.mark.parametrize(
    "location",
    [
        f"http://127.0.0.1:1/cb?code={CODE}&client_secret={CLIENT_SECRET}",
        f"https://{CLIENT_SECRET}.example.invalid/{CODE}",
    ],
    ids=["in-the-query", "in-the-host"],
)
async def test_a_refused_redirect_shows_no_secret_from_its_location(
    a: Hostile, location: str
) -> None:
    """A refused redirect names where it pointed by origin only (a Location's path and query
    may carry a code), and a secret in the host name (which comes back lower-cased) is
    scrubbed too."""
    a.routes[AUTHORIZE_PATH] = redirect_to(302, lambda: location)

    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=a.url) as s:
        err = await failure(s.invoke("f"))

    shown = [str(err), repr(err), repr(err.details)]
    assert "redirect" in str(err).lower()
    assert [] == leaked_secrets([t.lower() for t in shown], [CLIENT_SECRET.lower(), CODE.lower()])


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_an_invoke_redirected_elsewhere_sends_no_token_there(
    a: Hostile, b: Hostile, status: int
) -> None:
    """Client API: an invoke answered with any redirect to another origin is not followed (the
    Authorization header would go along); the error says so."""
    a.routes[JOB_PATH] = redirect_to(status, lambda: b.url + JOB_PATH)

    async with Session(CLIENT_ID, base_url=a.url, token=TOKEN) as s:
        err = await failure(s.invoke("f"))

    assert [] == b.texts()
    assert status == err.code and "redirect" in str(err).lower()


async def test_the_flow_follows_same_origin_302_and_303_and_its_cookies_stay_in_it(
    a: Hostile, b: Hostile
) -> None:
    """The authorize flow follows same-origin 302 and 303 (absolute and relative) as GETs
    without a body and sends its cookie back within the flow; the token grant, the calls and
    other servers never get that cookie, and a cookie a call's reply sets is never sent."""
    a.routes[AUTHORIZE_PATH] = redirect_to(302, lambda: a.url + "/step2/", cookie=True)
    a.routes["/step2/"] = redirect_to(303, lambda: "/step3/")
    a.routes["/step3/"] = reply(200, {"code": CODE, "expires_in": 600})
    a.routes[TOKEN_PATH] = reply(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600})

    async def job(request: web.Request) -> web.StreamResponse:
        response = web.json_response({"code": 0, "data": "ok", "error": {}})
        response.set_cookie("job", "j-secret-cookie")
        return response

    a.routes[OPEN_JOB] = job

    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=a.url) as s:
        await s.invoke("f")
        await s.invoke("f")

    steps = [(seen.method, seen.path, seen.body) for seen in a.seen[:3]]
    assert [("GET", "/step2/", b""), ("GET", "/step3/", b"")] == steps[1:]
    assert "f-secret-cookie" in a.seen[1].headers.get("Cookie", "")
    assert "f-secret-cookie" in a.seen[2].headers.get("Cookie", "")
    later = [seen for seen in a.seen[3:]]
    assert [TOKEN_PATH, OPEN_JOB, OPEN_JOB] == [seen.path for seen in later]
    assert [] == [seen.headers["Cookie"] for seen in later if "Cookie" in seen.headers]
    assert [] == b.texts()


async def test_more_than_a_few_same_origin_hops_are_refused(a: Hostile) -> None:
    """A flow that redirects on and on (same origin) is cut after a few hops: the call fails
    with an error about the redirect, and no code is used."""
    a.routes[AUTHORIZE_PATH] = redirect_to(302, lambda: "/loop/")
    a.routes["/loop/"] = redirect_to(302, lambda: "/loop/")

    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=a.url) as s:
        err = await failure(s.invoke("f"))

    assert "redirect" in str(err).lower()
    assert 2 <= a.count("/loop/") <= 10
    assert 0 == a.count(TOKEN_PATH)


async def _echo_as_user(server: Hostile) -> minapp_async.HError:
    other = "tok-Pv39-another-user-never-shown"
    server.routes[JOB_PATH] = echo(500, "json", other, TOKEN)
    async with Session(CLIENT_ID, base_url=server.url, token=TOKEN) as s:
        err = await failure(s.as_user(other).invoke("f"))
    assert [] == leaked_secrets([str(err), repr(err.details)], [other])
    return err


async def _echo_stored_token(server: Hostile, tmp_path: Path) -> minapp_async.HError:
    store = minapp_async.FileTokenStore(tmp_path / "session.json")
    await store.save(minapp_async.StoredSession(token=TOKEN, user_id=7))
    server.routes[JOB_PATH] = echo(500, "html", TOKEN)
    async with Session(CLIENT_ID, base_url=server.url, token_store=store) as s:
        return await failure(s.invoke("f"))


@pytest.mark.parametrize("scenario", ["as-user", "stored-token"])
async def test_tokens_from_views_and_stores_are_scrubbed(
    a: Hostile, tmp_path: Path, scenario: str
) -> None:
    """A view's own token and its Session's token (``as_user``), and a token loaded from a
    token store, are scrubbed like the others."""
    if scenario == "as-user":
        err = await _echo_as_user(a)
    else:
        err = await _echo_stored_token(a, tmp_path)
    assert [] == leaked_secrets([str(err), repr(err), repr(err.details)])


async def _login_dropped(server: Hostile) -> minapp_async.HError:
    server.routes[LOGIN_PATH] = drop
    async with Session(CLIENT_ID, base_url=server.url) as s:
        return await failure(s.auth.login(username="u", password=PASSWORD))


async def _login_timed_out(server: Hostile) -> minapp_async.HError:
    server.routes[LOGIN_PATH] = hang
    async with Session(CLIENT_ID, base_url=server.url, timeout=Timeouts(sync=0.3)) as s:
        return await failure(s.auth.login(username="u", password=PASSWORD))


async def _auto_login_timed_out(server: Hostile) -> minapp_async.HError:
    server.routes[LOGIN_PATH] = hang
    creds = UserCredentials(username="u", password=PASSWORD)
    async with Session(CLIENT_ID, base_url=server.url, credentials=creds) as s:
        return await failure(s.invoke("f", timeout=0.3))


async def _authorize_dropped(server: Hostile) -> minapp_async.HError:
    server.routes[AUTHORIZE_PATH] = drop
    async with Session(CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.url) as s:
        return await failure(s.invoke("f"))


async def _bad_arguments(server: Hostile) -> minapp_async.HError:
    try:
        Session(CLIENT_ID, client_secret=CLIENT_SECRET, token=TOKEN, base_url=server.url)
    except minapp_async.HError as err:
        return err
    raise AssertionError("the Session was made")


async def _bad_login_arguments(server: Hostile) -> minapp_async.HError:
    async with Session(CLIENT_ID, base_url=server.url) as s:
        return await failure(s.auth.login(password=PASSWORD))


@pytest.mark.parametrize(
    "scenario",
    [
        _login_dropped,
        _login_timed_out,
        _auto_login_timed_out,
        _authorize_dropped,
        _bad_arguments,
        _bad_login_arguments,
    ],
    ids=["login-dropped", "login-timeout", "auto-login-timeout", "authorize-dropped",
         "session-605", "login-605"],
)  # fmt: skip
async def test_no_frame_holds_a_secret_whatever_ended_the_login(
    a: Hostile, scenario: Callable[[Hostile], Any]
) -> None:
    """Not only a 401: a connection dropped during login or authorize (aiohttp's own frames
    held the request bytes), a deadline that ends a login (the cancellation's frames), a 605
    refused at Session creation or at login: no frame of the error's chain, aiohttp's and
    asyncio's included, shows the password, the client secret or the token."""
    err = await scenario(a)

    shown = [f"{f.f_code.co_name}: {name} = {text}" for f in frames_of(err) for name, text in
             local_reprs(f)]  # fmt: skip
    assert shown, "no frame to look at: the test proves nothing"
    assert [] == leaked_secrets(shown, (PASSWORD, CLIENT_SECRET, TOKEN))


async def test_a_secret_in_a_malformed_reply_is_scrubbed_from_the_parser_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raw server answers with a header line aiohttp cannot parse, holding the token it was
    sent: aiohttp's error quotes the line. The SDK's error shows it scrubbed, and aiohttp's
    exception (whose text still holds it) no longer hangs below it in the traceback."""
    caplog.set_level(logging.DEBUG)

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            await stream.send(
                b"HTTP/1.1 500 Oops\r\nX-Bad\x01: " + TOKEN.encode() + b"\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, answer)
            async with Session(CLIENT_ID, base_url=f"http://127.0.0.1:{port}", token=TOKEN) as s:
                err = await failure(s.invoke("f"))
            tg.cancel_scope.cancel()

    assert "X-Bad" in str(err), "aiohttp's text is not shown: the test proves nothing"
    texts = [str(err), repr(err), *traceback.format_exception(err), caplog.text]
    assert [] == leaked_secrets(texts)
