"""Fault injection: make the next N matching replies misbehave, to test clients' failure paths.

Faults are counted, never random, so a test knows exactly which request misbehaves.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final, Literal, get_args

import anyio
import attrs
from aiohttp import web

from .._protocol import error_reply

FaultKind = Literal["slow", "drop", "status", "malformed", "reset_mid_body", "trickle"]
FaultWhen = Literal["before", "after"]
_KINDS: Final = frozenset(get_args(FaultKind))

#: What a "before" fault that needs a body sends when the function did not run.
_STAND_IN_BODY: Final = b'{"code":0,"data":null,"error":{}}'


@attrs.frozen
class Fault:
    """One armed fault; ``remaining`` counts the replies it will still spoil."""

    kind: FaultKind
    remaining: int
    path: str | None
    when: FaultWhen
    delay: float
    status: int
    retry_after: float | str | None
    body: bytes
    content_type: str

    def matches(self, path: str, *, is_invoke: bool) -> bool:
        return is_invoke if self.path is None else self.path in path


class Faults:
    """The engine's armed faults, consumed in the order they were added.

    Kinds:
      * ``slow``: answer normally after ``delay`` seconds (``before``: the delay comes before
        the function runs; ``after``: after it ran).
      * ``drop``: close the connection without any reply.
      * ``status``: reply ``status`` with a JSON error body, with
        ``Retry-After: <retry_after>`` when given (a 429 always has one, default 1).
      * ``malformed``: reply 200 with ``body`` as given and ``content_type``.
      * ``reset_mid_body``: send the headers and part of the body, then close the connection.
      * ``trickle``: send the normal reply one byte every ``delay`` seconds.

    ``when="before"`` misbehaves without running the function; ``when="after"`` runs the
    request to completion first (so a client's retry after it would run the function twice).
    ``slow`` and ``trickle`` always deliver the real reply. ``path`` is a substring of the
    request path; None means the invoke endpoints.
    """

    def __init__(self) -> None:
        self._armed: list[Fault] = []

    def __repr__(self) -> str:
        return f"<Faults armed={self._armed!r}>"

    def __bool__(self) -> bool:
        """Whether a fault is armed (every request asks, so this copies nothing)."""
        return bool(self._armed)

    def add(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        path: str | None = None,
        when: FaultWhen = "before",
        delay: float = 0.5,
        status: int = 500,
        retry_after: float | str | None = None,
        body: bytes = b"<html>",
        content_type: str = "application/json",
    ) -> None:
        """Arm a fault for the next *times* matching replies."""
        if kind not in _KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_KINDS)}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive int, got {times!r}")
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', got {when!r}")
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
        if not isinstance(body, bytes):
            raise TypeError(f"body must be bytes, got {type(body).__name__}")
        if kind == "status" and status == 429 and retry_after is None:
            retry_after = 1
        self._armed.append(
            Fault(kind, times, path, when, delay, status, retry_after, body, content_type)
        )

    def clear(self) -> None:
        """Disarm every fault."""
        self._armed.clear()

    @property
    def armed(self) -> list[Fault]:
        """The faults still waiting for a matching request."""
        return list(self._armed)

    def take(self, path: str, *, is_invoke: bool) -> Fault | None:
        """The first armed fault matching this request, counting this use against it."""
        for i, fault in enumerate(self._armed):
            if fault.matches(path, is_invoke=is_invoke):
                if fault.remaining <= 1:
                    del self._armed[i]
                else:
                    self._armed[i] = attrs.evolve(fault, remaining=fault.remaining - 1)
                return fault
        return None


async def misbehave(
    fault: Fault,
    request: web.Request,
    respond: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Answer *request* the way *fault* says; *respond* produces the normal reply."""
    if fault.kind == "slow":
        if fault.when == "before":
            await anyio.sleep(fault.delay)
            return await respond()
        response = await respond()
        await anyio.sleep(fault.delay)
        return response
    if fault.kind == "trickle":
        return await _trickle(request, await respond(), fault.delay)

    normal: web.StreamResponse | None = None
    if fault.when == "after":
        normal = await respond()  # the function runs to completion; its reply is then lost
    if fault.kind == "drop":
        _close(request)
        return web.Response(status=204)  # never sent: the transport is closed
    if fault.kind == "status":
        headers = {}
        if fault.retry_after is not None:  # a 429 always has one; a 503 when asked for
            headers["Retry-After"] = str(fault.retry_after)
        return web.json_response(
            error_reply(f"injected fault: HTTP {fault.status}"),
            status=fault.status,
            headers=headers,
        )
    if fault.kind == "malformed":
        return web.Response(
            body=fault.body, status=200, headers={"Content-Type": fault.content_type}
        )
    # reset_mid_body
    body = _body_of(normal) if normal is not None else _STAND_IN_BODY
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    _close(request)
    return response


async def _trickle(
    request: web.Request, normal: web.StreamResponse, delay: float
) -> web.StreamResponse:
    body = _body_of(normal)
    response = web.StreamResponse(status=normal.status, headers=normal.headers)
    response.content_length = len(body)
    try:
        await response.prepare(request)
        for i in range(len(body)):
            await response.write(body[i : i + 1])
            await anyio.sleep(delay)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client gave up waiting: that is what trickling is meant to provoke
    return response


def _body_of(response: web.StreamResponse) -> bytes:
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        return response.body
    # Our handlers only produce in-memory bodies; anything else gets a stand-in.
    return json.dumps(error_reply("no body")).encode()


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN: no (complete) reply
