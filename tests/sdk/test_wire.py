"""What goes on the wire: paths, headers and bodies of PROTOCOL.md §1–§3.1, byte for byte."""

from __future__ import annotations

import pytest
from fakeserver import CLIENT_ID, FakeServer, Reply

import minapp_async

pytestmark = pytest.mark.anyio

JOB = "/hserve/v1/cloud-function/job/"


def _hydrogen_headers(server: FakeServer) -> dict[str, str]:
    return {k: v for k, v in server.requests[-1].raw_headers if k.startswith("X-Hydrogen")}


async def test_sync_invoke_body_and_path(session: minapp_async.Session, server: FakeServer) -> None:
    """invoke('helloWorld', {name: 'allen'}) posts the JS SDK's exact body to the job path."""
    await session.invoke("helloWorld", {"name": "allen"})

    req = server.requests[-1]
    assert (req.method, req.path) == ("POST", JOB)
    assert req.body == b'{"function_name":"helloWorld","sync":true,"data":{"name":"allen"}}'


async def test_async_invoke_body(session: minapp_async.Session, server: FakeServer) -> None:
    """sync=False is sent as "sync":false."""
    server.json_reply(200, {"status": "ok"})
    await session.invoke("helloWorld", {"name": "allen"}, False)

    assert (
        server.requests[-1].body
        == b'{"function_name":"helloWorld","sync":false,"data":{"name":"allen"}}'
    )


async def test_no_params_leaves_data_out(session: minapp_async.Session, server: FakeServer) -> None:
    """Without params the body has no data field at all; None is sent as null."""
    await session.invoke("helloWorld")
    await session.invoke("helloWorld", None)

    assert server.requests[0].body == b'{"function_name":"helloWorld","sync":true}'
    assert server.requests[1].body == b'{"function_name":"helloWorld","sync":true,"data":null}'


async def test_params_of_any_json_shape(session: minapp_async.Session, server: FakeServer) -> None:
    """Arrays, strings and unicode go out as compact UTF-8 JSON, as JSON.stringify writes them."""
    await session.invoke("f", [1, "二", {"a": None}])
    await session.invoke("f", "text")

    assert '{"function_name":"f","sync":true,"data":[1,"二",{"a":null}]}'.encode() == (
        server.requests[0].body
    )
    assert server.requests[1].body == b'{"function_name":"f","sync":true,"data":"text"}'


async def test_invoke_function_alias(session: minapp_async.Session, server: FakeServer) -> None:
    """invoke_function sends exactly what invoke sends, and warns that it is deprecated."""
    await session.invoke("helloWorld", {"name": "allen"}, False)
    with pytest.warns(DeprecationWarning, match="invoke_function"):
        await session.invoke_function("helloWorld", {"name": "allen"}, False)

    first, second = server.requests
    assert (first.path, first.body) == (second.path, second.body)
    assert _hydrogen_headers(server) == {k: v for k, v in first.raw_headers if k.startswith("X-")}


async def test_headers_exactly_as_the_js_sdk(server: FakeServer) -> None:
    """Header names go out in the JS SDK's case, with the documented values."""
    async with minapp_async.Session(
        CLIENT_ID, base_url=server.url, env_id="env42", token="tok123"
    ) as s:
        await s.invoke("helloWorld", {"name": "allen"})

    req = server.requests[-1]
    assert {
        "X-Hydrogen-Client-ID": CLIENT_ID,
        "X-Hydrogen-Client-Version": f"v{minapp_async.__version__}",
        "X-Hydrogen-Client-Platform": "WEB",
        "X-Hydrogen-Client-SDK-Type": "file",
        "X-Hydrogen-Env-ID": "env42",
    } == _hydrogen_headers(server)
    assert req.header("Authorization") == "Hydrogen-r1 tok123"
    assert "Authorization" in req.header_names
    assert req.header("Content-Type") == "application/json"
    assert req.header("Cookie") is None


