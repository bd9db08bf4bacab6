"""Bad input gets a clear JSON error and never stops the engine from serving."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from engine_api import JOB, Api

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _engine_logs_stay_clean(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever the client did, the engine (closed by now) logged no warning or error."""
    yield
    noisy = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("aiohttp", "minapp_async"))
    ]
    assert noisy == []


async def assert_still_serving(api: Api, token: str) -> None:
    reply = await api.invoke(token, "helloWorld", {"name": "still here"})
    assert reply.body == {"code": 0, "data": "hello still here", "error": {}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"function_name": "echo"', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid UTF-8"),
        (b'\xef\xbb\xbf{"function_name": "echo"}', "not valid JSON"),  # a BOM is not JSON
        (b"[1, 2]", "must be a JSON object, got array"),
        (b'"echo"', "must be a JSON object, got string"),
        (b'{"function_name": "echo", "data": NaN}', "NaN is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
async def test_malformed_bodies_are_400(api: Api, body: bytes, expected: str) -> None:
    """Bodies that are not a JSON object get 400 saying what is wrong."""
    token = await api.login()
    reply = await api.request("POST", JOB, data=body, headers=api.hserve_headers(token))
    assert reply.status == 400
    assert expected in reply.error_msg
    await assert_still_serving(api, token)


@pytest.mark.parametrize("sync", ["yes", 1, None, [], {}])
async def test_sync_must_be_a_boolean(api: Api, sync: Any) -> None:
    """A non-boolean sync is a 400 naming the field and the type received."""
    token = await api.login()
    reply = await api.invoke(token, "echo", {}, sync=sync)
    assert reply.status == 400
    assert reply.error_msg.startswith("sync must be a boolean")
    assert api.engine.executions("echo") == 0


@pytest.mark.parametrize("name", [123, None, "", ["echo"], {"a": 1}, True])
async def test_non_string_function_name_is_404(api: Api, name: Any) -> None:
    """A function_name that is not a non-empty string is 404, as the platform documents."""
    token = await api.login()
    reply = await api.invoke(token, name, {})
    assert reply.status == 404
    assert "function_name must be a non-empty string" in reply.error_msg
    await assert_still_serving(api, token)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../echo", "'../echo'"),
        ("a/b", "'a/b'"),
        ("echo\x00", "'echo\\x00'"),
        ("函数", "'函数'"),
        ("e\u202ec.py", "'e\\u202ec.py'"),
        ("it's", "'it\\x27s'"),
        ("x" * 300, "'" + "x" * 64 + "…'"),
        ("unknown", "'unknown'"),
    ],
)
async def test_bad_or_unknown_function_names_are_404(api: Api, name: str, shown: str) -> None:
    """Names with /, .., NUL, unicode, or unknown names are 404 with the name escaped."""
    token = await api.login()
    reply = await api.invoke(token, name, {})
    assert reply.status == 404
    assert reply.error_msg.startswith(f"cloud function {shown} not found")
    await assert_still_serving(api, token)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("helloWord", ": did you mean 'helloWorld'?"),
        ("helloworld", ": did you mean 'helloWorld'?"),
        ("ecoh", ": did you mean 'echo'?"),
        ("zzzzzz", ""),
    ],
)
async def test_unknown_function_404_suggests_close_names(api: Api, name: str, hint: str) -> None:
    """A 404 for a mistyped name suggests the closest functions in the folder."""
    reply = await api.invoke(await api.login(), name, {})
    assert (404, f"cloud function '{name}' not found{hint}") == (reply.status, reply.error_msg)


async def test_any_json_data_type_is_passed_through(api: Api) -> None:
    """data may be any JSON value; the function receives it unchanged."""
    token = await api.login()
    for data in ([1, "two", None], 3.5, "text", True, {"nested": {"deep": [{}]}}):
        reply = await api.invoke(token, "echo", data)
        assert reply.status == 200
        assert reply.body["data"]["data"] == data


async def test_body_over_the_limit_is_413(api: Api) -> None:
    """A body larger than max_body_bytes is refused with 413 naming the limit."""
    token = await api.login()
    big = b'{"function_name": "echo", "data": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    reply = await api.request("POST", JOB, data=io.BytesIO(big), headers=api.hserve_headers(token))
    assert reply.status == 413
    assert str(api.engine.config.max_body_bytes) in reply.error_msg
    assert api.engine.executions("echo") == 0
    await assert_still_serving(api, token)


