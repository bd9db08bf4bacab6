"""``minapp-async functions`` (list, deploy, pull, delete) and ``minapp-async timers`` (list,
fire): the app's cloud functions and the engine's timers, through the Open API with the app's
client credentials, like the stock ``mincloud`` CLI.

The project layout is mincloud's: ``deploy NAME [ROOT]`` uploads ``ROOT/NAME/index.js`` (or
``ROOT/NAME.js``); ``pull NAME [ROOT]`` writes ``ROOT/NAME/index.js``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._protocol import LOCAL_TIMER_FIRE_PATH, LOCAL_TIMERS_PATH, OPEN_API_FUNCTIONS_PATH
from ._options import (
    ENV_CLIENT_SECRET,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    AppSettings,
    Command,
    UsageError,
    add_app_arguments,
    resolve_app,
)
from ._output import out, run_async, say

if TYPE_CHECKING:
    from ._open_api_client import OpenApiClient

__all__ = ["FUNCTIONS", "TIMERS"]

_ENTRY: Final = "index.js"
_FUNCTIONS_EPILOG: Final = """\
examples (MINAPP_CLIENT_SECRET holds the app's client secret):
  minapp-async functions list --base-url http://127.0.0.1:8000 --client-id ID
  minapp-async functions deploy orders ./cloud --client-id ID   # ./cloud/orders/index.js
  minapp-async functions pull orders ./cloud --client-id ID
  minapp-async functions delete orders --client-id ID
"""
_TIMERS_EPILOG: Final = """\
examples (MINAPP_CLIENT_SECRET holds the app's client secret):
  minapp-async timers list --base-url http://127.0.0.1:8000 --client-id ID
  minapp-async timers fire cancelOrders --base-url http://127.0.0.1:8000 --client-id ID

Timers are the local engine's (DIR/minapp.triggers.json); 'fire' runs one now, as an async job.
"""

Action = Callable[["OpenApiClient", argparse.Namespace], Awaitable[int]]


def _verbs(
    parser: argparse.ArgumentParser, verbs: dict[str, tuple[str, Callable[..., None] | None]]
) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (help_text, extra) in verbs.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        if extra is not None:
            extra(verb_parser)
        add_app_arguments(verb_parser, credentials=False)
        verb_parser.add_argument(
            "--client-secret",
            metavar="S",
            help=f"the app's client secret (prefer the env {ENV_CLIENT_SECRET}: options are "
            "visible to other users in ps)",
        )


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the cloud function's name")


def _name_root(parser: argparse.ArgumentParser) -> None:
    _name(parser)
    parser.add_argument(
        "root", nargs="?", type=Path, default=Path(), metavar="ROOT", help="default: ."
    )


def _functions_arguments(parser: argparse.ArgumentParser) -> None:
    def list_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print the reply as JSON")

    def deploy_options(p: argparse.ArgumentParser) -> None:
        _name_root(p)
        p.add_argument("-m", "--message", help="the remark stored with the function")

    _verbs(
        parser,
        {
            "list": ("list the app's cloud functions", list_options),
            "deploy": ("upload ROOT/NAME/index.js (or ROOT/NAME.js)", deploy_options),
            "pull": ("download a function's code to ROOT/NAME/index.js", _name_root),
            "delete": ("delete a cloud function", _name),
        },
    )


def _timers_arguments(parser: argparse.ArgumentParser) -> None:
    _verbs(
        parser,
        {
            "list": ("list the engine's timers and their next run", None),
            "fire": ("run a timer's function now", lambda p: p.add_argument("name")),
        },
    )


def _settings(args: argparse.Namespace) -> AppSettings:
    settings = resolve_app(args)
    secret = args.client_secret or os.environ.get(ENV_CLIENT_SECRET) or None
    if secret is None or not secret.strip():
        raise UsageError(
            f"these commands call the Open API as the app: set {ENV_CLIENT_SECRET} "
            "(or pass --client-secret)"
        )
    notes = settings.notes
    if args.client_secret:
        note = "--client-secret is visible to other users in ps; prefer " + ENV_CLIENT_SECRET
        notes += (note,)
    return attrs.evolve(settings, client_secret=secret, notes=notes)


def _runner(actions: dict[str, Action]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            settings = _settings(args)
        except UsageError as exc:
            say("error", str(exc))
            return EXIT_USAGE
        for note in settings.notes:
            say("warning", note)
        return run_async(_call(settings, actions[args.verb], args))

    return run


async def _call(settings: AppSettings, action: Action, args: argparse.Namespace) -> int:
    from ._open_api_client import OpenApiClient, OpenApiError

    try:
        async with OpenApiClient(settings) as api:
            return await action(api, args)
    except OpenApiError as exc:
        say("error", str(exc))
        return EXIT_ERROR
    except UsageError as exc:
        say("error", str(exc))
        return EXIT_USAGE


def _function_path(name: str) -> str:
    return f"{OPEN_API_FUNCTIONS_PATH}{name}/"


async def _list(api: OpenApiClient, args: argparse.Namespace) -> int:
    _, reply = await api.request("GET", OPEN_API_FUNCTIONS_PATH + "?limit=1000&offset=0")
    if args.json:
        out(json.dumps(reply, ensure_ascii=False))
    else:
        for item in reply.get("objects", []):
            out(f"{item.get('name')}\t{item.get('audit_status', '')}\t{item.get('remark', '')}")
    return EXIT_OK


def _local_code(name: str, root: Path) -> str:
    # As mincloud: ROOT/NAME/index.js wins over ROOT/NAME.js.
    candidates = (root / name / _ENTRY, root / f"{name}.js")
    for path in candidates:
        if path.is_file():
            try:
                code = path.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read {str(path)!r}: {exc}") from None
            if not code.strip():
                raise UsageError(f"{str(path)!r} is empty")
            return code
    raise UsageError("no function file: " + " or ".join(repr(str(p)) for p in candidates))


async def _deploy(api: OpenApiClient, args: argparse.Namespace) -> int:
    from ._open_api_client import OpenApiError

    body: dict[str, Any] = {"name": args.name, "function_code": _local_code(args.name, args.root)}
    if args.message is not None:
        body["remark"] = args.message
    try:
        await api.request("PATCH", _function_path(args.name), body)
        out(f"updated {args.name}")
    except OpenApiError as exc:
        if exc.status != 404:
            raise
        await api.request("POST", OPEN_API_FUNCTIONS_PATH, body)
        out(f"created {args.name}")
    return EXIT_OK


async def _pull(api: OpenApiClient, args: argparse.Namespace) -> int:
    _, reply = await api.request("GET", _function_path(args.name))
    code = reply.get("function_code") if isinstance(reply, dict) else None
    if not isinstance(code, str):
        say("error", "the reply has no function_code")
        return EXIT_ERROR
    target = args.root / args.name / _ENTRY
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {str(target)!r}: {exc}") from None
    out(f"pulled {args.name} into {target}")
    return EXIT_OK


async def _delete(api: OpenApiClient, args: argparse.Namespace) -> int:
    await api.request("DELETE", _function_path(args.name))
    out(f"deleted {args.name}")
    return EXIT_OK


async def _timers_list(api: OpenApiClient, args: argparse.Namespace) -> int:
    _, reply = await api.request("GET", LOCAL_TIMERS_PATH)
    for item in reply.get("objects", []):
        out(f"{item['name']}\t{item['cron']}\t{item['function']}\tnext {item['next_fire']}")
    return EXIT_OK


async def _timers_fire(api: OpenApiClient, args: argparse.Namespace) -> int:
    _, reply = await api.request("POST", LOCAL_TIMER_FIRE_PATH.format(name=args.name))
    out(json.dumps(reply, ensure_ascii=False))
    return EXIT_OK


FUNCTIONS: Final = Command(
    add_arguments=_functions_arguments,
    run=_runner({"list": _list, "deploy": _deploy, "pull": _pull, "delete": _delete}),
    epilog=_FUNCTIONS_EPILOG,
)
TIMERS: Final = Command(
    add_arguments=_timers_arguments,
    run=_runner({"list": _timers_list, "fire": _timers_fire}),
    epilog=_TIMERS_EPILOG,
)
