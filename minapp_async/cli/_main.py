"""The ``minapp-async`` parser and entry point.

Each subcommand is a :class:`Command` in its own module; ``COMMANDS`` lists its name, its
one-line help and where it is. A command's module is imported, and its arguments added, only
when that command is parsed or its help shown: building the parser loads nothing one command
alone needs (``serve``: the engine and ``aiohttp.web``), and each run loads one command.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from .._version import __version__
from ._options import Command

__all__ = ["COMMANDS", "Listing", "build_parser", "main"]


@attrs.frozen
class Listing:
    """A subcommand as the top-level ``--help`` lists it, and the module that has it."""

    name: str
    help: str
    #: A module of this package, and the name of its Command there.
    module: str
    attribute: str

    def load(self) -> Command:
        command = getattr(importlib.import_module(f"{__package__}.{self.module}"), self.attribute)
        if not isinstance(command, Command):
            raise TypeError(f"{self.module}.{self.attribute} is not a Command")
        return command


#: The subcommands, in the order ``--help`` lists them. Add one here and in its own module.
COMMANDS: Final = (
    Listing("invoke", "invoke a cloud function and print its result as JSON", "_invoke", "INVOKE"),
    Listing(
        "map", "invoke a cloud function for every line of a JSONL file, resumably", "_map", "MAP"
    ),
    Listing("login", "log in as a user and keep the session for 'invoke'", "_login", "LOGIN"),
    Listing("logout", "end the stored session and delete it", "_login", "LOGOUT"),
    Listing("serve", "run the local cloud engine", "_serve", "SERVE"),
    Listing(
        "tables", "list, import, export or reset the engine's data tables", "_tables", "TABLES"
    ),
    Listing("outbox", "print the messages functions sent (and clear them)", "_tables", "OUTBOX"),
)


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that loads its command and adds its arguments on first use."""

    def __init__(self, *args: Any, listing: Listing | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = listing

    def _load(self) -> None:
        listing, self._pending = self._pending, None
        if listing is not None:
            command = listing.load()
            self.epilog = command.epilog
            command.add_arguments(self)
            self.set_defaults(_run=command.run)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._load()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._load()
        return super().format_usage()

    def format_help(self) -> str:
        self._load()
        return super().format_help()


def build_parser(commands: Sequence[Listing] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minapp-async",
        description="Tools for 知晓云 (MinApp) cloud functions.",
        epilog="Run 'minapp-async COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for listing in commands:
        sub.add_parser(
            listing.name,
            listing=listing,
            help=listing.help,
            description=listing.help,
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
