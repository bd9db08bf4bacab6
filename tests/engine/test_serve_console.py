"""``minapp-async serve`` shows each job on the terminal as it runs: its function's log lines
(with their level) as they arrive, then its status and duration; ``--quiet`` hides them."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from engine_api import Api, Reply

from minapp_async._protocol import REQUEST_ID_HEADER
from minapp_async.engine import DEFAULT_CLIENT_ID

pytestmark = pytest.mark.anyio

DEADLINE = 30.0

# Logs a line, then waits for the test to create the file it names: the test can only create
# it after it has seen the first line on serve's output, so that line came while the job ran.
STEPS_JS = """\
const fs = require('fs')
exports.main = async (event) => {
  console.log('step one of', event.data.name)
  console.warn('careful')
  while (!fs.existsSync(event.data.gate)) await new Promise((r) => setTimeout(r, 20))
  console.error('step two')
  return 'done'
}
"""
PRINTS_PY = """\
import logging

def main(event):
    print("printed from python")
    logging.warning("warned from python")
    return 1
"""


class Serve:
    """A running ``serve`` subprocess and its stdout, line by line."""

    def __init__(self, process: Process, reader: BufferedByteReceiveStream) -> None:
        self.process = process
        self._reader = reader
        self.url = ""
        self.banner: list[str] = []

    async def line(self) -> str:
        with anyio.fail_after(DEADLINE):
            return (await self._reader.receive_until(b"\n", 1 << 20)).decode()

    async def line_matching(self, pattern: str) -> str:
        while True:
            line = await self.line()
            if re.search(pattern, line):
                return line

    async def rest(self) -> str:
        """Everything else it prints, after a SIGTERM and a clean exit."""
        self.process.send_signal(signal.SIGTERM)
        out = b""
        with anyio.fail_after(DEADLINE):
            try:
                while True:
                    out += await self._reader.receive()
            except anyio.EndOfStream:
                pass
            assert await self.process.wait() == 0
        return out.decode()


@asynccontextmanager
async def serve(functions: Path, *args: str, prefix: Sequence[str] = ()) -> AsyncIterator[Serve]:
    process = await anyio.open_process(
        [*prefix, sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
         "--port", "0", "--allow-anonymous", "--sync-time-limit", "20", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    async with process:
        try:
            assert process.stdout is not None
            server = Serve(process, BufferedByteReceiveStream(process.stdout))
            first = await server.line_matching("serving")
            server.url = first.split("serving ", 1)[1].strip()
            server.banner.append(first)
            while True:
                line = await server.line()
                server.banner.append(line)
                if "press Ctrl-C" in line:
                    break
            yield server
        finally:
            if process.returncode is None:
                process.kill()


class _Remote:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = DEFAULT_CLIENT_ID


async def test_job_logs_stream_to_the_terminal_as_they_happen(tmp_path: Path) -> None:
    """A Node function's console lines appear with their level while it still runs; the job's
    end shows its function, request id, status and duration; a Python function's print and
    logging lines appear too."""
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "steps.js").write_text(STEPS_JS)
    (functions / "prints.py").write_text(PRINTS_PY)
    gate = tmp_path / "gate"
    async with serve(functions) as server, aiohttp.ClientSession() as http:
        assert any("found 2: prints, steps" in line for line in server.banner)
        api = Api(_Remote(server.url), http)  # type: ignore[arg-type]
        token = await api.anonymous_token()
        replies: list[Reply] = []

        async def call() -> None:
            replies.append(await api.invoke(token, "steps", {"name": "allen", "gate": str(gate)}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            first = await server.line_matching("step one")
            warn = await server.line()
            gate.touch()  # only now can the function go on
            second = await server.line_matching("step two")
            end = await server.line_matching(r"steps \[\w+\] fulfilled")
        (reply,) = replies
        request_id = reply.headers[REQUEST_ID_HEADER]
        short = request_id[:8]
        assert re.search(rf"steps \[{short}\] LOG +step one of allen$", first.rstrip()), first
        assert re.search(rf"steps \[{short}\] WARN +careful$", warn.rstrip()), warn
        assert re.search(rf"steps \[{short}\] ERROR +step two$", second.rstrip()), second
        assert re.search(
            rf"steps \[{short}\] fulfilled in \d+ ms \(sync, request id {request_id}\)", end
        ), end

        await api.invoke(token, "prints", {})
        assert re.search(r"prints \[\w+\] LOG +printed from python", await server.line())
        assert re.search(r"prints \[\w+\] WARN +warned from python", await server.line())
        assert re.search(r"prints \[\w+\] fulfilled in", await server.line())

        missing = await api.invoke(token, "nope", {})
        assert missing.status == 404
        rest = await server.rest()
    assert "nope" not in rest  # a 404 runs no job


async def test_quiet_hides_job_output(tmp_path: Path) -> None:
    """With --quiet nothing of the job reaches the terminal."""
    (tmp_path / "prints.py").write_text(PRINTS_PY)
    async with serve(tmp_path, "--quiet") as server, aiohttp.ClientSession() as http:
        assert any("hidden (--quiet)" in line for line in server.banner)
        api = Api(_Remote(server.url), http)  # type: ignore[arg-type]
        reply = await api.invoke(await api.anonymous_token(), "prints", {})
        assert reply.body["data"] == 1
        rest = await server.rest()
    assert rest == "shutting down\n"


#: Runs the rest of its argv with a soft open-files limit of 256 (hard 4096), as a shell with
#: ``ulimit -n 256`` would start it.
LOW_LIMIT = [
    sys.executable,
    "-c",
    (
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    ),
]


async def test_serve_lifts_its_open_files_limit_and_serves_past_the_old_one(
    tmp_path: Path,
) -> None:
    """Started with a soft limit of 256 open files, serve lifts it to the hard limit: 400 held
    keep-alive connections and then a call are all served. At 256 it would stop accepting."""
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "hello.py").write_text("def main(event):\n    return 'hi'\n")
    async with serve(functions, prefix=LOW_LIMIT) as server, aiohttp.ClientSession() as http:
        limits = await anyio.Path(f"/proc/{server.process.pid}/limits").read_text()
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
        host_port = server.url.removeprefix("http://")
        request = f"GET /nowhere HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode()
        host, port = host_port.rsplit(":", 1)
        held: list[anyio.abc.SocketStream] = []

        async def hold() -> None:
            stream = await anyio.connect_tcp(host, int(port))
            held.append(stream)
            await stream.send(request)
            assert (await stream.receive()).startswith(b"HTTP/1.1 404")  # served, kept alive

        try:
            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    for _ in range(400):
                        tg.start_soon(hold)
                api = Api(_Remote(server.url), http)  # type: ignore[arg-type]
                reply = await api.invoke(await api.anonymous_token(), "hello")
            assert reply.status == 200 and reply.body["data"] == "hi", reply
        finally:
            for stream in held:
                await stream.aclose()
