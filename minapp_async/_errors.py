"""The exception tree.

Every failure the SDK reports is an :class:`HError`, shaped like the JS SDK's ``HError``:
``code`` is the HTTP status or a 6xx client code, and ``message`` is ``"<code>: <text>"``.
Subclasses also inherit the builtin that matches, so plain ``except TimeoutError:`` works::

    HError(Exception)                                  code, message, details
    ├── InvalidArgumentError(HError, ValueError)       605, raised before anything is sent
    ├── SessionClosedError(HError, RuntimeError)       602, the Session was closed
    ├── SessionMissingError(HError, PermissionError)   604, no usable login
    ├── NetworkError(HError, ConnectionError)          600, no answer could be had
    ├── RequestTimeoutError(HError, TimeoutError)      601, a deadline passed
    │   └── PoolTimeoutError                           601, no free connection in time
    ├── ResponseFormatError(HError)                    status, a 2xx body we cannot read
    ├── FunctionError(HError)                          result code, the function failed
    └── HTTPError(HError)                              status, the server said no
        ├── BadRequestError                            400
        ├── AuthenticationError(…, PermissionError)    401
        ├── ForbiddenError(…, PermissionError)         403
        ├── NotFoundError                              404
        ├── PayloadTooLargeError                       413
        ├── RateLimitError                             429
        └── ServerError                                5xx
"""

from __future__ import annotations

import datetime
import email.utils
import math
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from ._protocol import ERROR_MSG_FIELD, JOB_STATUS_FIELD, SCHEDULE_FAILED
from ._redact import redact_text

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ErrorDetails",
    "ForbiddenError",
    "FunctionError",
    "HError",
    "HTTPError",
    "InvalidArgumentError",
    "NetworkError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PoolTimeoutError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseFormatError",
    "ServerError",
    "SessionClosedError",
    "SessionMissingError",
    "error_from_response",
]

#: The JS SDK's default texts (core/HError.js, PROTOCOL.md §4.3). Other codes read "unknown error".
DEFAULT_TEXTS: Final[dict[int, str]] = {
    600: "network disconnected",
    601: "request timeout",
    602: "uninitialized",
    603: "unauthorized",
    604: "session missing",
    605: "incorrect parameter type",
    607: "payment cancelled",
    608: "payment failed",
    609: "wxExtend function should be executed to allow plugin use wx.login, "
    "wx.getUserInfo, wx.requestPayment",
    610: "errorTracker uninitialized",
    611: "unsupported function",
    612: "anonymous user is not allowed",
    613: "third party auth denied",
    614: "third party auth failed",
    615: 'gateway type "weixin_tenpay_js" works in WeChat builtin browser only',
    616: "please enable sdk update platform user info first",
    617: "multipart upload failed",
}

_SNIPPET_CHARS: Final = 200


def default_text(code: int) -> str:
    """The JS SDK's text for *code*, ``"unknown error"`` when it has none."""
    return DEFAULT_TEXTS.get(code, "unknown error")


def snippet(body: bytes | str, limit: int = _SNIPPET_CHARS) -> str:
    """A short, redacted, printable piece of a reply body for error messages.

    Cut first, then decoded and redacted: a reply of many MiB costs no more than its first
    few hundred bytes (the redaction patterns also match a secret the cut leaves open)."""
    body = body[: limit * 4 + 64]  # enough for *limit* characters of UTF-8, and a margin
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = redact_text(text)
    return text if len(text) <= limit else text[:limit] + "…"


@attrs.frozen
class ErrorDetails:
    """What is known about the exchange that failed; every field may be missing."""

    status: int | None = None
    body: str = ""  # a short, redacted snippet, never the whole reply
    request_id: str | None = None
    method: str | None = None
    path: str | None = None  # the URL path only: no host, no query


class HError(Exception):
    """The root of every error the SDK raises, shaped like the JS SDK's ``HError``.

    Attributes:
        code: the HTTP status, or a 6xx client code (table in the README).
        message: ``"<code>: <text>"``, exactly as the JS SDK words it.
        details: status, body snippet, request id and path, where known.
        attempts: how many times the request was sent (retries included).
        may_have_executed: True when the request reached the server and the function may have
            run: a retry could run it twice.
    """

    code: int
    message: str

    def __init__(
        self,
        code: int,
        text: str | None = None,
        *,
        details: ErrorDetails | None = None,
        attempts: int = 1,
        may_have_executed: bool = False,
    ) -> None:
        self.code = code
        self.text = text or default_text(code)
        self.message = f"{code}: {self.text}"
        self.details = details or ErrorDetails()
        self.attempts = attempts
        self.may_have_executed = may_have_executed
        super().__init__(self.message)

    def __str__(self) -> str:
        d = self.details
        extra = []
        if d.method and d.path:
            extra.append(f"{d.method} {d.path}")
        if d.status is not None and d.status != self.code:
            extra.append(f"HTTP {d.status}")
        if d.request_id:
            extra.append(f"request id {d.request_id}")
        if d.body and self.text == default_text(self.code):  # the body is all there is
            extra.append(f"body {d.body!r}")
        return f"{self.message} ({'; '.join(extra)})" if extra else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps errors picklable (multiprocessing, logging handlers) despite keyword fields.
        return (_rebuild, (type(self), self.code, self.text, self.__dict__))


def _rebuild(cls: type[HError], code: int, text: str, state: dict[str, Any]) -> HError:
    err = cls.__new__(cls)
    HError.__init__(err, code, text)
    err.__dict__.update(state)
    return err


