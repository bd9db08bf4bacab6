"""Immutable option objects and the checks that guard them (every 605 about an option).

Options are cheap to copy per call and changed only through ``attrs.evolve``.
``CallOptions`` is what a Session view may change; the rest is shared with its Session.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from ._constants import (
    ACK_DEADLINE,
    CLIENT_VERSION,
    CONNECT_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_DEADLINE,
    MAX_REPLY_BYTES,
    SDK_TYPE,
    SYNC_DEADLINE,
    USER_AGENT,
)
from ._errors import InvalidArgumentError
from ._hooks import Hook
from ._protocol import (
    CLIENT_ID_HEADER,
    CLIENT_PLATFORM_HEADER,
    CLIENT_SDK_TYPE_HEADER,
    CLIENT_VERSION_HEADER,
    ENV_ID_HEADER,
)
from ._retry import Retry
from ._types import NOT_GIVEN, NotGiven

_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}
#: What would end a header line early, or let a value smuggle in a header of its own.
_BREAKS_HEADER: Final = re.compile(r"[\r\n\x00]")
#: RFC 9110's token: what a header name may be made of.
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _is_seconds(value: object) -> bool:
    """A positive, finite number of seconds up to ``MAX_DEADLINE`` (NaN fails ``> 0``)."""
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and 0 < value <= MAX_DEADLINE
    )


def _shown(value: object) -> str:
    # repr() of a 400-digit int is a wall of digits (and past 4,300 digits an error itself).
    if isinstance(value, int) and abs(value) > MAX_DEADLINE:
        return f"an int of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not _is_seconds(value):
        raise InvalidArgumentError(
            f"{attribute.name} must be a positive number of seconds up to {MAX_DEADLINE:g} "
            f"or None, not {_shown(value)}"
        )


@attrs.frozen
class Timeouts:
    """Client deadlines, in seconds; ``None`` means no limit.

    Args:
        sync: the whole of a ``sync=True`` invoke (pool wait, auth, send, read). The platform
            gives a sync function 5 s; the default adds a 5 s margin.
        ack: the whole of a ``sync=False`` invoke, which only waits for the acknowledgement.
        connect: opening one TCP/TLS connection.
        pool: waiting for a free pooled connection; ``None`` lets the call's deadline bound it.
            Either way a call that times out there raises ``PoolTimeoutError``.
    """

    sync: float | None = attrs.field(default=SYNC_DEADLINE, validator=_positive_or_none)
    ack: float | None = attrs.field(default=ACK_DEADLINE, validator=_positive_or_none)
    connect: float | None = attrs.field(default=CONNECT_TIMEOUT, validator=_positive_or_none)
    pool: float | None = attrs.field(default=None, validator=_positive_or_none)

    def for_mode(self, sync: bool) -> float | None:
        """The deadline of one invoke in that mode."""
        return self.sync if sync else self.ack


@attrs.frozen
class Limits:
    """The connection pool.

    Args:
        max_connections: open connections at most, over all hosts (0 = no limit).
        max_connections_per_host: at most to one host (0 = only the total applies).
        keepalive_timeout: how long an idle connection is kept for reuse.
        max_reply_bytes: the largest reply body read (default 32 MiB), counted on the wire
            and again after decompression. A larger reply fails with ``ResponseFormatError``
            (code: the HTTP status, ``may_have_executed=True``) and its connection is dropped.
    """

    max_connections: int = attrs.field(default=MAX_CONNECTIONS)
    max_connections_per_host: int = 0
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    max_reply_bytes: int = attrs.field(default=MAX_REPLY_BYTES)

    @max_connections.validator
    def _check(self, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"max_connections must be an int >= 0, not {value!r}")

    @max_reply_bytes.validator
    def _check_reply(self, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**40:
            raise InvalidArgumentError(
                f"max_reply_bytes must be an int of bytes > 0 (below 1 TiB), not {_shown(value)}"
            )

    @property
    def pool_size(self) -> int:
        """Connections one host can have at once (0 = unbounded)."""
        sizes = [n for n in (self.max_connections, self.max_connections_per_host) if n > 0]
        return min(sizes) if sizes else 0


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_LIMITS = Limits()


# -- the checks behind InvalidArgumentError (605) ----------------------------------------------


def check_str(name: str, value: object, *, optional: bool = True) -> None:
    """605 unless *value* is a non-empty str without CR, LF or NUL (or None, when
    *optional*): every such str ends up in a header or a URL, where those split the request."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name} must be a non-empty str, not {type(value).__name__}")
    if _BREAKS_HEADER.search(value):
        raise InvalidArgumentError(f"{name} must not contain CR, LF or NUL")


