"""What an invocation puts on the wire and what it makes of the reply: no I/O here."""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import quote

import attrs

from ._errors import (
    ErrorDetails,
    FunctionError,
    InvalidArgumentError,
    ResponseFormatError,
    error_from_response,
    snippet,
)
from ._protocol import ACCEPTED_REPLY, OPEN_API_JOB_PATH
from ._transport import RawResponse
from ._types import JSON, NOT_GIVEN, NotGiven

__all__ = ["InvokeResult"]


# Not frozen: building a frozen attrs instance costs four times as much, and one is built for
# every call of a fan-out. Treat it as a value all the same.
@attrs.define
class InvokeResult:
    """One invocation's outcome, as the server sent it: also when the function failed.

    Attributes:
        code: 0 when the function succeeded; anything else is a failed run.
        data: what the function returned (``{"status": "ok"}`` for ``sync=False``).
        error: the ``error`` object the server sent (``{}`` on success).
        raw: the reply body, byte for byte.
        status: the HTTP status.
        request_id: the server's request id, where it sends one.
    """

    code: int
    data: JSON
    error: dict[str, Any]
    raw: bytes = attrs.field(repr=False, eq=False)
    status: int = 200
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        """``code == 0``."""
        return self.code == 0

    def raise_for_code(self) -> InvokeResult:
        """Return self when ``code == 0``, else raise ``FunctionError`` with the function's
        message, stack and type."""
        if self.code != 0:
            raise FunctionError(self.code, self.error, request_id=self.request_id)
        return self


# One encoder for every call: json.dumps() builds a new one whenever it is given options.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as ``JSON.stringify`` writes it."""
    return _ENCODER.encode(value).encode()


def _encode_params(params: Any) -> Any:
    """Check that *params* is JSON; raises 605 naming what is wrong."""
    try:
        dumps(params)
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise InvalidArgumentError(f"params cannot be sent as JSON: {exc}") from None
    return params


def check_name(function_name: object) -> str:
    """The function name, or 605 when it is not a non-empty str, or is ``.`` or ``..``
    (in the Open API's URL path those would name another route, whatever the quoting)."""
    if not isinstance(function_name, str) or not function_name:
        raise InvalidArgumentError(f"function_name must be a non-empty str, not {function_name!r}")
    if function_name in (".", ".."):
        raise InvalidArgumentError(f"function_name {function_name!r} is not a function name")
    return function_name


def _check_keys(params: Any) -> None:
    """605 when a dict at any depth has a key that is not a str: JSON would turn it into a
    string silently, even into two equal keys (``{1: "a", "1": "b"}``). Run after the
    encoder accepted *params*: it has refused cycles and depths this walk could trip on."""
    todo = [params]
    while todo:  # no generators: this runs for every call of a fan-out
        value = todo.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidArgumentError(
                        f"params cannot be sent as JSON: dict keys must be str, not "
                        f"{type(key).__name__} ({key!r:.40})"
                    )
                if isinstance(item, _CONTAINERS):
                    todo.append(item)
        elif isinstance(value, _SEQUENCES):
            for item in value:
                if isinstance(item, _CONTAINERS):
                    todo.append(item)


_SEQUENCES: Final = (list, tuple)  # a tuple of types: isinstance() checks it faster than a union
_CONTAINERS: Final = (dict, list, tuple)


def check_sync(sync: object) -> bool:
    """*sync*, or 605 when it is not a bool."""
    if not isinstance(sync, bool):
        raise InvalidArgumentError(f"sync must be True or False, not {sync!r}")
    return sync


def client_api_body(function_name: str, params: JSON | NotGiven, sync: bool) -> bytes:
    """The client API's job body, fields in the JS SDK's order; ``data`` left out when no
    params were given (PROTOCOL.md §3.1)."""
    body: dict[str, Any] = {"function_name": function_name, "sync": sync}
    if params is not NOT_GIVEN:
        body["data"] = params
    try:
        encoded = dumps(body)  # serialised once: this runs for every call of a fan-out
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        if params is not NOT_GIVEN:
            _encode_params(params)  # raises when the params are what cannot be sent
        raise InvalidArgumentError(f"function_name cannot be sent as JSON: {exc}") from None
    _check_keys(params)
    return encoded


def open_api_path(function_name: str) -> str:
    """The Open API job path, the name quoted so that ``/`` cannot change the route."""
    return OPEN_API_JOB_PATH.format(name=quote(function_name, safe=""))


