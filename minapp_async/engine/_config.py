"""The engine's settings: one frozen value object with documented defaults."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import attrs

from .._protocol import ASYNC_TIME_LIMIT, SYNC_TIME_LIMIT

#: Fixed, documented defaults so the demo (and the SDK's examples) need no setup. They are
#: local-only credentials: the engine binds 127.0.0.1 unless told otherwise.
DEFAULT_CLIENT_ID: Final = "1a2b3c4d5e6f7a8b9c0d"
DEFAULT_CLIENT_SECRET: Final = "local-engine-client-secret"
#: A made-up app id, shaped like the platform's (event.miniappId is a number).
DEFAULT_MINIAPP_ID: Final = 10000
MiB: Final = 1024 * 1024


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _non_empty(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    # One name given alone is one name, not its characters.
    items = (value,) if isinstance(value, str) else tuple(value)
    names = tuple(str(item).strip() for item in items)
    if any(not name for name in names):
        raise ValueError("host names and origins must not be empty")
    return names


def _client_id(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not value.strip():
        raise ValueError("client_id must not be empty (None serves any client id)")


def _port(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"port must be in 0..65535, got {value!r}")


def _host(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError("host must not be empty")
    # A host name ("localhost") is fine too; only catch obvious garbage such as "1.2.3".
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if any(c.isspace() or c in "/:" for c in value):
            raise ValueError(f"host is not an IP address or host name: {value!r}") from None


@attrs.frozen(kw_only=True)
class EngineConfig:
    """How the local engine serves, which functions it runs, and its limits.

    Attributes:
        functions_dir: Folder of cloud functions (``name.js``, ``name/index.js``, ``name.py``).
        host, port: Where to listen; port 0 picks a free port (read it from ``Engine.url``).
        client_id: None (the default) serves any ``X-Hydrogen-Client-ID`` an app sends, so a
            front-end keeps its real id; a string pins the engine to that one id. The Open
            API's OAuth flow checks the id against the pin when there is one.
        client_secret: The app's secret: the Open API's OAuth flow checks it.
        allowed_hosts: ``Host`` names served besides loopback ones (localhost, 127.0.0.0/8,
            [::1]) and the bound address; ``"*"`` serves any. Others get 403 (a defence
            against DNS rebinding).
        cors_origins: Browser origins allowed besides loopback ones (``http://localhost:5173``,
            ``http://127.0.0.1:8080``...); ``"*"`` allows any. Requests from other origins get
            403 and their preflights no CORS headers.
        idle_timeout: Seconds a connection may stay without a complete request (idle
            keep-alive, or headers arriving too slowly) before it is closed.
        allow_anonymous: Let anonymous users invoke functions (the platform's console switch).
        sync_time_limit, async_time_limit: Seconds a job may run (platform: 5 s / 300 s).
        memory_limit_mb: Per-worker memory limit.
        concurrency: Jobs running at once; further sync jobs wait ``schedule_wait`` seconds
            for a slot, then fail to schedule; async jobs queue.
        max_body_bytes: Larger request bodies get 413.
        session_ttl, access_token_ttl: Lifetimes (s) of user tokens and Open API tokens.
        miniapp_id: ``event.miniappId``.
        node: Node.js executable; None looks ``node`` up on PATH.
        contain_functions: Run each worker contained (Linux: own pid, mount and network
            namespaces, private /tmp, its whole process tree under one memory limit). Where
            the OS cannot, the engine runs functions anyway and logs once what is not
            enforced; False turns containment off (``serve --no-contain``).
        state: The engine's SQLite state file (data tables and the outbox live there), or
            ``":memory:"`` (the default) to keep nothing after the engine stops.
        strict_tables: Unknown tables are a 404 (and unknown fields a 400), as on the
            platform, where tables are made in the console. By default a function's first
            write to an unknown table creates it.
    """

    functions_dir: Path = attrs.field(converter=Path)
    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=0, validator=_port)
    client_id: str | None = attrs.field(default=None, validator=_client_id)
    client_secret: str = attrs.field(
        default=DEFAULT_CLIENT_SECRET, repr=False, validator=_non_empty
    )
    allow_anonymous: bool = False
    sync_time_limit: float = attrs.field(default=SYNC_TIME_LIMIT, validator=_positive)
    async_time_limit: float = attrs.field(default=ASYNC_TIME_LIMIT, validator=_positive)
    memory_limit_mb: int = attrs.field(default=256, validator=_positive)
    concurrency: int = attrs.field(default=10, validator=_positive)
    schedule_wait: float = attrs.field(default=2.0, validator=_non_negative)
    max_body_bytes: int = attrs.field(default=1 * MiB, validator=_positive)
    session_ttl: int = attrs.field(default=2592000, validator=_positive)
    access_token_ttl: int = attrs.field(default=31535999, validator=_positive)
    miniapp_id: int = DEFAULT_MINIAPP_ID
    node: str | None = None
    contain_functions: bool = True
    state: str = attrs.field(default=":memory:", converter=str, validator=_non_empty)
    strict_tables: bool = False
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_names)
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=_names)
    idle_timeout: float = attrs.field(default=30.0, validator=_positive)