def check_base_url(value: str) -> None:
    """605 unless *value* is an ``http://`` or ``https://`` URL with a host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(
            f"base_url must start with http:// or https:// and name a host, not {value!r} "
            "(for the local engine: http://127.0.0.1:<port>)"
        )


def check_timeout(value: object) -> None:
    """605 unless *value* is a positive, finite number of seconds, at most a week."""
    if not _is_seconds(value):
        raise InvalidArgumentError(
            f"timeout must be a positive number of seconds up to {MAX_DEADLINE:g} or None, "
            f"not {_shown(value)}"
        )


def check_call_timeout(value: object) -> None:
    """605 for a per-call ``timeout`` that is neither left out, None nor a positive number."""
    if value is not NOT_GIVEN and value is not None:
        check_timeout(value)


def timeouts_of(value: Timeouts | float | None) -> Timeouts:
    """A ``timeout=`` argument as ``Timeouts``: one number (or None) sets both modes."""
    if isinstance(value, Timeouts):
        return value
    if value is not None:
        check_timeout(value)
    return Timeouts(sync=value, ack=value)


def limits_of(value: object) -> Limits:
    """A ``limits=`` argument, checked."""
    if not isinstance(value, Limits):
        raise InvalidArgumentError("limits must be a Limits")
    return value


def hook_of(name: str, value: object) -> Hook | None:
    """An ``on_request``/``on_response`` argument, checked."""
    if value is not None and not callable(value):
        raise InvalidArgumentError(f"{name} must be callable or None")
    return value


def retry_of(value: object) -> Retry:
    """A ``retry=`` argument, checked."""
    if not isinstance(value, Retry):
        raise InvalidArgumentError(f"retry must be a Retry, not {type(value).__name__}")
    return value


def headers_of(value: Mapping[str, str] | None) -> Mapping[str, str]:
    """A ``headers=`` argument as a private dict; None is no extra headers. Names must be
    HTTP tokens and values free of CR, LF and NUL: no header injection."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgumentError("headers must be a mapping of str to str")
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidArgumentError(f"header name {name!r} is not a valid HTTP header name")
        if _BREAKS_HEADER.search(text):
            raise InvalidArgumentError(f"header {name!r} must not contain CR, LF or NUL")
    return dict(value)


@attrs.frozen
class CallOptions:
    """What a view (``with_options``) may change: everything else is shared with the Session
    it came from. Built only through ``of`` and ``changed``, which check every value."""

    base_url: str
    env_id: str | None
    timeouts: Timeouts
    headers: Mapping[str, str]
    platform: str
    retry: Retry
    on_request: Hook | None = None
    on_response: Hook | None = None
    tracing: bool = False

    @classmethod
    def of(
        cls,
        *,
        base_url: str,
        env_id: str | None,
        timeout: Timeouts | float | None,
        headers: Mapping[str, str] | None,
        platform: str,
        retry: Retry,
        on_request: Hook | None,
        on_response: Hook | None,
        tracing: bool,
    ) -> CallOptions:
        """The options a Session is made with (its ``str`` arguments checked by the caller)."""
        check_str("platform", platform, optional=False)
        return cls(
            base_url=base_url,
            env_id=env_id,
            timeouts=timeouts_of(timeout),
            headers=headers_of(headers),
            platform=platform,
            retry=retry_of(retry),
            on_request=hook_of("on_request", on_request),
            on_response=hook_of("on_response", on_response),
            tracing=bool(tracing),
        )

    def changed(
        self,
        *,
        timeout: Timeouts | float | None | NotGiven = NOT_GIVEN,
        env_id: str | None | NotGiven = NOT_GIVEN,
        headers: Mapping[str, str] | None | NotGiven = NOT_GIVEN,
        platform: str | NotGiven = NOT_GIVEN,
        retry: Retry | NotGiven = NOT_GIVEN,
        on_request: Hook | None | NotGiven = NOT_GIVEN,
        on_response: Hook | None | NotGiven = NOT_GIVEN,
        tracing: bool | NotGiven = NOT_GIVEN,
    ) -> CallOptions:
        """A copy with the given options replaced, each checked as ``Session()`` checks it."""
        changes: dict[str, Any] = {}
        if timeout is not NOT_GIVEN:
            changes["timeouts"] = timeouts_of(timeout)
        if env_id is not NOT_GIVEN:
            check_str("env_id", env_id)
            changes["env_id"] = env_id
        if headers is not NOT_GIVEN:
            changes["headers"] = headers_of(headers)
        if platform is not NOT_GIVEN:
            check_str("platform", platform, optional=False)
            changes["platform"] = platform
        if retry is not NOT_GIVEN:
            changes["retry"] = retry_of(retry)
        if on_request is not NOT_GIVEN:
            changes["on_request"] = hook_of("on_request", on_request)
        if on_response is not NOT_GIVEN:
            changes["on_response"] = hook_of("on_response", on_response)
        if tracing is not NOT_GIVEN:
            changes["tracing"] = bool(tracing)
        return attrs.evolve(self, **changes)

    @property
    def observed(self) -> bool:
        """Hooks or tracing are on: calls then build a ``CallInfo``."""
        return bool(self.on_request or self.on_response or self.tracing)

    def fixed_headers(self, client_id: str, server: bool) -> dict[str, str]:
        """What every request in this mode carries: the transport sends these by default."""
        if server:
            return {"User-Agent": USER_AGENT, **_JSON_HEADERS}
        # PROTOCOL.md §2: sent on every client API request, names exactly as written.
        return {
            CLIENT_ID_HEADER: client_id,
            CLIENT_VERSION_HEADER: CLIENT_VERSION,
            CLIENT_PLATFORM_HEADER: self.platform,
            CLIENT_SDK_TYPE_HEADER: SDK_TYPE,
            "User-Agent": USER_AGENT,
            **_JSON_HEADERS,
        }

    def headers_beyond(
        self, client_id: str, server: bool, defaults: Mapping[str, str]
    ) -> dict[str, str]:
        """These options' headers less those the transport already sends (*defaults*). Every
        default name is among them, so what aiohttp merges per request is exactly these."""
        headers = self.fixed_headers(client_id, server)
        if self.env_id is not None:
            headers[ENV_ID_HEADER] = self.env_id
        headers.update(self.headers)
        return {name: value for name, value in headers.items() if defaults.get(name) != value}
