"""The options the commands share: the Command record, exit statuses, the argparse types for
numbers and JSON, app and credential options, and where the login is kept.

Credentials and app settings come from options first, then environment variables:

    --base-url URL        MINAPP_BASE_URL
    --client-id ID        MINAPP_CLIENT_ID
    --env ID              MINAPP_ENV_ID
    --token T             MINAPP_TOKEN           a user token (client API)
    --client-secret S     MINAPP_CLIENT_SECRET   server credentials (Open API)

and, when neither a token nor a secret is given, the login stored by ``minapp-async login``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._protocol import ENV_ID_HEADER

if TYPE_CHECKING:
    # Imported when a command runs: "--help" and usage errors need not load the SDK.
    from .._options import Limits
    from .._session import Session

__all__ = [
    "EXIT_ERROR",
    "EXIT_FUNCTION_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "AppSettings",
    "Command",
    "UsageError",
    "add_app_arguments",
    "parse_json",
    "positive_int",
    "positive_number",
    "resolve_app",
    "session_file",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1  # an HError: the call failed (network, HTTP status, deadline…)
EXIT_USAGE: Final = 2  # bad options or input, as argparse's own usage errors
EXIT_FUNCTION_FAILED: Final = 3  # the function ran and failed: the result's code != 0
EXIT_INTERRUPTED: Final = 130  # Ctrl-C, as shells report SIGINT

ENV_BASE_URL: Final = "MINAPP_BASE_URL"
ENV_CLIENT_ID: Final = "MINAPP_CLIENT_ID"
ENV_ENV_ID: Final = "MINAPP_ENV_ID"
ENV_TOKEN: Final = "MINAPP_TOKEN"
ENV_CLIENT_SECRET: Final = "MINAPP_CLIENT_SECRET"
ENV_HOME: Final = "MINAPP_ASYNC_HOME"

# Real client ids are 20 hex digits; anything that is safe as a file name is accepted.
_CLIENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


@attrs.frozen
class Command:
    """One subcommand (its name and one-line help are listed in ``_main``): ``add_arguments``
    fills its parser; ``run`` gets the parsed arguments and returns the exit status."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    #: Shown after the options in ``--help``: examples, mostly.
    epilog: str | None = None


class UsageError(Exception):
    """Options or input the command cannot use; exits with ``EXIT_USAGE``."""


def positive_number(text: str) -> float:
    """An argparse type for every number option (seconds, rates): finite and > 0.

    Infinity is refused, not taken as "no limit": each such option has a finite default or
    means "unlimited" when left out, so ``inf`` is more likely a slip than a wish.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isinf(value) and value > 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number > 0, got {text} (leave the option out for its default)"
        )
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts (concurrency, megabytes): a whole number >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type for counts where 0 means none (idle workers): a whole number >= 0."""
    return _int_at_least(text, 0)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str, where: str) -> Any:
    """One JSON value given by the user; UsageError naming *where* it came from."""
    try:
        # NaN and Infinity are Python's extension, not JSON: the server could not read them.
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError too
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply") from None


def add_app_arguments(parser: argparse.ArgumentParser, *, credentials: bool = True) -> None:
    """The options naming the app and, with *credentials*, a token or server secret."""
    group = parser.add_argument_group("app")
    group.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the server (env {ENV_BASE_URL}; default: the app's MinApp cloud address)",
    )
    group.add_argument(
        "--client-id", metavar="ID", help=f"the app's client id (env {ENV_CLIENT_ID}; required)"
    )
    group.add_argument(
        "--env",
        dest="env_id",
        metavar="ID",
        help=f"a test environment's id, sent as {ENV_ID_HEADER} (env {ENV_ENV_ID})",
    )
    if not credentials:
        return
    group = parser.add_argument_group(
        "credentials",
        # Line breaks kept: subcommands print their help with RawDescriptionHelpFormatter.
        "default: the login stored by 'minapp-async login'.\n"
        "Prefer the environment variables: options are visible to other users in ps.",
    )
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--token", metavar="T", help=f"a user token, instead of the stored login (env {ENV_TOKEN})"
    )
    exclusive.add_argument(
        "--client-secret",
        metavar="S",
        help=f"invoke as the app itself through the Open API (env {ENV_CLIENT_SECRET})",
    )


