"""The deadline that bounds a whole call, and the timeout error that says where the call was.

A deadline is an anyio cancel scope with a deadline: anyio delivers its cancellation, so a
shielded scope inside the call (a token store's I/O, a user's clean-up) runs to its end, and it
behaves the same on every Python version the package supports. When the scope catches its own
cancellation, the call fails with ``PoolTimeoutError`` or ``RequestTimeoutError`` naming the
phase it was in.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING, Final

import anyio

from ._errors import ErrorDetails, PoolTimeoutError, RequestTimeoutError
from ._transport import Attempt

if TYPE_CHECKING:
    from typing_extensions import Self

_WHERE: Final = {
    "pool": "waiting for a connection",
    "auth": "logging in",
    "send": "waiting for the reply",
}


class Deadline:
    """Bounds a whole call. A timeout says where the call was (pool, auth or send) and whether
    the request may have reached the server. ``None`` seconds: no deadline."""

    __slots__ = ("_attempt", "_method", "_path", "_scope", "_seconds")

    _scope: anyio.CancelScope | None

    def __init__(
        self, seconds: float | None, attempt: Attempt, path: str, method: str = "POST"
    ) -> None:
        self._seconds = seconds
        self._attempt = attempt
        self._path = path
        self._method = method
        self._scope = None

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        if self._scope is None:
            return math.inf
        return self._scope.deadline - anyio.current_time()

    def __enter__(self) -> Self:
        if self._seconds is not None:
            self._scope = anyio.CancelScope(deadline=anyio.current_time() + self._seconds)
            self._scope.__enter__()
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
        # The scope swallows only its own cancellation, which happens at the deadline; any
        # other cancellation (the caller's, an outer scope's) passes through untouched.
        if scope.__exit__(exc_type, exc, tb) or scope.cancelled_caught:
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
