"""When a failed invocation may be sent again, and how long to wait first. Pure functions.

The rule: retry only failures that show the function did not run. A request that never left
(connection refused, DNS or TLS failure, no free pooled connection) and a server that said "not
now" (429, 503, a job that could not be scheduled) are safe to send again. Anything after the
body went out may have run the function, and a sync invoke is re-sent then only when the caller
opted in with ``Retry(retry_executed=True)``; a ``sync=False`` job never is.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from ._errors import HError, HTTPError, NetworkError, PoolTimeoutError, RequestTimeoutError
from ._protocol import SCHEDULE_FAILED

__all__ = ["Retry"]

#: Statuses worth another try once the server recovers or the rate limit passes.
RETRY_STATUSES = frozenset({429, 503})


def _check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, not {value!r}")


@attrs.frozen
class Retry:
    """How failed invocations are retried; always bounded by the call's deadline too.

    Args:
        attempts: tries in all, the first included (1 turns retries off).
        backoff_initial: the first backoff's upper bound, in seconds; it doubles each time.
        backoff_max: the largest backoff.
        retry_after_max: the longest ``Retry-After`` honoured; a longer hint ends the retries.
        retry_executed: also re-send a sync invoke whose request may have reached the server
            (a timeout or a dropped connection after sending, a 500/502/504). The function may
            then run twice: only for idempotent functions.
    """

    attempts: int = attrs.field(default=3, validator=_check)
    backoff_initial: float = attrs.field(default=0.2, validator=_check)
    backoff_max: float = attrs.field(default=5.0, validator=_check)
    retry_after_max: float = attrs.field(default=30.0, validator=_check)
    retry_executed: bool = False

    def should_retry(self, err: HError, *, sync: bool) -> bool:
        """Whether *err* may be answered by sending the same invocation again."""
        if isinstance(err, PoolTimeoutError):
            return True
        if isinstance(err, HTTPError):
            if err.code in RETRY_STATUSES or err.job_status == SCHEDULE_FAILED:
                return True
            return sync and self.retry_executed and err.code in (500, 502, 504)
        if isinstance(err, NetworkError | RequestTimeoutError):
            if not err.may_have_executed:
                return True
            return sync and self.retry_executed
        return False

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before try number ``attempt + 1``; None when the server asked for
        a longer pause than ``retry_after_max``."""
        if retry_after is not None:
            return retry_after if retry_after <= self.retry_after_max else None
        # Full jitter (AWS architecture blog): spreads a crowd of retries evenly.
        cap = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return random.uniform(0, cap)


DEFAULT_RETRY = Retry()