@attrs.frozen
class AppSettings:
    """Which app, on which server, as whom. Secrets never appear in repr."""

    client_id: str
    base_url: str | None = None
    env_id: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    client_secret: str | None = attrs.field(default=None, repr=False)
    #: Where ``login`` keeps the session and where ``invoke`` finds it.
    session_file: Path = attrs.field(factory=Path)
    #: Warnings about how the settings were given (e.g. a secret on the command line).
    notes: tuple[str, ...] = ()

    def session(self, *, use_stored_login: bool = True, limits: Limits | None = None) -> Session:
        """A Session for these settings: server credentials, a token, or the stored login;
        *limits* sizes its pool (``map --concurrency`` above the default pool)."""
        from .._options import DEFAULT_LIMITS
        from .._session import Session
        from .._tokens import FileTokenStore

        pool = DEFAULT_LIMITS if limits is None else limits
        if self.client_secret is not None:
            return Session(
                self.client_id,
                base_url=self.base_url,
                env_id=self.env_id,
                client_secret=self.client_secret,
                limits=pool,
            )
        return Session(
            self.client_id,
            base_url=self.base_url,
            env_id=self.env_id,
            limits=pool,
            token=self.token,
            # A --token is used for this run only: it must not replace the stored login.
            token_store=(
                FileTokenStore(self.session_file)
                if use_stored_login and self.token is None
                else None
            ),
        )


def _non_empty(value: str | None, what: str) -> str | None:
    if value is not None and not value.strip():
        raise UsageError(f"{what} is empty")
    return value


def resolve_app(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> AppSettings:
    """Options first, then environment variables; raises UsageError naming what is wrong."""

    def pick(option: str | None, flag: str, env: str) -> str | None:
        if option is not None:
            return _non_empty(option, flag)
        value = environ.get(env) or None
        return _non_empty(value, env)

    client_id = pick(args.client_id, "--client-id", ENV_CLIENT_ID)
    if client_id is None:
        raise UsageError(
            f"no client id: pass --client-id ID or set {ENV_CLIENT_ID} "
            "(the local engine prints its client id when it starts)"
        )
    base_url = pick(args.base_url, "--base-url", ENV_BASE_URL)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UsageError(f"the base URL must start with http:// or https://, got {base_url!r}")
    notes: list[str] = []
    token = secret = None
    if hasattr(args, "token"):
        cli_token, cli_secret = args.token, args.client_secret
        if cli_token is not None or cli_secret is not None:
            # An option beats both variables: the command line is the more specific.
            token = _non_empty(cli_token, "--token")
            secret = _non_empty(cli_secret, "--client-secret")
            flag = "--token" if cli_token is not None else "--client-secret"
            env = ENV_TOKEN if cli_token is not None else ENV_CLIENT_SECRET
            notes.append(f"{flag} is visible to other users in the process list; prefer {env}")
        else:
            token = pick(None, "--token", ENV_TOKEN)
            secret = pick(None, "--client-secret", ENV_CLIENT_SECRET)
            if token is not None and secret is not None:
                raise UsageError(
                    f"both {ENV_TOKEN} and {ENV_CLIENT_SECRET} are set: a call is made either "
                    "as a user or as the app; unset one"
                )
    return AppSettings(
        client_id=client_id,
        base_url=base_url,
        env_id=pick(args.env_id, "--env", ENV_ENV_ID),
        token=token,
        client_secret=secret,
        session_file=session_file(client_id, environ),
        notes=tuple(notes),
    )


def session_file(client_id: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the login of app *client_id* is kept: ``$MINAPP_ASYNC_HOME/<client_id>.json``,
    else ``$XDG_CONFIG_HOME/minapp-async/`` or ``~/.config/minapp-async/``."""
    if not _CLIENT_ID_RE.fullmatch(client_id):
        # The id names a file: nothing that could climb out of the folder or hide a file.
        raise UsageError(
            f"client id {client_id!r} is not valid: use letters, digits, '_', '-' and '.'"
        )
    home = environ.get(ENV_HOME)
    if home:
        folder = Path(home)
    else:
        config = environ.get("XDG_CONFIG_HOME")
        folder = (Path(config) if config else Path.home() / ".config") / "minapp-async"
    return folder / f"{client_id}.json"
