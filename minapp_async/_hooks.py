"""Observability: request/response hooks and optional OpenTelemetry spans per invocation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import HError
from ._logs import get_logger
from ._version import __version__

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["CallInfo", "Hook"]

logger = get_logger()

#: OpenTelemetry's trace module once looked for (the "otel" extra): None when not installed.
#: Imported on the first call that builds a span, not with the SDK: it costs ~25 ms of start-up
#: that every CLI command would pay.
_trace: ModuleType | None = None
_trace_looked_up = False


def _otel_trace() -> ModuleType | None:
    global _trace, _trace_looked_up
    if not _trace_looked_up:
        try:
            from opentelemetry import trace
        except ImportError:  # pragma: no cover - depends on what is installed
            trace = None  # type: ignore[assignment]
        _trace, _trace_looked_up = trace, True
    return _trace


@attrs.define
class CallInfo:
    """One invocation as hooks see it; the fields after ``attempt`` are filled in as it goes.

    Attributes:
        function_name, sync: what was invoked.
        attempt: which try this is (1 for the first).
        status: the HTTP status of this try's reply (None when none came).
        code: the result's ``code`` (None unless a result was read).
        error: the HError this try failed with, if it failed.
        request_id: the server's request id, where it sent one.
        elapsed: seconds since the invocation started.
        state: a dict where hooks may keep their own data between the two calls.
    """

    function_name: str
    sync: bool
    attempt: int = 1
    status: int | None = None
    code: int | None = None
    error: HError | None = None
    request_id: str | None = None
    elapsed: float = 0.0
    state: dict[str, Any] = attrs.field(factory=dict, repr=False)
    _started: float = attrs.field(factory=time.perf_counter, repr=False, alias="_started")

    def _stamp(self) -> None:
        self.elapsed = time.perf_counter() - self._started


#: A hook gets the CallInfo; ``on_request`` before each try is sent, ``on_response`` after it.
Hook = Callable[[CallInfo], None]


def run_hook(hook: Hook | None, info: CallInfo) -> None:
    """Call *hook*; a failing hook is logged, never allowed to fail the invocation."""
    if hook is None:
        return
    info._stamp()
    try:
        hook(info)
    except Exception:
        logger.warning("hook %r failed", hook, exc_info=True)


@contextmanager
def invocation_span(info: CallInfo | None) -> Iterator[None]:
    """An OpenTelemetry client span around one invocation, when OpenTelemetry is installed."""
    trace = _otel_trace() if info is not None else None
    if info is None or trace is None:
        yield
        return
    tracer = trace.get_tracer("minapp_async", __version__)
    with tracer.start_as_current_span(
        f"invoke {info.function_name}", kind=trace.SpanKind.CLIENT
    ) as span:
        span.set_attribute("minapp.function_name", info.function_name)
        span.set_attribute("minapp.sync", info.sync)
        try:
            yield
        finally:
            info._stamp()
            span.set_attribute("minapp.attempts", info.attempt)
            span.set_attribute("minapp.duration_ms", info.elapsed * 1000)
            if info.status is not None:
                span.set_attribute("http.response.status_code", info.status)
            if info.code is not None:
                span.set_attribute("minapp.code", info.code)
            if info.error is not None:
                span.set_attribute("minapp.error_code", info.error.code)
            if info.request_id:
                span.set_attribute("minapp.request_id", info.request_id)
