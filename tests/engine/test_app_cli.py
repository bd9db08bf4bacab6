"""The ``minapp-async serve`` command, run as a real subprocess."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from engine_api import Api

from minapp_async.cli import main
from minapp_async.engine import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from minapp_async.testing import HELLO_WORLD_JS

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(*args: str) -> AsyncIterator[tuple[Process, str, list[str]]]:
    """Run ``python -m minapp_async serve ARGS``; yield it, its URL and its banner lines."""
    process = await anyio.open_process(
        [sys.executable, "-m", "minapp_async", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with process:
        try:
            assert process.stdout is not None
            lines: list[str] = []
            reader = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(30):
                while "press Ctrl-C" not in (lines[-1] if lines else ""):
                    lines.append((await reader.receive_until(b"\n", 65536)).decode())
            match = re.search(r"serving (http://\S+)", lines[0])
            assert match, lines
            yield process, match.group(1), lines
        finally:
            if process.returncode is None:
                process.kill()


async def stop(process: Process, signum: int) -> str:
    """Signal the server, wait for a clean exit, and return its stderr."""
    process.send_signal(signum)
    with anyio.fail_after(30):
        assert await process.wait() == 0
    assert process.stderr is not None
    stderr = b""
    async for chunk in process.stderr:
        stderr += chunk
    return stderr.decode()


@pytest.fixture(name="functions")
def _functions(tmp_path: Path) -> Path:
    (tmp_path / "helloWorld.js").write_text(HELLO_WORLD_JS)
    return tmp_path


#: What the README's command serves: ``minapp-async serve --functions examples/functions``.
EXAMPLE_FUNCTIONS = Path(__file__).resolve().parents[2] / "examples" / "functions"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_answers_requests_and_stops_cleanly(signum: int) -> None:
    """Serving examples/functions runs the seed's helloWorld; SIGTERM or Ctrl-C shuts the
    engine down with status 0."""
    async with serve("--functions", str(EXAMPLE_FUNCTIONS), "--port", "0") as (
        process,
        url,
        lines,
    ):
        banner = "\n".join(lines)
        assert DEFAULT_CLIENT_ID in banner
        assert "client id:     any" in banner
        assert f"base_url={url!r}" in banner
        assert re.search(r"found \d+: .*\bhelloWorld\b", banner), banner
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            # Api only needs .url and .client_id: point a stand-in Engine at the subprocess.
            api = Api(_Remote(url), http)  # type: ignore[arg-type]
            register = await api.request(
                "POST",
                "/hserve/v2.1/register/username/",
                json_body={"username": "cli", "password": "pw"},
                headers=api.hserve_headers(),
            )
            reply = await api.invoke(register.body["token"], "helloWorld", {"name": "cli"})
            assert reply.body == {"code": 0, "data": "hello cli", "error": {}}
        stderr = await stop(process, signum)
    assert "Traceback" not in stderr
    assert register.body["token"] not in stderr


async def test_serve_options_reach_the_engine(functions: Path) -> None:
    """--allow-anonymous and --client-id take effect; a given secret is not printed."""
    async with serve(
        "--functions", str(functions), "--port", "0", "--allow-anonymous",
        "--client-id", "cli-client", "--client-secret", "cli-secret-value",
        "--sync-time-limit", "1", "--concurrency", "2", "--memory-limit-mb", "128",
    ) as (process, url, lines):  # fmt: skip
        banner = "\n".join(lines)
        assert "cli-client (pinned with --client-id)" in banner
        assert "found 1: helloWorld" in banner
        assert "cli-secret-value" not in banner
        assert DEFAULT_CLIENT_SECRET not in banner
        async with aiohttp.ClientSession() as http:
            api = Api(_Remote(url, client_id="cli-client"), http)  # type: ignore[arg-type]
            token = await api.anonymous_token()
            reply = await api.invoke(token, "helloWorld", {"name": "anon"})
            assert reply.body["data"] == "hello anon"
            assert reply.status == 200
        await stop(process, signal.SIGTERM)


async def test_serve_strict_tables(functions: Path) -> None:
    """--strict-tables: a function's write to an unknown table is a 404 HError."""
    (functions / "write.js").write_text(
        "exports.main = async () => new BaaS.TableObject('nope').create().set({ a: 1 }).save()"
        "\n  .then(() => 'saved', (err) => err.code)\n"
    )
    async with serve(
        "--functions", str(functions), "--port", "0", "--allow-anonymous", "--strict-tables"
    ) as (process, url, _lines):  # fmt: skip
        async with aiohttp.ClientSession() as http:
            api = Api(_Remote(url), http)  # type: ignore[arg-type]
            reply = await api.invoke(await api.anonymous_token(), "write", {})
            assert reply.body == {"code": 0, "data": 404, "error": {}}
        await stop(process, signal.SIGTERM)


def test_serve_refuses_a_missing_folder(tmp_path: Path) -> None:
    """A --functions path that is not a folder exits 2 with a message."""
    result = subprocess.run(
        [sys.executable, "-m", "minapp_async", "serve", "--functions", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "is not a folder" in result.stderr


def test_serve_reports_a_taken_port(functions: Path) -> None:
    """A port already in use exits 1 naming the address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
             "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["serve"], ["serve", "--functions", ".", "--concurrency", "0"], ["nope"], []],
)
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Missing or invalid arguments are usage errors (exit status 2)."""
    with pytest.raises(SystemExit) as exc_info:
        main(args)
    assert exc_info.value.code == 2
    assert "usage: minapp-async" in capsys.readouterr().err


def test_help_lists_serve(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists the serve subcommand."""
    with pytest.raises(SystemExit) as exc_info:
        main(["--help"])
    assert exc_info.value.code == 0
    assert "serve" in capsys.readouterr().out


class _Remote:
    """The two Engine attributes Api uses, for an engine running in another process."""

    def __init__(self, url: str, client_id: str = DEFAULT_CLIENT_ID) -> None:
        self.url = url
        self.client_id = client_id
