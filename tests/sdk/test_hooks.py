"""Request and response hooks, and OpenTelemetry spans per invocation."""

from __future__ import annotations

import pytest
from fakeserver import CLIENT_ID, FakeServer, Reply
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import minapp_async

pytestmark = pytest.mark.anyio

FAST = minapp_async.Retry(backoff_initial=0.01)

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


async def test_hooks_see_each_try(server: FakeServer) -> None:
    """on_request and on_response run around every try, with status, code and error."""
    seen: list[tuple[str, int, int | None, int | None, int | None]] = []

    def record(kind: str):  # type: ignore[no-untyped-def]
        def hook(info: minapp_async.CallInfo) -> None:
            err = info.error.code if info.error else None
            seen.append((kind, info.attempt, info.status, info.code, err))

        return hook

    server.json_reply(503, {"error_msg": "busy"})
    server.reply(Reply(body={"code": 1, "data": None, "error": {}}, headers={"X-Request-Id": "r"}))
    async with minapp_async.Session(
        CLIENT_ID,
        base_url=server.url,
        retry=FAST,
        on_request=record("req"),
        on_response=record("resp"),
    ) as s:
        await s.invoke("f")

    assert [
        ("req", 1, None, None, None),
        ("resp", 1, 503, None, 503),
        ("req", 2, None, None, None),
        ("resp", 2, 200, 1, None),
    ] == seen


async def test_failing_hook_is_logged_not_raised(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises does not fail the invocation."""

    def broken(info: minapp_async.CallInfo) -> None:
        raise RuntimeError("metrics backend down")

    async with minapp_async.Session(CLIENT_ID, base_url=server.url, on_response=broken) as s:
        assert (await s.invoke("f")).ok

    assert "hook" in caplog.text
    assert "metrics backend down" in caplog.text


async def test_span_per_invocation(server: FakeServer) -> None:
    """With tracing on, each invocation is one client span with its outcome."""
    _exporter.clear()
    server.json_reply(503, {"error_msg": "busy"})
    server.reply(Reply(headers={"X-Request-Id": "rid-1"}))
    server.json_reply(404, {"error_msg": "no such function"})
    async with minapp_async.Session(CLIENT_ID, base_url=server.url, retry=FAST, tracing=True) as s:
        await s.invoke("helloWorld", {"name": "allen"})
        with pytest.raises(minapp_async.NotFoundError):
            await s.invoke("nope", sync=False)

    ok, failed = _exporter.get_finished_spans()
    assert ("invoke helloWorld", trace.SpanKind.CLIENT) == (ok.name, ok.kind)
    assert {
        "minapp.function_name": "helloWorld",
        "minapp.sync": True,
        "minapp.attempts": 2,
        "http.response.status_code": 200,
        "minapp.code": 0,
        "minapp.request_id": "rid-1",
    }.items() <= dict(ok.attributes or {}).items()
    assert (False, 404, trace.StatusCode.ERROR) == (
        (failed.attributes or {})["minapp.sync"],
        (failed.attributes or {})["minapp.error_code"],
        failed.status.status_code,
    )


async def test_no_spans_unless_enabled(server: FakeServer) -> None:
    """Tracing is opt-in: a default Session makes no spans."""
    _exporter.clear()
    async with minapp_async.Session(CLIENT_ID, base_url=server.url) as s:
        await s.invoke("f")

    assert () == _exporter.get_finished_spans()
