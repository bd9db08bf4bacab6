"""Where the examples' cloud functions run: a local engine started right here, or your app.

Every example takes ``--base-url URL --client-id ID`` to use a real 知晓云 app (or a running
``minapp-async serve``); the service user's login then comes from the environment variables
``MINAPP_USERNAME`` and ``MINAPP_PASSWORD`` (never from options, where ``ps`` would show it).
Without them, the example starts the local engine over ``examples/functions/`` on 127.0.0.1
and creates that user, so it runs with no setup at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from minapp_async import UserCredentials
from minapp_async.engine import Engine

FUNCTIONS = Path(__file__).parent / "functions"


@dataclass(frozen=True)
class Target:
    """An app to call: its server, its client id, and the user the service logs in as."""

    base_url: str
    client_id: str
    credentials: UserCredentials


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="your app's server (default: a local engine)")
    parser.add_argument("--client-id", help="your app's client id (with --base-url)")


@asynccontextmanager
async def target(args: argparse.Namespace) -> AsyncIterator[Target]:
    """The app named on the command line, or a local engine for as long as the block runs."""
    if args.base_url:
        username, password = os.environ.get("MINAPP_USERNAME"), os.environ.get("MINAPP_PASSWORD")
        if not (args.client_id and username and password):
            sys.exit("--base-url needs --client-id, MINAPP_USERNAME and MINAPP_PASSWORD")
        yield Target(
            args.base_url, args.client_id, UserCredentials(username=username, password=password)
        )
        return
    async with Engine(functions_dir=FUNCTIONS) as engine:
        engine.create_user(username="service", password="local-password")
        yield Target(
            engine.url,
            engine.client_id,
            UserCredentials(username="service", password="local-password"),
        )
