"""``minapp-async map``: invoke one cloud function for every line of a JSONL file.

Each input line is one call's params; each output line one outcome, appended as soon as it is
known, so an interrupted run can be resumed: a rerun skips every index already written. An item
that may have run is always written (``"may_have_executed": true``), also a call cut off in
flight after it was sent, so that no rerun runs it twice unless asked (``--retry-uncertain``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import attrs

from .._constants import ACK_DEADLINE, SYNC_DEADLINE
from ._options import (
    EXIT_ERROR,
    EXIT_FUNCTION_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    AppSettings,
    Command,
    UsageError,
    add_app_arguments,
    parse_json,
    positive_int,
    positive_number,
    resolve_app,
)
from ._output import Style, is_tty, run_async, say

if TYPE_CHECKING:
    from .._errors import HError
    from .._fanout import Outcome

__all__ = ["MAP"]

_EPILOG: Final = """\
examples:
  minapp-async map helloWorld --input params.jsonl --output results.jsonl --concurrency 32
  minapp-async map report --input jobs.jsonl --output acks.jsonl --async --rate 50

Input: one JSON value per line, the params of one call (blank lines are skipped); a line's
index is its line number from 0. Output: one JSON line per item, appended as it completes:
  {"index": 0, "code": 0, "data": ..., "error": {}}        a reply (code != 0: the function failed)
  {"index": 7, "error_code": 601, "message": "...", "may_have_executed": true}  the call failed
