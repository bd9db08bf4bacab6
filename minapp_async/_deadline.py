"""The deadline that bounds a whole call, and the timeout error that says where the call was.

A deadline is an anyio cancel scope, so anyio delivers its cancellation: a shielded scope
inside the call (a token store's I/O, a user's clean-up) runs to its end, an enclosing scope's
cancellation passes through, and Python 3.10 and 3.11+ behave alike. When the scope catches
its own cancellation, the call fails with ``PoolTimeoutError`` or ``RequestTimeoutError``
naming the phase it was in.

Only the timer is our own: deadlines that end within the same hundredth of a second share one
loop timer, which cancels their scopes when it fires (up to 10 ms late). At thousands of calls
a second, a timer per call (a handle pushed on the loop's heap, then cancelled) costs more
than the rest of the deadline; ``benchmarks/throughput.py`` measured a scope with its own
deadline below the fan-out goal (``benchmarks/README.md``).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeAlias

import anyio

from ._errors import ErrorDetails, PoolTimeoutError, RequestTimeoutError
from ._transport import Attempt

if TYPE_CHECKING:
    from typing_extensions import Self

#: Deadlines are rounded up to the next 1/100 s, so that calls ending together share a timer.
SLOTS_PER_SECOND: Final = 100

_WHERE: Final = {
    "pool": "waiting for a connection",
    "auth": "logging in",
    "send": "waiting for the reply",
}

#: One event loop's shared timers: slot number -> the scopes of the deadlines ending in that
#: slot. The loop holds one timer per slot in use; when it fires, it cancels every scope
#: still in the slot (a deadline leaves its slot when its call ends).
Timers: TypeAlias = "dict[int, set[anyio.CancelScope]]"


def _fire(timers: Timers, slot: int) -> None:
    for scope in timers.pop(slot, ()):
        scope.cancel()


class Deadline:
    """Bounds a whole call. A timeout says where the call was (pool, auth or send) and whether
    the request may have reached the server. ``None`` seconds: no deadline."""

    __slots__ = (
        "_attempt",
        "_members",
        "_method",
        "_path",
        "_scope",
        "_seconds",
        "_timers",
        "_when",
    )

    _scope: anyio.CancelScope | None
    _members: set[anyio.CancelScope]

    def __init__(
        self,
        seconds: float | None,
        attempt: Attempt,
        path: str,
        timers: Timers,
        method: str = "POST",
    ) -> None:
        """*timers*: the shared timers of the Session this call belongs to (and its views)."""
        self._seconds = seconds
        self._attempt = attempt
        self._path = path
        self._timers = timers
        self._method = method
        self._scope = None

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        if self._scope is None:
            return math.inf
        return self._when - asyncio.get_running_loop().time()

    def __enter__(self) -> Self:
        if self._seconds is None:
            return self
        loop = asyncio.get_running_loop()
        when = loop.time() + self._seconds
        # No deadline of the scope's own (it would start a timer): the shared one cancels it.
        scope = self._scope = anyio.CancelScope()
        scope.__enter__()
        slot = int(when * SLOTS_PER_SECOND) + 1  # the slot's end is after `when`
        members = self._timers.get(slot)
        if members is None:
            members = self._timers[slot] = set()
            loop.call_at(slot / SLOTS_PER_SECOND, _fire, self._timers, slot)
        members.add(scope)
        self._members = members
        self._when = when
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        if scope is None:
            return
        self._members.discard(scope)
        # The scope swallows only its own cancellation, which happens at the deadline; any
        # other cancellation (the caller's, an outer scope's) passes through untouched.
        if scope.__exit__(exc_type, exc, tb) or scope.cancelled_caught:
            if exc is not None:
                # The cancellation stays the timeout's context, without its frames: their
                # locals hold the request's headers and body (a token, a password).
                exc.__traceback__ = None
            raise self._error() from None

    def _error(self) -> RequestTimeoutError:
        attempt = self._attempt
        details = ErrorDetails(method=self._method, path="/" + self._path)
        text = f"no reply within {self._seconds:g} s ({_WHERE[attempt.phase]})"
        if attempt.phase == "pool" and not attempt.sent_before:
            return PoolTimeoutError(text, details=details)
        err = RequestTimeoutError(
            text, details=details, may_have_executed=attempt.may_have_executed
        )
        err.attempts = attempt.number
        return err
