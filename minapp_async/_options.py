"""Immutable option objects: cheap to copy per call, changed only through ``attrs.evolve``."""

from __future__ import annotations

from typing import Any

import attrs

from ._constants import (
    ACK_DEADLINE,
    CONNECT_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    MAX_CONNECTIONS,
    SYNC_DEADLINE,
)


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
    ):
        raise ValueError(f"{attribute.name} must be a positive number or None, not {value!r}")


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
    """

    max_connections: int = attrs.field(default=MAX_CONNECTIONS)
    max_connections_per_host: int = 0
    keepalive_timeout: float = KEEPALIVE_TIMEOUT

    @max_connections.validator
    def _check(self, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"max_connections must be an int >= 0, not {value!r}")

    @property
    def pool_size(self) -> int:
        """Connections one host can have at once (0 = unbounded)."""
        sizes = [n for n in (self.max_connections, self.max_connections_per_host) if n > 0]
        return min(sizes) if sizes else 0


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_LIMITS = Limits()