async def test_no_token_sends_no_authorization(server: FakeServer) -> None:
    """Like the JS SDK, a Session with no login sends no Authorization; the server decides."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        await s.invoke("helloWorld")

    assert server.requests[-1].header("Authorization") is None


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_base_url_join(server: FakeServer, suffix: str) -> None:
    """A base URL with or without a trailing slash gives the same path (PROTOCOL.md §1)."""
    async with minapp_async.Session(CLIENT_ID, base_url=server.url + suffix, token="t") as s:
        await s.invoke("f")

    assert server.requests[-1].path == JOB


def test_default_base_url() -> None:
    """Without base_url the client API host is https://{client_id}.myminapp.com."""
    s = minapp_async.Session(CLIENT_ID)

    assert f"https://{CLIENT_ID}.myminapp.com" in repr(s)


async def test_with_options_view(session: minapp_async.Session, server: FakeServer) -> None:
    """A view sends its own env and headers, shares the pool and leaves the original alone."""
    view = session.with_options(env_id="staging", headers={"X-Trace": "1"})
    await view.invoke("f")
    await session.invoke("f")

    via_view, via_original = server.requests
    assert (via_view.header("X-Hydrogen-Env-ID"), via_view.header("X-Trace")) == ("staging", "1")
    assert (
        via_original.header("X-Hydrogen-Env-ID"),
        via_original.header("X-Trace"),
    ) == (None, None)
    await view.aclose()  # closing a view closes nothing
    await session.invoke("f")
    assert len(server.requests) == 3


async def test_view_drops_and_replaces_headers(server: FakeServer) -> None:
    """A view sends exactly its own headers, in order: none of the original's env or extra
    headers leak through the pool they share, and its values replace the original's."""
    async with minapp_async.Session(
        CLIENT_ID, base_url=server.url, env_id="env42", headers={"X-Trace": "1"}, token="t"
    ) as s:
        view = s.with_options(env_id=None, headers={"Accept": "text/plain"}, platform="WECHAT")
        await view.invoke("f")

    assert [
        ("X-Hydrogen-Client-ID", CLIENT_ID),
        ("X-Hydrogen-Client-Version", f"v{minapp_async.__version__}"),
        ("X-Hydrogen-Client-Platform", "WECHAT"),
        ("X-Hydrogen-Client-SDK-Type", "file"),
        ("User-Agent", f"minapp-async/{minapp_async.__version__}"),
        ("Content-Type", "application/json"),
        ("Accept", "text/plain"),
        ("Authorization", "Hydrogen-r1 t"),
        ("Content-Length", "33"),
    ] == [
        (k, v) for k, v in server.requests[-1].raw_headers if k not in ("Host", "Accept-Encoding")
    ]


async def test_result_shapes(session: minapp_async.Session, server: FakeServer) -> None:
    """Sync results, function failures and both async acknowledgements become InvokeResults."""
    server.json_reply(200, {"code": 0, "data": "hello allen", "error": {}})
    server.json_reply(
        200, {"code": 1, "data": None, "error": {"message": "boom", "stack": "s", "type": "Error"}}
    )
    server.json_reply(200, {"status": "ok"})
    server.json_reply(200, {"code": 0, "data": {"status": "ok"}, "error": {}})

    ok = await session.invoke("helloWorld", {"name": "allen"})
    failed = await session.invoke("f")
    ack1 = await session.invoke("f", sync=False)
    ack2 = await session.invoke("f", sync=False)

    assert (ok.code, ok.data, ok.error, ok.ok) == (0, "hello allen", {}, True)
    assert ok is ok.raise_for_code()
    assert (failed.code, failed.ok) == (1, False)
    with pytest.raises(minapp_async.FunctionError) as info:
        failed.raise_for_code()
    assert (info.value.error_message, info.value.stack, info.value.type) == ("boom", "s", "Error")
    assert info.value.message == "1: Error: boom"
    for ack in (ack1, ack2):
        assert (ack.code, ack.data, ack.error) == (0, {"status": "ok"}, {})


async def test_raw_body_and_request_id(session: minapp_async.Session, server: FakeServer) -> None:
    """The result keeps the raw body and the server's X-Request-Id."""
    server.reply(Reply(body=b'{"code":0,"data":1,"error":{}}', headers={"X-Request-Id": "r1"}))

    result = await session.invoke("f")

    assert (result.raw, result.request_id) == (b'{"code":0,"data":1,"error":{}}', "r1")