def open_api_body(params: JSON | NotGiven, sync: bool) -> bytes:
    """The Open API's job body: ``data`` is required there, ``{}`` when none was given."""
    try:
        encoded = dumps({"data": {} if params is NOT_GIVEN else params, "sync": sync})
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        _encode_params(params)  # names what cannot be sent
        raise
    _check_keys(params)
    return encoded


# One decoder for every reply: json.loads() checks its options on every call. NaN and
# Infinity are read as Python reads them (a login's ``expires_in`` of NaN is then ignored).
_DECODER: Final = json.JSONDecoder()


#: Above this size, a body whose first bytes cannot start JSON is not decoded at all.
_LARGE: Final = 64 * 1024
#: The bytes a JSON text can start with (after whitespace): a value, or a BOM.
_JSON_STARTS: Final = frozenset(b'{["-0123456789tfn\xef\xfe\xff')


def _may_be_json(body: bytes) -> bool:
    head = body[:64].lstrip()
    # UTF-16/32 put a NUL among the first 4 bytes; only whitespace so far decides nothing.
    return not head or head[0] in _JSON_STARTS or 0 in body[:4]


def parse_json(raw: RawResponse) -> Any:
    """The reply's JSON, or None when it is not JSON at all.

    Bounded whatever the body (already at most ``Limits.max_reply_bytes``): nesting too deep
    for the parser (``RecursionError``) and integers of more digits than Python converts
    (``ValueError``, 4,300 digits by default) make it "not JSON", like any other bad text.
    """
    body = raw.body
    if len(body) > _LARGE and not _may_be_json(body):
        return None  # a large page of HTML or text: not worth decoding many MiB to say so
    try:
        # UTF-8 first: json.loads(bytes) guesses the encoding in Python on every call.
        return _DECODER.decode(body.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    encoding = json.detect_encoding(body)  # from the first 4 bytes only
    if encoding == "utf-8":
        return None  # read as such above
    try:
        # A BOM, or UTF-16/32, as json.loads(bytes) reads them.
        return _DECODER.decode(body.decode(encoding, "surrogatepass"))
    except (ValueError, RecursionError):
        return None


def check_status(raw: RawResponse, method: str, path: str) -> None:
    """Raise the matching ``HTTPError`` for a non-2xx reply."""
    if not 200 <= raw.status < 300:
        raise error_from_response(
            raw.status,
            parse_json(raw),
            raw.body,
            request_id=raw.request_id,
            method=method,
            path=path,
            retry_after=raw.retry_after,
            location=raw.location,
        )


def parse_result(raw: RawResponse, *, sync: bool, method: str, path: str) -> InvokeResult:
    """Turn a 2xx job reply into an ``InvokeResult``.

    Both documented ``sync=False`` bodies, ``{"status":"ok"}`` and the envelope around it,
    give ``code == 0`` and ``data == {"status": "ok"}``. Anything that is not one of the
    documented shapes raises ``ResponseFormatError``: the JS SDK would hand the caller a raw
    string, which Python callers could only trip over later.
    """
    body = parse_json(raw)
    if isinstance(body, dict):
        code = body.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            error = body.get("error")
            return InvokeResult(
                code,
                body.get("data"),
                error if isinstance(error, dict) else {},
                raw.body,
                raw.status,
                raw.request_id,
            )
        if not sync and body == ACCEPTED_REPLY:
            return InvokeResult(
                code=0,
                data=dict(ACCEPTED_REPLY),
                error={},
                raw=raw.body,
                status=raw.status,
                request_id=raw.request_id,
            )
    raise ResponseFormatError(
        raw.status,
        _describe_bad_body(raw, body),
        details=ErrorDetails(
            status=raw.status,
            body=snippet(raw.body),
            request_id=raw.request_id,
            method=method,
            path=path,
        ),
        may_have_executed=True,
    )


def _describe_bad_body(raw: RawResponse, body: Any) -> str:
    kind = raw.content_type.split(";")[0].strip() or "no content type"
    if not raw.body:
        return f"invalid reply: empty body ({kind})"
    shown = snippet(raw.body, 80)
    if body is None and not _is_json_null(raw.body):
        return f"invalid reply: not JSON ({kind}): {shown!r}"
    if not isinstance(body, dict):
        return f"invalid reply: expected a JSON object, got {type(body).__name__}: {shown!r}"
    return f"invalid reply: JSON object without an integer 'code': {snippet(raw.body, 80)!r}"


def _is_json_null(body: bytes) -> bool:
    # parse_json gives None for both a JSON null and a body that is not JSON at all.
    return len(body) < 64 and body.strip() == b"null"