async def test_unknown_routes_are_404_json_and_wrong_methods_405_json(api: Api) -> None:
    """Unknown paths and wrong methods answer JSON errors too."""
    unknown = await api.request("GET", "/hserve/v9/nothing/")
    assert unknown.status == 404
    assert "/hserve/v9/nothing/" in unknown.error_msg
    wrong = await api.request("GET", JOB, headers=api.hserve_headers())
    assert wrong.status == 405
    assert "POST" in wrong.error_msg
    assert wrong.headers["Allow"] == "POST"


async def test_login_with_wrong_types_is_400(api: Api) -> None:
    """Non-string credentials are 400s, not crashes."""
    reply = await api.request(
        "POST",
        "/hserve/v2.1/login/username/",
        json_body={"username": ["a"], "password": 5},
        headers=api.hserve_headers(),
    )
    assert reply.status == 400
    assert "username" in reply.error_msg


async def test_oauth_endpoints_refuse_garbage(api: Api) -> None:
    """The OAuth endpoints answer 400/401 JSON to garbage bodies."""
    garbage = await api.request("POST", "/api/oauth2/access_token/", data=b"{{{")
    assert garbage.status == 400
    wrong_types = await api.request(
        "POST",
        "/api/oauth2/hydrogen/openapi/authorize/",
        json_body={"client_id": 1, "client_secret": None},
    )
    assert wrong_types.status == 401
    token = await api.login()
    await assert_still_serving(api, token)


async def test_job_list_query_garbage_is_400(api: Api) -> None:
    """Non-numeric pagination and time filters are 400s naming the parameter."""
    token = await api.access_token()
    base = "/oserve/v1.3/cloud-function/echo/job/"
    for query, param in (
        ("?offset=abc", "offset"),
        ("?limit=100000", "limit"),
        ("?created_at__gte=nan", "created_at__gte"),
        ("?service_type=x", "service_type"),
    ):
        reply = await api.oserve("GET", base + query, token)
        assert reply.status == 400, query
        assert param in reply.error_msg


@pytest.mark.parametrize("user_id", ["²", "9" * 5000, "-1", "1e3"])
async def test_odd_user_ids_are_404(api: Api, user_id: str) -> None:
    """Unicode digits, huge numbers and signs in a user id are 404s, not crashes."""
    token = await api.login()
    reply = await api.request(
        "GET", f"/hserve/v2.5/user/info/{user_id}/", headers=api.hserve_headers(token)
    )
    assert reply.status == 404
    assert "not found" in reply.error_msg


@pytest.mark.parametrize("offset", ["²", "9" * 5000])
async def test_odd_pagination_numbers_are_400(api: Api, offset: str) -> None:
    """Unicode digits and huge numbers in the job list's query are 400s."""
    token = await api.access_token()
    reply = await api.oserve("GET", f"/oserve/v1.3/cloud-function/echo/job/?offset={offset}", token)
    assert reply.status == 400
    assert "offset" in reply.error_msg


async def test_lone_surrogates_in_credentials_are_refused_cleanly(api: Api) -> None:
    """Credentials holding lone surrogates compare unequal instead of crashing."""
    api.engine.create_user(username="allen", password="pw")
    login = await api.request(
        "POST",
        "/hserve/v2.1/login/username/",
        json_body={"username": "allen", "password": "\ud800"},
        headers=api.hserve_headers(),
    )
    assert login.status == 401
    authorize = await api.request(
        "POST",
        "/api/oauth2/hydrogen/openapi/authorize/",
        json_body={"client_id": "\ud800", "client_secret": "\udfff"},
    )
    assert authorize.status == 401


async def test_undecodable_header_bytes_are_refused_cleanly(api: Api) -> None:
    """A client id header with invalid UTF-8 bytes is a 400, sent over a raw socket."""
    host, port = api.engine.url.removeprefix("http://").split(":")
    request = (
        b"POST /hserve/v2.0/login/anonymous/ HTTP/1.1\r\n"
        b"Host: " + host.encode() + b"\r\n"
        b"X-Hydrogen-Client-ID: \xff\xfe\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(request)
        response = b""
        with anyio.fail_after(10):
            try:
                while True:
                    response += await stream.receive()
            except anyio.EndOfStream:
                pass
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"printable ASCII" in response
    token = await api.login()
    await assert_still_serving(api, token)
