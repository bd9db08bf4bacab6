"""A JS-style promise over a coroutine, for code ported from mini-programs.

``await promise`` gives the value; ``.then(ok, err)``, ``.catch(err)`` and ``.finally_(fn)``
each return a new ``Promise``. Unlike a JS promise, nothing runs until the chain is awaited (like
any coroutine), so no task is ever scheduled behind the caller's back: cancelling the awaiting
task cancels the HTTP request underneath. A promise runs at most once; awaiting it again, from
any number of tasks, gives the same outcome.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeAlias, TypeVar, overload

__all__ = ["Promise"]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")

_PENDING, _RUNNING, _DONE = range(3)

_Ok: TypeAlias = Callable[[T], U]
_AsyncOk: TypeAlias = Callable[[T], Awaitable[U]]
_Err: TypeAlias = Callable[[Exception], V]
_AsyncErr: TypeAlias = Callable[[Exception], Awaitable[V]]


async def _call(handler: Callable[..., Any], *args: Any) -> Any:
    """Call a plain or async handler and return its (awaited) value."""
    value = handler(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


class Promise(Generic[T]):
    """An awaitable with ``then``/``catch``/``finally_``, as ``BaaS.invoke`` returns in JS.

    Handlers may be plain or async functions. A handler's return value feeds the next step; an
    exception goes to the next rejection handler; a rejection handler's return value recovers
    the chain. Rejection handlers see ``Exception`` only: cancellation always propagates.
    """

    __slots__ = ("_coro", "_done", "_error", "_state", "_value")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._state = _PENDING
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done: asyncio.Event | None = None  # made only when a second awaiter shows up

    def __repr__(self) -> str:
        state = ("pending", "running", "settled")[self._state]
        return f"<Promise {state}>"

    def __await__(self) -> Generator[Any, None, T]:
        return self._result().__await__()

    async def _result(self) -> T:
        if self._state == _PENDING:
            self._state = _RUNNING
            try:
                self._value = await self._coro
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._state = _DONE
                self._coro = None  # type: ignore[assignment]  # drop references early
                if self._done is not None:
                    self._done.set()
            return self._value
        if self._state == _RUNNING:
            if self._done is None:
                self._done = asyncio.Event()
            await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    # Async handlers are matched first, so that mypy sees through their coroutines.
    @overload
    def then(self, on_fulfilled: _AsyncOk[T, U], on_rejected: None = None) -> Promise[U]: ...
    @overload
    def then(self, on_fulfilled: _Ok[T, U], on_rejected: None = None) -> Promise[U]: ...
    @overload
    def then(self, on_fulfilled: _AsyncOk[T, U], on_rejected: _AsyncErr[V]) -> Promise[U | V]: ...
    @overload
    def then(self, on_fulfilled: _AsyncOk[T, U], on_rejected: _Err[V]) -> Promise[U | V]: ...
    @overload
    def then(self, on_fulfilled: _Ok[T, U], on_rejected: _AsyncErr[V]) -> Promise[U | V]: ...
    @overload
    def then(self, on_fulfilled: _Ok[T, U], on_rejected: _Err[V]) -> Promise[U | V]: ...
    @overload
    def then(self, on_fulfilled: None, on_rejected: _AsyncErr[V]) -> Promise[T | V]: ...
    @overload
    def then(self, on_fulfilled: None, on_rejected: _Err[V]) -> Promise[T | V]: ...
    def then(
        self,
        on_fulfilled: Callable[[T], Any] | None,
        on_rejected: Callable[[Exception], Any] | None = None,
    ) -> Promise[Any]:
        """A new promise: *on_fulfilled* gets the value, *on_rejected* the exception."""
        return Promise(self._then(on_fulfilled, on_rejected))

    async def _then(
        self,
        on_fulfilled: Callable[[T], Any] | None,
        on_rejected: Callable[[Exception], Any] | None,
    ) -> Any:
        try:
            value = await self
        except Exception as exc:
            if on_rejected is None:
                raise
            return await _call(on_rejected, exc)
        return value if on_fulfilled is None else await _call(on_fulfilled, value)

    @overload
    def catch(self, on_rejected: _AsyncErr[V]) -> Promise[T | V]: ...
    @overload
    def catch(self, on_rejected: _Err[V]) -> Promise[T | V]: ...
    def catch(self, on_rejected: Callable[[Exception], Any]) -> Promise[Any]:
        """``then(None, on_rejected)``."""
        return self.then(None, on_rejected)

    def finally_(self, on_finally: Callable[[], Any]) -> Promise[T]:
        """A new promise that runs *on_finally* (plain or async, no argument) either way and
        then settles like this one; an exception from *on_finally* replaces the outcome."""
        return Promise(self._finally(on_finally))

    async def _finally(self, on_finally: Callable[[], Any]) -> T:
        try:
            return await self
        finally:
            await _call(on_finally)
