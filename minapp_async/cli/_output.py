"""Terminal output for every command: colour only on a terminal, messages on stderr, and how a
command's coroutine runs (the SDK's warnings as one line, Ctrl-C as exit status 130)."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from collections.abc import Coroutine, Mapping
from typing import IO, Any

import attrs

from ._options import EXIT_INTERRUPTED

__all__ = ["Style", "is_tty", "out", "run_async", "say"]


def is_tty(stream: IO[str]) -> bool:
    """Whether *stream* is a terminal; False for a replaced or closed stream."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@attrs.frozen
class Style:
    """ANSI colour for one stream, only when it is a terminal and NO_COLOR is not set."""

    enabled: bool

    @classmethod
    def for_stream(cls, stream: IO[str], environ: Mapping[str, str] = os.environ) -> Style:
        """Colour on a terminal; plain when piped or when NO_COLOR is set (no-color.org)."""
        return cls(is_tty(stream) and not environ.get("NO_COLOR"))

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._paint("1", text)

    def dim(self, text: str) -> str:
        return self._paint("2", text)

    def red(self, text: str) -> str:
        return self._paint("31", text)

    def green(self, text: str) -> str:
        return self._paint("32", text)

    def yellow(self, text: str) -> str:
        return self._paint("33", text)

    def cyan(self, text: str) -> str:
        return self._paint("36", text)


def out(text: str) -> None:
    """A line for the user on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say(kind: str, message: str, *, stream: IO[str] | None = None) -> None:
    """Print ``<kind>: <message>`` to stderr, the kind coloured on a terminal."""
    target = stream if stream is not None else sys.stderr
    style = Style.for_stream(target)
    paint = {"error": style.red, "warning": style.yellow, "hint": style.cyan}.get(kind, str)
    target.write(f"{paint(kind + ':')} {message}\n")
    target.flush()


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run a subcommand's coroutine; Ctrl-C exits 130 after the Session has closed."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: IO[str] | None = None,
        line: str | None = None,
    ) -> None:
        say("warning", str(message))

    with warnings.catch_warnings():
        # The SDK's warnings (e.g. a plain-http base URL) as one readable line, no source.
        warnings.showwarning = show
        try:
            return asyncio.run(main)
        except KeyboardInterrupt:
            say("error", "interrupted")
            return EXIT_INTERRUPTED
