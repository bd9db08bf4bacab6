"""``minapp-async login`` and ``logout``: keep a user session in a file that ``invoke`` uses.

The session goes to a per-app file (``$MINAPP_ASYNC_HOME/<client_id>.json``, else
``~/.config/minapp-async/<client_id>.json``) written by ``FileTokenStore``: mode 0600,
atomically. The password is read from a terminal prompt or from standard input, never from an
option, so it never shows in the process list or the shell's history.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import TYPE_CHECKING, Final

import anyio

from ._options import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    AppSettings,
    Command,
    UsageError,
    add_app_arguments,
    positive_number,
    resolve_app,
)
from ._output import Style, is_tty, out, run_async, say

if TYPE_CHECKING:
    from .._auth import CurrentUser

__all__ = ["LOGIN", "LOGOUT"]

#: Logins are small requests; a server that does not answer in this long is not going to.
DEFAULT_LOGIN_TIMEOUT: Final = 30.0

_LOGIN_EPILOG: Final = """\
examples:
  minapp-async login --client-id ID --username allen          # prompts for the password
  printf %s "$PASSWORD" | minapp-async login --client-id ID --email a@b.c --password-stdin
  minapp-async login --client-id ID --anonymous               # a temporary anonymous user
  minapp-async login --base-url http://127.0.0.1:8000 --client-id ID --username allen --register

The session is kept in $MINAPP_ASYNC_HOME/<client id>.json (default folder:
~/.config/minapp-async), readable by you only; 'minapp-async invoke' uses it.
"""

_LOGOUT_EPILOG: Final = """\
example:
  minapp-async logout --client-id ID

Ends the stored session on the server and deletes the file.
"""


def _login_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_argument_group("who").add_mutually_exclusive_group(required=True)
    who.add_argument("--username", metavar="U", help="log in with a user name")
    who.add_argument("--email", metavar="E", help="log in with an email address")
    who.add_argument("--phone", metavar="P", help="log in with a phone number")
    who.add_argument(
        "--anonymous", action="store_true", help="log in as a new temporary anonymous user"
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (default: prompt on the terminal)",
    )
    parser.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    parser.add_argument(
        "--register", action="store_true", help="create the user first, then log in as it"
    )
    _add_server_arguments(parser)


class _RefusePassword(argparse.Action):
    """``--password``: refused with a reason, without repeating the value in the message."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "--password is not accepted: a password on the command line shows in the process "
            "list and the shell's history; type it at the prompt or use --password-stdin"
        )


def _logout_arguments(parser: argparse.ArgumentParser) -> None:
    _add_server_arguments(parser)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """What login and logout share: how long to wait, and which app on which server."""
    parser.add_argument(
        "--timeout",
        type=positive_number,
        default=DEFAULT_LOGIN_TIMEOUT,
        metavar="S",
        help="seconds to wait for the server (default: %(default)g)",
    )
    add_app_arguments(parser, credentials=False)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        text = sys.stdin.readline()
        password = text.removesuffix("\n").removesuffix("\r")
    elif is_tty(sys.stdin):
        password = getpass.getpass("password: ")
    else:
        raise UsageError(
            "no password: standard input is not a terminal to prompt on; "
            "pass --password-stdin to read it from standard input"
        )
    if not password:
        raise UsageError("the password is empty")
    return password


def _login(args: argparse.Namespace) -> int:
    try:
        settings = resolve_app(args)
        if args.anonymous and (args.password_stdin or args.register):
            raise UsageError("--anonymous takes no password and cannot --register")
        password = None if args.anonymous else _read_password(args.password_stdin)
    except UsageError as exc:
        say("error", str(exc))
        return EXIT_USAGE
    except (KeyboardInterrupt, EOFError):  # Ctrl-C or Ctrl-D at the prompt
        sys.stderr.write("\n")
        say("error", "no password given")
        return EXIT_USAGE
    who = {k: getattr(args, k) for k in ("username", "email", "phone") if getattr(args, k)}
    return run_async(
        _log_in(settings, who, password, register=args.register, deadline=args.timeout)
    )


async def _log_in(
    settings: AppSettings,
    who: dict[str, str],
    password: str | None,
    *,
    register: bool,
    deadline: float,
) -> int:
    from .._errors import HError

    # The folder holds sessions of every app: only its owner may list it.
    settings.session_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with anyio.fail_after(deadline):
            async with settings.session() as session:
                auth = session.auth
                if password is None:
                    user = await auth.anonymous_login()
                elif register:
                    user = await auth.register(password=password, **who)
                else:
                    user = await auth.login(password=password, **who)
    except TimeoutError:
        say("error", f"no reply from the server within {deadline:g} s")
        return EXIT_ERROR
    except HError as err:
        say("error", str(err))
        if err.code == 401 and password is not None:
            say("hint", "check the user name and password, or --register a new user")
        return EXIT_ERROR
    style = Style.for_stream(sys.stdout)
    name = next(iter(who.values()), None)
    out(
        f"{style.green('logged in')} as {_describe(user, name)}"
        f" on {settings.base_url or 'the MinApp cloud'}\n"
        f"session kept in {settings.session_file}{_until(user)}"
    )
    return EXIT_OK


def _describe(user: CurrentUser, name: str | None) -> str:
    label = "anonymous user" if user.anonymous else "user"
    return f"{label} {user.id}" + (f" ({name})" if name else "")


def _until(user: CurrentUser) -> str:
    if user.expires_at is None:
        return ""
    return f" until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(user.expires_at))}"


def _logout(args: argparse.Namespace) -> int:
    try:
        settings = resolve_app(args)
    except UsageError as exc:
        say("error", str(exc))
        return EXIT_USAGE
    return run_async(_log_out(settings, deadline=args.timeout))


async def _log_out(settings: AppSettings, *, deadline: float) -> int:
    from .._errors import HError

    if not settings.session_file.exists():
        out(f"not logged in to app {settings.client_id}")
        return EXIT_OK
    failure: str | None = None
    try:
        with anyio.fail_after(deadline):
            async with settings.session() as session:
                # Deletes the file even when the server cannot be told (Auth.logout's finally).
                await session.auth.logout()
    except TimeoutError:
        failure = f"no reply from the server within {deadline:g} s"
    except HError as err:
        # A 401: the server had already ended that session, so nothing is left to do.
        failure = None if err.code == 401 else str(err)
    # A cancelled logout may leave the file: remove it here too, whatever the server said.
    settings.session_file.unlink(missing_ok=True)
    if failure is not None:
        say("error", f"{failure}; the local session was deleted, the server was not told")
        return EXIT_ERROR
    out(f"logged out of app {settings.client_id}")
    return EXIT_OK


LOGIN: Final = Command(
    add_arguments=_login_arguments,
    run=_login,
    epilog=_LOGIN_EPILOG,
)

LOGOUT: Final = Command(
    add_arguments=_logout_arguments,
    run=_logout,
    epilog=_LOGOUT_EPILOG,
)
