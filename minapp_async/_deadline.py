"""The deadline that bounds a whole call, cheap enough to run on every one of a fan-out.

A deadline cancels its task when it passes, and turns that cancellation into a
``RequestTimeoutError`` that says where the call was. Deadlines that end within the same
hundredth of a second share one loop timer, as aiohttp's ``ceil_timeout`` rounds long timeouts
to whole seconds: a deadline fires up to 10 ms late, and thousands of calls a second schedule
a hundred timers instead of one each (a timer and its cancellation cost more than the rest of
the deadline together).
"""

from __future__ import annotations

import asyncio
import math
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeAlias

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

#: One event loop's shared timers: slot number -> the deadlines ending in that slot. The loop
#: holds one timer per slot in use; when it fires, every deadline still in the slot expires.
Timers: TypeAlias = "dict[int, set[Deadline]]"


def _fire(timers: Timers, slot: int) -> None:
    for deadline in timers.pop(slot, ()):
        deadline._expire()


class Deadline:
    """Bounds a whole call. A timeout says where the call was (pool, auth or send) and whether
    the request may have reached the server.

    On Python 3.11+ this is ``asyncio.timeout``'s algorithm without its coroutines (cancel the
    task at the deadline, and ``uncancel()`` to tell its own cancellation from anyone else's,
    so it composes with anyio's cancel scopes), on a shared timer. Python 3.10 has no
    ``uncancel()``, so there it is an anyio cancel scope.
    """

    __slots__ = (
        "_attempt",
        "_cancelling",
        "_expired",
        "_loop",
        "_members",
        "_method",
        "_path",
        "_scope",
        "_seconds",
        "_task",
        "_timers",
        "_when",
    )

    _task: asyncio.Task[Any]
    _cancelling: int
    _members: set[Deadline]
    _loop: asyncio.AbstractEventLoop
    _scope: anyio.CancelScope

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
        self._when = math.inf
        self._expired = False

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        return self._when - self._loop.time() if self._seconds is not None else math.inf

    def __enter__(self) -> Self:
        if self._seconds is None:
            return self
        self._loop = loop = asyncio.get_running_loop()
        self._when = when = loop.time() + self._seconds
        if sys.version_info >= (3, 11):  # Task.cancelling() and uncancel() exist
            task = asyncio.current_task(loop)
            assert task is not None
            self._task = task
            self._cancelling = task.cancelling()
            slot = int(when * SLOTS_PER_SECOND) + 1  # the slot's end is after `when`
            members = self._timers.get(slot)
            if members is None:
                members = self._timers[slot] = set()
                loop.call_at(slot / SLOTS_PER_SECOND, _fire, self._timers, slot)
            members.add(self)
            self._members = members
        else:  # pragma: no cover - Python 3.10
            self._scope = anyio.CancelScope(deadline=anyio.current_time() + self._seconds)
            self._scope.__enter__()
        return self

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._seconds is None:
            return
        if sys.version_info >= (3, 11):
            if not self._expired:
                self._members.discard(self)
            # As asyncio.timeout: only a cancellation that is ours alone becomes a timeout.
            elif self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise self._error() from None
            return
        # The scope swallows only its own cancellation, which happens at the deadline.
        if self._scope.__exit__(exc_type, exc, tb) or self._scope.cancelled_caught:
            raise self._error() from None  # pragma: no cover - Python 3.10

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
