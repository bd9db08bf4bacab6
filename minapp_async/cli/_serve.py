"""``minapp-async serve``: run the local cloud engine until Ctrl-C or SIGTERM.

The only command that needs the engine (and with it ``aiohttp.web``): it imports it when its
options are added or it runs, never when another command does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from .._protocol import ASYNC_TIME_LIMIT, SYNC_TIME_LIMIT
from .._version import __version__
from ._options import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    non_negative_int,
    positive_int,
    positive_number,
)

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["SERVE"]

#: Where serve keeps its state by default, inside the functions folder (never a function name).
STATE_FOLDER: Final = ".minapp"
STATE_FILE: Final = "state.sqlite3"


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine import EngineConfig

    defaults = {field.name: field.default for field in attrs.fields(EngineConfig)}
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
        type=positive_number,
        default=SYNC_TIME_LIMIT,
        metavar="S",
        help="seconds a sync job may run (default: %(default)s)",
    )
    parser.add_argument(
        "--async-time-limit",
        type=positive_number,
        default=ASYNC_TIME_LIMIT,
        metavar="S",
        help="seconds an async job may run (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=10,
        metavar="N",
        help="jobs running at once (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=positive_int,
        default=256,
        metavar="N",
        help="memory limit per function worker (default: %(default)s)",
    )
    parser.add_argument(
        "--no-contain",
        dest="contain",
        action="store_false",
        help="run functions uncontained: no namespaces, shared /tmp and network, no tree "
        "memory limit (contained by default where the OS allows)",
    )
    parser.add_argument(
        "--client-id",
        default=None,
        metavar="ID",
        help="serve only this client id (default: any id the app sends)",
    )
    parser.add_argument(
        "--client-secret",
        default=None,
        metavar="S",
        help="the app's client secret for the Open API (default: a documented local value)",
    )
    parser.add_argument(
        "--state",
        default=None,
        metavar="PATH",
        help="SQLite file keeping users, tokens and jobs across restarts, or :memory: to keep "
        f"nothing (default: DIR/{STATE_FOLDER}/{STATE_FILE}; delete it to reset)",
    )
    parser.add_argument(
        "--max-queued-jobs",
        type=positive_int,
        default=10_000,
        metavar="N",
        help="async jobs that may wait for a slot; beyond, 503 + Retry-After "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued-mb",
        type=positive_int,
        default=64,
        metavar="N",
        help="megabytes of params the waiting async jobs may hold (default: %(default)s)",
    )
    parser.add_argument(
        "--max-idle-workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="warm workers kept across all functions, least recently used retired first "
        "(default: twice --concurrency)",
    )
    parser.add_argument(
        "--strict-tables",
        action="store_true",
        help="unknown data tables are a 404, as on the platform (default: a function's first "
        "write creates them)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; '*' for any). By default "
        "only loopback names and the bound address are served, against DNS rebinding",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also let web pages from this origin call the engine, e.g. "
        "https://dev.example.com (repeatable; '*' for any; loopback pages always may)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive_number,
        default=defaults["idle_timeout"],
        metavar="S",
        help="close connections with no complete request for S seconds: idle keep-alive or "
        "headers arriving too slowly (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="do not print each job and its function's log lines",
    )
    parser.add_argument(
        "--no-prestart",
        dest="prestart",
        action="store_false",
        help="don't start a warm worker for each function at start-up (then each function's "
        "first call pays its worker's cold start)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="engine log level on stderr (default: %(default)s)",
    )


def _serve(args: argparse.Namespace) -> int:
    from ..engine import Engine, EngineConfig, TriggerFileError
    from ..engine._store import StoreError

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.functions.is_dir():
        sys.stderr.write(
            f"minapp-async serve: --functions {str(args.functions)!r} is not a folder\n"
        )
        return EXIT_USAGE
    overrides = {} if args.client_secret is None else {"client_secret": args.client_secret}
    state = args.state
    if state is None:
        state = str(args.functions.resolve() / STATE_FOLDER / STATE_FILE)
    try:
        config = EngineConfig(
            functions_dir=args.functions.resolve(),
            host=args.host,
            port=args.port,
            client_id=args.client_id,
            allow_anonymous=args.allow_anonymous,
            allowed_hosts=args.allow_host,
            cors_origins=args.cors_origin,
            idle_timeout=args.idle_timeout,
            sync_time_limit=args.sync_time_limit,
            async_time_limit=args.async_time_limit,
            concurrency=args.concurrency,
            memory_limit_mb=args.memory_limit_mb,
            contain_functions=args.contain,
            state=state,
            max_queued_jobs=args.max_queued_jobs,
            max_queued_bytes=args.max_queued_mb * 1024 * 1024,
            max_idle_workers=args.max_idle_workers,
            strict_tables=args.strict_tables,
            prestart=args.prestart,
            **overrides,
        )
    except ValueError as exc:
        sys.stderr.write(f"minapp-async serve: {exc}\n")
        return EXIT_USAGE
    _raise_open_files_limit()
    try:
        asyncio.run(
            _serve_until_stopped(
                Engine(config, job_output=None if args.quiet else sys.stdout),
                secret_given=args.client_secret is not None,
                quiet=args.quiet,
            )
        )
    except StoreError as exc:  # the state file is damaged, locked or not writable
        sys.stderr.write(f"minapp-async serve: {exc}\n")
        return EXIT_ERROR
    except OSError as exc:  # e.g. the port is taken
        sys.stderr.write(f"minapp-async serve: cannot serve on {args.host}:{args.port}: {exc}\n")
        return EXIT_ERROR
    except TriggerFileError as exc:  # names the file and the line
        sys.stderr.write(f"minapp-async serve: {exc}\n")
        return EXIT_USAGE
    return EXIT_OK


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one, as Go's runtime does at start: a
    script fanning out thousands of calls needs a socket each, and at the common soft limit of
    1024 the server would stop accepting connections. Only ``serve`` does this; an ``Engine``
    embedded in someone's process leaves that process's limits alone."""
    try:
        import resource
    except ImportError:  # Windows has no such limit to lift
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an infinite soft limit for open files; 2**20 is its usual ceiling.
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):  # a platform that refuses: keep it
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve_until_stopped(engine: Engine, *, secret_given: bool, quiet: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows' proactor loop; there Ctrl-C raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with engine:
        _banner(engine, secret_given=secret_given, quiet=quiet)
        await stop.wait()
        sys.stdout.write("shutting down\n")
        sys.stdout.flush()


def _banner(engine: Engine, *, secret_given: bool, quiet: bool) -> None:
    from ..engine import DEFAULT_CLIENT_SECRET

    config = engine.config
    # The default secret is public (documented); one given on the command line stays hidden.
    secret = (
        "(hidden: the one given with --client-secret)"
        if secret_given
        else (f"{DEFAULT_CLIENT_SECRET} (the documented local default)")
    )
    anonymous = "allowed" if config.allow_anonymous else "not allowed (--allow-anonymous)"
    client_id = (
        f"{config.client_id} (pinned with --client-id)"
        if config.client_id is not None
        else "any (the app's own; pin one with --client-id)"
    )
    names = engine.function_names()
    found = ", ".join(names) if names else "none yet (add name.js, name/index.js or name.py)"
    lines = [
        f"minapp-async engine {__version__} serving {engine.url}",
        f"  functions:     {config.functions_dir}",
        f"    found {len(names)}: {found}",
        f"  client id:     {client_id}",
        f"  client secret: {secret}",
        f"  anonymous invoke: {anonymous}",
        f"  containment: {_containment(engine)}",
        f"  state:         {_state_line(config.state)}",
        f"  job logs:      {'hidden (--quiet)' if quiet else 'shown here as they happen (--quiet hides them)'}",
        "point the SDK at it:",
        f"  minapp_async.Session({engine.client_id!r}, base_url={engine.url!r})",
        "press Ctrl-C to stop",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _containment(engine: Engine) -> str:
    report = engine.containment
    if report is None:  # (not started)
        return "unknown"
    if report.complete:
        return f"on (own pid, mount and network namespaces, cgroup {report.cgroup_version})"
    return "; ".join(report.missing)


def _state_line(state: str) -> str:
    if state == ":memory:":
        return ":memory: (nothing is kept after the engine stops)"
    return f"{state} (delete it to reset users, tokens and jobs)"


SERVE: Final = Command(
    add_arguments=_serve_arguments,
    run=_serve,
)