Rerun the same command after an interruption (Ctrl-C once finishes the calls in flight; twice
aborts): indexes already in the output are skipped, also those that failed with
"may_have_executed": true (the function may have run: a dropped connection, a deadline after
sending, a call cut off in flight by an abort or a stop, written with error_code 499).
--retry-uncertain re-sends exactly those. A failure that concerns every item and shows the
function did not run (server unreachable, no login, refused credentials, no such function)
stops the run without writing the item, so the rerun retries it.
exit status: 0 every item in the output succeeded; 1 some call failed (or the run stopped);
2 bad usage or input; 3 some function ran and failed (code != 0); 130 interrupted.
"""

#: Errors about the run rather than the item: writing them would mark every item done.
#: 600 unreachable, 602 closed, 604 no login, 401/403 credentials, 404 no such function.
_RUN_ERRORS: Final = frozenset({600, 602, 604, 401, 403, 404})
#: The code of a call cut off in flight when the run stopped (as "client closed request").
_CUT_OFF: Final = 499

#: The map position of the item a worker task is calling: the input generator sets it in the
#: worker's own context as the worker takes the item, and the on_request hook reads it there,
#: so the run knows which calls were sent (context variables are per task).
_POSITION: contextvars.ContextVar[int] = contextvars.ContextVar("minapp_async_map_position")

_REDRAW: Final = 0.1  # seconds between progress redraws on a terminal
_PLAIN_EVERY: Final = 10.0  # seconds between progress lines when stderr is not a terminal


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the cloud function's name")
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="JSONL file of params, one call per line; - for standard input",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSONL file the outcomes are appended to (created if missing)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="calls in flight at most (default: %(default)s)",
    )
    parser.add_argument(
        "--rate", type=positive_number, metavar="R", help="calls started per second at most"
    )
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="don't wait for results: each line records that the job was accepted",
    )
    parser.add_argument(
        "--timeout",
        type=positive_number,
        metavar="S",
        help=f"seconds each call may take (default: {SYNC_DEADLINE:g} with sync, "
        f"{ACK_DEADLINE:g} with --async)",
    )
    parser.add_argument(
        "--ordered",
        action="store_true",
        help="write outcomes in input order (default: as they complete; each has its index)",
    )
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first item that fails: no more items are taken, the calls in "
        "flight finish and are written",
    )
    parser.add_argument(
        "--retry-uncertain",
        action="store_true",
        help='send again the items whose only output is a failure with "may_have_executed": '
        "true (their function may have run once already)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress display on standard error"
    )
    add_app_arguments(parser)


# -- the files ---------------------------------------------------------------------------------


@attrs.define
class _Tally:
    """Outcomes counted: from an earlier run's output, or this run's."""

    ok: int = 0
    failed: int = 0
    errors: dict[int, int] = attrs.field(factory=dict)

    def add(self, record: dict[str, Any]) -> None:
        if "error_code" in record:
            code = record["error_code"]
            self.errors[code] = self.errors.get(code, 0) + 1
        elif record.get("code") == 0:
            self.ok += 1
        else:
            self.failed += 1

    def remove_error(self, code: Any) -> None:
        """Forget one failure with *code*: a later record replaced it."""
        left = self.errors.get(code, 0) - 1
        if left > 0:
            self.errors[code] = left
        else:
            self.errors.pop(code, None)

    @property
    def total(self) -> int:
        return self.ok + self.failed + sum(self.errors.values())

    def describe(self) -> str:
        errors = ", ".join(f"{n}x {code}" for code, n in sorted(self.errors.items()))
        return f"{self.ok} ok, {self.failed} failed, {sum(self.errors.values())} errors" + (
            f" ({errors})" if errors else ""
        )


class _Indexes:
    """A set of non-negative ints as a bitmap: resuming ten million items costs 1.25 MB."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, index: int) -> bool:
        """Add *index*; False when it was there already."""
        byte, bit = divmod(index, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        if self._bits[byte] >> bit & 1:
            return False
        self._bits[byte] |= 1 << bit
        self.count += 1
        return True

    def __contains__(self, index: int) -> bool:
        byte, bit = divmod(index, 8)
        return byte < len(self._bits) and bool(self._bits[byte] >> bit & 1)


def _uncertain(record: dict[str, Any]) -> bool:
    """A failure after which the function may have run."""
    return "error_code" in record and record.get("may_have_executed") is True


@attrs.define
class _Earlier:
    """What earlier runs wrote: every index, their tally (an index's last word counts), and the
    indexes whose only records are failures that may have run (index -> error code)."""

    done: _Indexes = attrs.field(factory=_Indexes)
    tally: _Tally = attrs.field(factory=_Tally)
    uncertain: dict[int, Any] = attrs.field(factory=dict)

    def add(self, index: int, record: dict[str, Any]) -> None:
        if self.done.add(index):
            self.tally.add(record)
            if _uncertain(record):
                self.uncertain[index] = record["error_code"]
        elif index in self.uncertain and not _uncertain(record):
            # A rerun with --retry-uncertain settled it: its record replaces the failure.
            self.tally.remove_error(self.uncertain.pop(index))
            self.tally.add(record)


def _read_output(path: Path) -> _Earlier:
    """What earlier runs wrote (see ``_Earlier``). A last line cut off mid-write (no newline,
    not JSON) is removed, so that appending starts on a fresh line."""
    earlier = _Earlier()
    try:
        handle = path.open("rb+")
    except FileNotFoundError:
        return earlier
    except OSError as exc:
        raise UsageError(f"--output {str(path)!r}: cannot open: {exc.strerror or exc}") from None
    with handle:
        offset = 0
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                if line.endswith(b"\n"):
                    raise UsageError(
                        f"--output {str(path)!r} line {number} is not JSON: is it the output "
                        "of 'minapp-async map'?"
                    ) from None
                handle.truncate(offset)  # the torn last line of an interrupted write
                say("warning", f"{path}: removed an incomplete last line (line {number})")
                break
            index = record.get("index") if isinstance(record, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise UsageError(
                    f"--output {str(path)!r} line {number} has no index: is it the output of "
                    "'minapp-async map'?"
                )
            earlier.add(index, record)
            offset += len(line)
            if not line.endswith(b"\n"):  # complete JSON, but the newline never came
                handle.write(b"\n")
    return earlier


@contextlib.contextmanager
def _open_input(name: str) -> Iterator[IO[str]]:
    """The input's lines; standard input is read but left open."""
    if name == "-":
        yield sys.stdin
        return
    try:
        handle = open(name, encoding="utf-8")  # noqa: SIM115 - closed just below
    except OSError as exc:
        raise UsageError(f"--input {name!r}: cannot read: {exc.strerror or exc}") from None
    with handle:
        yield handle


class _Skip:
    """The input indexes a run skips: those already written, except the uncertain ones when
    they are to be retried."""

    def __init__(self, earlier: _Earlier, *, retry_uncertain: bool) -> None:
        self._done = earlier.done
        self._retry = earlier.uncertain if retry_uncertain else {}

    def __contains__(self, index: int) -> bool:
        return index in self._done and index not in self._retry


def _count_input(name: str, done: _Skip) -> int:
    """Check every line of the input file before any call is made; the items still to do.
    Standard input cannot be read twice: its lines are checked as they are read."""
    remaining = 0
    with _open_input(name) as lines:
        try:
            for index, line in enumerate(lines):
                if line.strip() and index not in done:
                    parse_json(line, f"--input {name!r} line {index + 1}")
                    remaining += 1
        except UnicodeDecodeError as exc:
            raise UsageError(f"--input {name!r} is not UTF-8 text: {exc}") from None
    return remaining


# -- progress ----------------------------------------------------------------------------------


class _Display:
    """Progress on stderr: tqdm or a redrawn line on a terminal, a line now and then when not."""

    def __init__(self, label: str, total: int | None, *, enabled: bool) -> None:
        self._label, self._total = label, total
        self._started = self._shown = time.perf_counter()
        self._tty = enabled and is_tty(sys.stderr)
        self._plain = enabled and not self._tty
        self._bar: Any = None
        self._done = 0
        if self._tty:
            try:
                tqdm = importlib.import_module("tqdm")  # the "progress" extra
            except ImportError:
                pass
            else:
                self._bar = tqdm.tqdm(total=total, desc=label, unit="call", file=sys.stderr)

    def update(self, done: int, errors: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._done)
            self._done = done
            return
        now = time.perf_counter()
        if self._tty and now - self._shown >= _REDRAW:
            self._shown = now
            with contextlib.suppress(OSError):
                sys.stderr.write(f"\r{self._line(done, errors, now)}\x1b[K")
                sys.stderr.flush()
        elif self._plain and now - self._shown >= _PLAIN_EVERY:
            self._shown = now
            say("progress", self._line(done, errors, now))

    def _line(self, done: int, errors: int, now: float) -> str:
        of = f"/{self._total}" if self._total is not None else ""
        rate = done / (now - self._started) if now > self._started else 0.0
        return f"{self._label}: {done}{of} done, {errors} errors, {rate:.0f} calls/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tty:
            with contextlib.suppress(OSError):
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()


# -- the run -----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    try:
        settings = resolve_app(args)
        if args.input != "-" and Path(args.input).resolve() == args.output.resolve():
            raise UsageError("--input and --output are the same file")
        earlier = _read_output(args.output)
        done = _Skip(earlier, retry_uncertain=args.retry_uncertain)
        remaining = None if args.input == "-" else _count_input(args.input, done)
    except UsageError as exc:
        say("error", str(exc))
        return EXIT_USAGE
    for note in settings.notes:
        say("warning", note)
    before, uncertain = earlier.tally, len(earlier.uncertain)
    if args.retry_uncertain:
        for code in earlier.uncertain.values():
            before.remove_error(code)  # sent again: this run's record is their word
    skipped = earlier.done.count - (uncertain if args.retry_uncertain else 0)
    if skipped:
        say("note", f"resuming: {skipped} items already in {args.output} are skipped")
    if uncertain and args.retry_uncertain:
        say("note", f"sending again {uncertain} items that may have run once already")
    elif uncertain:
        say(
            "note",
            f"{uncertain} items may have run once already (may_have_executed) and are "
            "skipped; --retry-uncertain sends them again",
        )
    return run_async(_map(settings, args, done, before, remaining))


@attrs.define
class _Run:
    """What the run shares between the input generator, the loop and the signal handler."""

    stopping: bool = False  # Ctrl-C once: take no more items
    interrupted: bool = False
    lines: dict[int, int] = attrs.field(factory=dict)  # map index -> input line index
    sent: set[int] = attrs.field(factory=set)  # map indexes sent and not yet written

    def on_request(self, info: object) -> None:
        """The SDK's hook before each try is sent, in the task of the call."""
        position = _POSITION.get(None)
        if position is not None:
            self.sent.add(position)


def _items(name: str, done: _Skip, state: _Run) -> Iterator[Any]:
    """The params still to do, read as map() asks for them."""
    with _open_input(name) as lines:
        position = 0
        for index, line in enumerate(lines):
            if state.stopping:
                return
            if not line.strip() or index in done:
                continue
            params = parse_json(line, f"--input {name!r} line {index + 1}")
            state.lines[position] = index
            # Runs in the worker task that takes the item, which calls it next (see _POSITION).
            _POSITION.set(position)
            position += 1
            yield params


async def _map(
    settings: AppSettings,
    args: argparse.Namespace,
    done: _Skip,
    before: _Tally,
    remaining: int | None,
) -> int:
    from .._errors import HError, InvalidArgumentError
    from .._options import DEFAULT_LIMITS, Limits

    state = _Run()
    tally = _Tally()
    stopped: HError | None = None
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def interrupt() -> None:
        if not state.stopping:
            state.stopping = True
            say("warning", "stopping: finishing the calls in flight (Ctrl-C again to abort)")
        else:
            state.interrupted = True
            if main is not None:
                main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows' loop
        loop.add_signal_handler(signal.SIGINT, interrupt)
    display = _Display(args.name, remaining, enabled=not args.no_progress)
    started = time.perf_counter()
    limits = Limits(max_connections=max(DEFAULT_LIMITS.max_connections, args.concurrency))
    try:
        async with settings.session(limits=limits) as session:
            fanout = session.with_options(on_request=state.on_request).map(
                args.name,
                _items(args.input, done, state),
                sync=not args.asynchronous,
                concurrency=args.concurrency,
                rate=args.rate,
                ordered=args.ordered,
                errors="collect",
                timeout=args.timeout,
            )
            with _append(args.output) as out:
                try:
                    async with fanout:
                        async for outcome in fanout:
                            err = outcome.error
                            state.sent.discard(outcome.index)
                            # About the run, and it did not run: take no more items and leave
                            # it unwritten, but let the calls in flight finish and write them
                            # (cancelling them would leave their fate unknown). One that may
                            # have run is the item's outcome: written.
                            run_error = err is not None and err.code in _RUN_ERRORS
                            if run_error and err is not None and not err.may_have_executed:
                                stopped = stopped or err
                                state.stopping = True
                                continue
                            index = state.lines.pop(outcome.index)
                            record = _record(index, outcome)
                            out.write(json.dumps(record, ensure_ascii=False) + "\n")
                            tally.add(record)
                            display.update(tally.total, sum(tally.errors.values()))
                            if args.fail_fast and not outcome.ok:
                                state.stopping = True  # the calls in flight still finish
                finally:
                    # The map is closed: calls sent and cut off in flight may have run.
                    _write_cut_off(out, state, tally)
    except asyncio.CancelledError:
        if not state.interrupted:
            raise
    # A bad input line (standard input is checked as it is read), or an option the SDK refused.
    except (UsageError, InvalidArgumentError) as exc:
        display.close()
        say("error", str(exc))
        return EXIT_USAGE
    except HError as exc:  # e.g. the Session could not be opened
        display.close()
        say("error", str(exc))
        return EXIT_ERROR
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    display.close()
    return _report(args, tally, before, stopped, state, time.perf_counter() - started)


@contextlib.contextmanager
def _append(path: Path) -> Iterator[IO[str]]:
    # Line-buffered: each outcome reaches the file as it is known, for a resume after a kill.
    try:
        handle = path.open("a", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise UsageError(f"--output {str(path)!r}: cannot write: {exc.strerror or exc}") from None
    with handle:
        yield handle
        handle.flush()
        with contextlib.suppress(OSError):
            os.fsync(handle.fileno())


def _write_cut_off(out: IO[str], state: _Run, tally: _Tally) -> None:
    """A failure record, ``may_have_executed`` true, for each call that was sent and got no
    outcome written: a rerun skips it unless ``--retry-uncertain``. Calls never sent are left
    unwritten, so a rerun sends them."""
    for position in sorted(state.sent):
        index = state.lines.pop(position, None)
        if index is None:
            continue
        record = {
            "index": index,
            "error_code": _CUT_OFF,
            "message": f"{_CUT_OFF}: cut off in flight when the run stopped; it may have run",
            "may_have_executed": True,
        }
        with contextlib.suppress(OSError):
            out.write(json.dumps(record) + "\n")
        tally.add(record)
    state.sent.clear()


def _record(index: int, outcome: Outcome) -> dict[str, Any]:
    if outcome.result is not None:
        r = outcome.result
        return {"index": index, "code": r.code, "data": r.data, "error": r.error}
    err: HError | None = outcome.error
    assert err is not None
    return {
        "index": index,
        "error_code": err.code,
        "message": str(err),
        "may_have_executed": err.may_have_executed,
    }


def _report(
    args: argparse.Namespace,
    tally: _Tally,
    before: _Tally,
    stopped: HError | None,
    state: _Run,
    elapsed: float,
) -> int:
    style = Style.for_stream(sys.stderr)
    rate = tally.total / elapsed if elapsed > 0 else 0.0
    line = f"{args.name}: {tally.total} items in {elapsed:.1f} s ({rate:.0f} calls/s): "
    line += tally.describe()
    if before.total:
        line += f"; earlier runs: {before.describe()}"
    sys.stderr.write(style.dim(line) + "\n")
    sys.stderr.flush()
    if stopped is not None:
        say("error", f"stopped: {stopped}")
        say(
            "hint",
            "items that did not run were not written: fix the cause and rerun (calls cut off "
            "after they were sent were written as may_have_executed; --retry-uncertain sends "
            "them again)",
        )
        return EXIT_ERROR
    if state.interrupted or state.stopping and not args.fail_fast:
        say("error", "interrupted: rerun the same command to continue")
        return EXIT_INTERRUPTED
    if tally.errors or before.errors:
        return EXIT_ERROR
    if tally.failed or before.failed:
        return EXIT_FUNCTION_FAILED
    return EXIT_OK


MAP: Final = Command(
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)
