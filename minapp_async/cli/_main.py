"""The ``minapp-async`` parser and entry point.

Each subcommand is a :class:`Command` in its own module: a name, a function adding its
arguments and a function running it. Add one by appending to ``COMMANDS``. A command's
arguments are added only when that command is parsed or its help shown, so building the parser
loads nothing one command alone needs (``serve``: the engine and ``aiohttp.web``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__
from ._invoke import INVOKE
from ._login import LOGIN, LOGOUT
from ._map import MAP
from ._options import Command
from ._serve import SERVE

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order ``--help`` lists them.
COMMANDS: list[Command] = [INVOKE, MAP, LOGIN, LOGOUT, SERVE]


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that adds its command's arguments on first use."""

    def __init__(self, *args: Any, command: Command | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = command

    def _add_pending(self) -> None:
        command, self._pending = self._pending, None
        if command is not None:
            command.add_arguments(self)
            self.set_defaults(_run=command.run)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._add_pending()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_pending()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_pending()
        return super().format_help()


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minapp-async",
        description="Tools for 知晓云 (MinApp) cloud functions.",
        epilog="Run 'minapp-async COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for command in commands:
        sub.add_parser(
            command.name,
            command=command,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            # No prefixes: "--password x" must not be taken for "--password-stdin".
            allow_abbrev=False,
            # Keeps the examples in the epilog as written.
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    return run(args)
