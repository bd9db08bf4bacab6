"""One invocation from first try to result: its deadline, its retries and its hooks."""

from __future__ import annotations

import sys

import anyio

from ._deadline import Deadline
from ._errors import HError
from ._hooks import CallInfo, invocation_span, run_hook
from ._invoke import InvokeResult, check_status, parse_result
from ._logs import get_logger
from ._options import CallOptions
from ._secrets import detach_frames
from ._sender import Sender
from ._transport import Attempt

logger = get_logger()


async def traced_invocation(
    sender: Sender,
    options: CallOptions,
    info: CallInfo,
    path: str,
    body: bytes,
    sync: bool,
    deadline: float | None,
) -> InvokeResult:
    """``invocation`` inside an OpenTelemetry span."""
    with invocation_span(info):
        return await invocation(sender, options, info, path, body, sync, deadline)


async def invocation(
    sender: Sender,
    options: CallOptions,
    info: CallInfo | None,
    path: str,
    body: bytes,
    sync: bool,
    deadline: float | None,
) -> InvokeResult:
    """POST the job *body* to *path* until a result, a failure not worth retrying, or the
    *deadline* (seconds; None: none). *info* is None when no hook or span wants it."""
    attempt = Attempt()
    shown = "/" + path  # as error messages show it
    outer = sys.exc_info()[1]  # the caller's exception, if any: not ours to touch
    with Deadline(deadline, attempt, path, sender.timers) as bound:
        while True:
            if info is not None:
                info.attempt, info.status, info.code, info.error = attempt.number, None, None, None
                run_hook(options.on_request, info)
            try:
                raw = await sender.send("POST", path, body, attempt)
                if info is not None:  # hooks and spans show the request id: a server's text
                    info.status, info.request_id = raw.status, raw.request_id
                    if raw.request_id:
                        info.request_id = sender.auth.secrets.scrub(raw.request_id)
                check_status(raw, "POST", shown)
                result = parse_result(raw, sync=sync, method="POST", path=shown)
            except HError as err:
                # Before any hook, log or span sees it: no value the credentials hold, and
                # no frame below that holds the request's headers.
                sender.auth.secrets.scrub_error(err)
                detach_frames(err, outer)
                err.attempts = attempt.number
                err.may_have_executed = err.may_have_executed or attempt.sent_before
                if info is not None:
                    info.error = err
                    run_hook(options.on_response, info)
                wait = _retry_wait(options, err, attempt, sync, bound)
                if wait is None:
                    raise
                logger.debug(
                    "retrying %s in %.3f s after try %d failed: %s", path, wait, attempt.number, err
                )
                attempt.next(executed=err.may_have_executed)
                await anyio.sleep(wait)
            else:
                if info is not None:
                    info.code = result.code
                    run_hook(options.on_response, info)
                return result


def _retry_wait(
    options: CallOptions, err: HError, attempt: Attempt, sync: bool, bound: Deadline
) -> float | None:
    """How long to wait before trying *err*'s call again; None: do not."""
    retry = options.retry
    if attempt.number >= retry.attempts or not retry.should_retry(err, sync=sync):
        return None
    wait = retry.delay(attempt.number, getattr(err, "retry_after", None))
    if wait is None or wait >= bound.remaining():
        return None  # the server's pause, or the backoff, outlasts the deadline
    return wait
