"""Helpers for the examples' tests: run a script as a reader of the README would, and log
a user in as a web front end would."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from minapp_async import MemoryTokenStore, Session
from minapp_async.engine import Engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run_script(name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run examples/NAME to completion (bounded)."""
    with anyio.fail_after(90):
        return await anyio.run_process(
            [sys.executable, str(EXAMPLES / name), *args], check=False, cwd=EXAMPLES.parent
        )


@asynccontextmanager
async def serving_script(name: str, *args: str, pattern: str) -> AsyncIterator[tuple[str, Process]]:
    """Start a web-app example; yield its URL (the first *pattern* match on its output)."""
    process = await anyio.open_process(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=EXAMPLES.parent,
    )
    async with process:
        try:
            assert process.stdout is not None
            reader = BufferedByteReceiveStream(process.stdout)
            seen = []
            with anyio.fail_after(60):
                while True:
                    line = (await reader.receive_until(b"\n", 65536)).decode()
                    seen.append(line)
                    match = re.search(pattern, line)
                    if match:
                        break
            yield match.group(1), process
        finally:
            if process.returncode is None:
                process.kill()


async def interrupt(process: Process) -> str:
    """Ctrl-C the script; wait for it to exit by itself; return the rest of its output."""
    process.send_signal(signal.SIGINT)
    with anyio.fail_after(60):
        status = await process.wait()
        assert process.stdout is not None
        rest = b"".join([chunk async for chunk in process.stdout]).decode()
    assert 0 == status, rest
    return rest


async def user_token(engine: Engine, username: str) -> tuple[int, str]:
    """Create a user on the engine and log in: its id and token, as a web front end has."""
    user_id = engine.create_user(username=username, password="pw")
    store = MemoryTokenStore()
    async with Session(engine.client_id, base_url=engine.url, token_store=store) as s:
        await s.auth.login(username=username, password="pw")
    stored = await store.load()
    assert stored is not None
    return user_id, stored.token
