"""The ``minapp-async`` command line.

Each subcommand is a :class:`Command`: a name, a function adding its arguments and a function
running it. Add one by appending to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

# Command lives in _cli_common so that subcommand modules can build one without importing
# this module (which imports them): a subcommand is a module exporting a Command.
from ._cli_common import Command
from ._cli_invoke import INVOKE
from ._cli_login import LOGIN, LOGOUT
from ._cli_map import MAP
from ._version import __version__

if TYPE_CHECKING:
    # Imported lazily at run time: "--help" and other commands need not load aiohttp.
    from .engine import Engine


# ---------------------------------------------------------------- serve


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from .engine import DEFAULT_CLIENT_ID

    parser.add_argument(
        "--functions",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder of cloud functions (name.js, name/index.js, name.py)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="let anonymous users invoke functions (the console's switch; off by default)",
    )
    parser.add_argument(
        "--sync-time-limit",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds a sync job may run (default: %(default)s)",
    )
    parser.add_argument(
        "--async-time-limit",
        type=_positive_float,
        default=300.0,
        metavar="S",
        help="seconds an async job may run (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=10,
        metavar="N",
        help="jobs running at once (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=_positive_int,
        default=256,
        metavar="N",
        help="memory limit per function worker (default: %(default)s)",
    )
    parser.add_argument(
        "--client-id",
        default=DEFAULT_CLIENT_ID,
        metavar="ID",
        help="the app's client id (default: %(default)s)",
    )
    parser.add_argument(
        "--client-secret",
        default=None,
        metavar="S",
        help="the app's client secret for the Open API (default: a documented local value)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="engine log level on stderr (default: %(default)s)",
    )


def _serve(args: argparse.Namespace) -> int:
    from .engine import Engine, EngineConfig

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.functions.is_dir():
        sys.stderr.write(
            f"minapp-async serve: --functions {str(args.functions)!r} is not a folder\n"
        )
        return 2
    overrides = {} if args.client_secret is None else {"client_secret": args.client_secret}
    try:
        config = EngineConfig(
            functions_dir=args.functions.resolve(),
            host=args.host,
            port=args.port,
            client_id=args.client_id,
            allow_anonymous=args.allow_anonymous,
            sync_time_limit=args.sync_time_limit,
            async_time_limit=args.async_time_limit,
            concurrency=args.concurrency,
            memory_limit_mb=args.memory_limit_mb,
            **overrides,
        )
    except ValueError as exc:
        sys.stderr.write(f"minapp-async serve: {exc}\n")
        return 2
    try:
        asyncio.run(
            _serve_until_stopped(Engine(config), secret_given=args.client_secret is not None)
        )
    except OSError as exc:  # e.g. the port is taken
        sys.stderr.write(f"minapp-async serve: cannot serve on {args.host}:{args.port}: {exc}\n")
        return 1
    return 0


async def _serve_until_stopped(engine: Engine, *, secret_given: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows' proactor loop; there Ctrl-C raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with engine:
        _banner(engine, secret_given=secret_given)
        await stop.wait()
        sys.stdout.write("shutting down\n")
        sys.stdout.flush()


def _banner(engine: Engine, *, secret_given: bool) -> None:
    from .engine import DEFAULT_CLIENT_SECRET

    config = engine.config
    # The default secret is public (documented); one given on the command line stays hidden.
    secret = (
        "(hidden: the one given with --client-secret)"
        if secret_given
        else (f"{DEFAULT_CLIENT_SECRET} (the documented local default)")
    )
    anonymous = "allowed" if config.allow_anonymous else "not allowed (--allow-anonymous)"
    lines = [
        f"minapp-async engine {__version__} serving {engine.url}",
        f"  functions:     {config.functions_dir}",
        f"  client id:     {engine.client_id}",
        f"  client secret: {secret}",
        f"  anonymous invoke: {anonymous}",
        "point the SDK at it:",
        f"  minapp_async.Session({engine.client_id!r}, base_url={engine.url!r})",
        "press Ctrl-C to stop",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


SERVE: Final = Command(
    name="serve",
    help="run the local cloud engine",
    add_arguments=_serve_arguments,
    run=_serve,
)

#: The subcommands, in the order ``--help`` lists them.
COMMANDS: list[Command] = [INVOKE, MAP, LOGIN, LOGOUT, SERVE]


# ---------------------------------------------------------------- entry point


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minapp-async",
        description="Tools for 知晓云 (MinApp) cloud functions.",
        epilog="Run 'minapp-async COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        sub_parser = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            # No prefixes: "--password x" must not be taken for "--password-stdin".
            allow_abbrev=False,
            # Keeps the examples in the epilog as written.
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    return run(args)
