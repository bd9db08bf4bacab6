"""``minapp-async invoke``: call one cloud function and print its result as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._constants import ACK_DEADLINE, SYNC_DEADLINE
from .._protocol import ASYNC_TIME_LIMIT
from ._options import (
    EXIT_ERROR,
    EXIT_FUNCTION_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    AppSettings,
    Command,
    UsageError,
    add_app_arguments,
    parse_json,
    positive_number,
    resolve_app,
)
from ._output import Style, is_tty, run_async, say

if TYPE_CHECKING:
    from .._errors import HError
    from .._invoke import InvokeResult

__all__ = ["INVOKE", "read_params"]

_EPILOG: Final = """\
examples:
  minapp-async invoke helloWorld --params '{"name": "allen"}'
  minapp-async invoke helloWorld --params @params.json --env 0a1b2c3d
  echo '{"name": "allen"}' | minapp-async invoke helloWorld --params @-
  minapp-async invoke report --async        # returns once the job is accepted

The result is printed as JSON, {"code": ..., "data": ..., "error": ...}, one line when piped.
exit status: 0 ok; 1 the call failed (network, HTTP status, deadline); 2 bad usage;
3 the function ran and failed (code != 0: the result is still printed).
"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the cloud function's name")
    parser.add_argument(
        "--params",
        metavar="JSON",
        help="what the function gets as event.data: JSON text, @FILE, or @- for standard "
        "input (default: none is sent)",
    )
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="don't wait for the result: return once the job is accepted (the function "
        f"may then run for up to {ASYNC_TIME_LIMIT:g} s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_number,
        metavar="S",
        help=f"seconds to wait for the reply (default: {SYNC_DEADLINE:g} with sync, "
        f"{ACK_DEADLINE:g} with --async)",
    )
    add_app_arguments(parser)


def read_params(text: str) -> Any:
    """The value of ``--params``: JSON text, ``@FILE`` or ``@-``; UsageError when unusable."""
    source = "--params"
    if text.startswith("@"):
        where = text[1:]
        source = f"--params {text}"
        try:
            text = sys.stdin.read() if where == "-" else Path(where).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise UsageError(f"{source}: cannot read {where!r}: {reason}") from None
    return parse_json(text, source)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = resolve_app(args)
        params = read_params(args.params) if args.params is not None else None
    except UsageError as exc:
        say("error", str(exc))
        return EXIT_USAGE
    for note in settings.notes:
        say("warning", note)
    return run_async(
        _invoke(
            settings,
            args.name,
            params,
            has_params=args.params is not None,
            sync=not args.asynchronous,
            timeout=args.timeout,
        )
    )


async def _invoke(
    settings: AppSettings,
    name: str,
    params: Any,
    *,
    has_params: bool,
    sync: bool,
    timeout: float | None,
) -> int:
    from .._errors import FunctionError, HError, InvalidArgumentError
    from .._types import NOT_GIVEN

    started = time.perf_counter()
    try:
        async with settings.session() as session:
            promise = session.invoke(
                name,
                params if has_params else NOT_GIVEN,
                sync,
                timeout=NOT_GIVEN if timeout is None else timeout,
            )
            async with _spinner(f"invoking {name}" + ("" if sync else " (async)")):
                result = await promise
    except InvalidArgumentError as err:
        say("error", str(err))
        return EXIT_USAGE
    except HError as err:
        say("error", str(err))
        _hint(err, settings)
        return EXIT_ERROR
    _print_result(result)
    _status_line(name, result, time.perf_counter() - started)
    try:
        result.raise_for_code()
    except FunctionError as err:
        say("error", f"{name} failed: {err}")
        return EXIT_FUNCTION_FAILED
    return EXIT_OK


# Colours the keys of indented JSON: each key starts its line, so no string value can match.
_KEY_RE: Final = re.compile(r'^(\s*)("(?:[^"\\]|\\.)*")(: )', re.MULTILINE)


def _print_result(result: InvokeResult) -> None:
    envelope = {"code": result.code, "data": result.data, "error": result.error}
    out = sys.stdout
    if is_tty(out):
        text = json.dumps(envelope, ensure_ascii=False, indent=2)
        style = Style.for_stream(out)
        if style.enabled:
            text = _KEY_RE.sub(lambda m: m[1] + style.cyan(m[2]) + m[3], text)
    else:
        # One line when piped, so that `... | jq` and line-oriented tools work alike.
        text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    out.write(text + "\n")
    out.flush()


def _status_line(name: str, result: InvokeResult, elapsed: float) -> None:
    """On a terminal: how it went, how long it took, and the server's request id."""
    if not is_tty(sys.stderr):
        return
    style = Style.for_stream(sys.stderr)
    mark = style.green("ok") if result.ok else style.red(f"code {result.code}")
    parts = [f"{mark} {name}", f"{elapsed * 1000:.0f} ms"]
    if result.request_id:
        parts.append(f"request id {result.request_id}")
    sys.stderr.write(style.dim(" · ").join(parts) + "\n")
    sys.stderr.flush()


def _hint(err: HError, settings: AppSettings) -> None:
    """A next step for the failures a newcomer meets first."""
    if err.code in (401, 604) and settings.token is None and settings.client_secret is None:
        say("hint", "log in first: minapp-async login --username NAME (or --anonymous)")
    elif err.code == 403:
        say(
            "hint",
            "by default only logged-in, non-anonymous users may invoke; log in as a user, "
            "or allow anonymous calls in the app's settings (local engine: --allow-anonymous)",
        )
    elif err.code == 600 and settings.base_url is None:
        say("hint", "to use a local engine, pass --base-url http://127.0.0.1:8000")


_FRAMES: Final = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_SPINNER_DELAY: Final = 0.3  # a quick call finishes before anything flickers


@asynccontextmanager
async def _spinner(text: str) -> AsyncIterator[None]:
    """A spinner with the elapsed time on stderr while the body runs, on a terminal only."""
    err = sys.stderr
    if not is_tty(err):
        yield
        return
    encoding = (getattr(err, "encoding", "") or "").lower().replace("-", "")
    frames = _FRAMES if encoding == "utf8" else "|/-\\"
    started = time.perf_counter()

    async def spin() -> None:
        await asyncio.sleep(_SPINNER_DELAY)
        for i in range(sys.maxsize):
            elapsed = time.perf_counter() - started
            with suppress(OSError):  # a closed terminal must not fail the call
                err.write(f"\r{frames[i % len(frames)]} {text} {elapsed:.1f} s\x1b[K")
                err.flush()
            await asyncio.sleep(0.1)

    # A plain task, cancelled and awaited below: the spinner never outlives the call.
    task = asyncio.get_running_loop().create_task(spin(), name="minapp-async-spinner")
    try:
        yield
    finally:
        task.cancel()
        # asyncio.wait, not `await task`: a cancellation of this task itself must propagate.
        await asyncio.wait([task])
        with suppress(OSError):
            err.write("\r\x1b[K")
            err.flush()


INVOKE: Final = Command(
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)