class InvalidArgumentError(HError, ValueError):
    """An argument is invalid (605). Raised before anything is sent."""

    def __init__(self, text: str) -> None:
        # The JS text stays in front, so "605: incorrect parameter type" is still the prefix.
        super().__init__(605, f"{default_text(605)}: {text}")


class SessionClosedError(HError, RuntimeError):
    """The Session was used after ``aclose()`` (602, as the JS SDK's "uninitialized")."""

    def __init__(self, text: str = "the Session is closed") -> None:
        super().__init__(602, text)


class SessionMissingError(HError, PermissionError):
    """There is no usable login: none was made, or it has expired (604)."""

    def __init__(self, text: str | None = None, **kw: Any) -> None:
        super().__init__(604, text, **kw)


class NetworkError(HError, ConnectionError):
    """The server could not be reached or dropped the connection (600)."""

    def __init__(self, text: str | None = None, **kw: Any) -> None:
        super().__init__(600, text, **kw)


class RequestTimeoutError(HError, TimeoutError):
    """A deadline passed before the answer came (601)."""

    def __init__(self, text: str | None = None, **kw: Any) -> None:
        super().__init__(601, text, **kw)


class PoolTimeoutError(RequestTimeoutError):
    """No pooled connection became free in time (601); the request was never sent."""


class ResponseFormatError(HError):
    """A 2xx reply whose body is not what the protocol promises (code: the HTTP status)."""


class FunctionError(HError):
    """The cloud function ran and failed (``code != 0``); raised by ``raise_for_code()``.

    Attributes:
        error: the ``error`` object the server sent.
        error_message, stack, type: its fields, empty when the server left them out.
    """

    def __init__(self, code: int, error: dict[str, Any], *, request_id: str | None = None) -> None:
        self.error = error
        self.error_message = str(error.get("message") or "")
        self.stack = str(error.get("stack") or "")
        self.type = str(error.get("type") or "")
        text = f"{self.type}: {self.error_message}" if self.type else self.error_message
        super().__init__(
            code,
            text or "cloud function failed",
            details=ErrorDetails(status=200, request_id=request_id),
            may_have_executed=True,
        )


class HTTPError(HError):
    """The server answered with a non-2xx status; ``code`` is that status.

    ``retry_after`` is the server's ``Retry-After`` hint in seconds, where it sent one;
    ``job_status`` the job status the reply names (``schedule_failed``: the function never
    started), where it names one.
    """

    retry_after: float | None = None
    job_status: str | None = None


class BadRequestError(HTTPError):
    """400: bad parameters, or the job could not be scheduled or finished in time."""


class AuthenticationError(HTTPError, PermissionError):
    """401: the token is missing, invalid or expired."""


class ForbiddenError(HTTPError, PermissionError):
    """403: the caller may not do this (for example an anonymous user invoking)."""


class NotFoundError(HTTPError):
    """404: no such function, user or path."""


class PayloadTooLargeError(HTTPError):
    """413: the request body is larger than the server accepts."""


class RateLimitError(HTTPError):
    """429: too many requests; ``retry_after`` is the server's hint in seconds, if any."""


class ServerError(HTTPError):
    """5xx: the server failed."""


_BY_STATUS: Final[dict[int, type[HTTPError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def error_text(body: Any) -> str | None:
    """The error text of a reply body, as the JS SDK's ``extractErrorMsg``: ``error_msg``
    first, then ``message``."""
    if isinstance(body, dict):
        for key in (ERROR_MSG_FIELD, "message"):
            value = body.get(key)
            if value:
                return str(value)
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None  # not a date, or one out of datetime's range (year 10**20)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        try:
            seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        except OverflowError:
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _redirect_text(status: int, location: str | None) -> str:
    """Why a 3xx reply is an error: where it pointed, as an origin only (a Location's path
    and query may carry a code)."""
    where = "without a Location"
    if location:
        try:
            parts = urlsplit(location)
            host, port = parts.hostname, parts.port
        except ValueError:  # a port that is not a number, a malformed IPv6 host
            where = "to an invalid Location"
        else:
            where = "to another path on the same server"
            if parts.netloc:
                where = f"to {parts.scheme}://{host}{f':{port}' if port else ''}"
    return (
        f"redirect refused (HTTP {status} {where}): only the Open API authorize step follows "
        "redirects, and only same-origin 302/303 ones; if the server has moved, point "
        "base_url at where it points"
    )


def error_from_response(
    status: int,
    body: Any,
    raw: bytes,
    *,
    request_id: str | None = None,
    method: str | None = None,
    path: str | None = None,
    retry_after: str | None = None,
    location: str | None = None,
) -> HTTPError:
    """The one place that turns a non-2xx reply into an exception.

    *body* is the parsed JSON (or None when the reply was not JSON); the text comes from it,
    else from the JS SDK's table (``"500: unknown error"``). A 3xx reply is a redirect that
    was not followed (*location*: where it pointed); its text says so.
    """
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else HTTPError)
    details = ErrorDetails(
        status=status, body=snippet(raw), request_id=request_id, method=method, path=path
    )
    text = _redirect_text(status, location) if 300 <= status < 400 else error_text(body)
    job_status = body.get(JOB_STATUS_FIELD) if isinstance(body, dict) else None
    job_status = job_status if isinstance(job_status, str) else None
    # Statuses that refuse the request before any function runs; the rest may have run it.
    refused = status in (401, 403, 404, 405, 413, 429, 503) or job_status == SCHEDULE_FAILED
    err = cls(
        status, redact_text(text) if text else None, details=details, may_have_executed=not refused
    )
    err.retry_after = parse_retry_after(retry_after)
    err.job_status = job_status
    return err
