"""Durable state against a real ``minapp-async serve`` process: accepted async jobs survive
SIGTERM, SIGINT and SIGKILL; users and tokens survive a restart; memory stays bounded."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from engine_api import Api

from minapp_async.engine import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

pytestmark = pytest.mark.anyio

JOBS = 100
WORK_PY = """\
import time


def main(event):
    time.sleep(event["data"]["seconds"])
    print("finished", event["data"]["i"])
    return event["data"]["i"]
"""
ECHO_PY = "def main(event):\n    return event['data']\n"
WORK_JOBS = "/oserve/v1.3/cloud-function/work/job/"


class _Remote:
    """What Api needs of an Engine, for one running in another process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = DEFAULT_CLIENT_ID
        self.client_secret = DEFAULT_CLIENT_SECRET


@asynccontextmanager
async def serve(*args: str) -> AsyncIterator[tuple[Process, str]]:
    """``python -m minapp_async serve ARGS``: the process and its URL once it serves."""
    process = await anyio.open_process(
        [sys.executable, "-m", "minapp_async", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    async with process:
        try:
            assert process.stdout is not None
            reader = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(30):
                while True:
                    line = (await reader.receive_until(b"\n", 65536)).decode()
                    match = re.search(r"serving (http://\S+)", line)
                    if match:
                        break
            yield process, match.group(1)
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True), anyio.fail_after(30):
                await process.wait()


async def job_list(api: Api, bearer: str, **query: str) -> dict[str, Any]:
    params = "&".join(f"{k}={v}" for k, v in {"limit": "1000", **query}.items())
    reply = await api.oserve("GET", f"{WORK_JOBS}?{params}", bearer)
    assert reply.status == 200, reply
    assert isinstance(reply.body, dict)
    return reply.body


async def until_fulfilled(api: Api, bearer: str, count: int, within: float = 120) -> None:
    with anyio.fail_after(within):
        # The jobs run in another process: poll its job list.
        while (await job_list(api, bearer, status="fulfilled"))["meta"]["total_count"] < count:  # noqa: ASYNC110
            await anyio.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
async def test_accepted_async_jobs_survive_any_stop(tmp_path: Path, signum: int) -> None:
    """100 accepted async jobs, the engine stopped mid-way (also by SIGKILL) and started
    again with the same command: every job runs to its end exactly once to completion,
    those cut off mid-run are marked rerun; the user and the tokens issued before still
    work."""
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "work.py").write_text(WORK_PY)
    command = ("--functions", str(functions), "--concurrency", "4")
    async with aiohttp.ClientSession() as http:
        async with serve(*command) as (process, url):
            api = Api(_Remote(url), http)  # type: ignore[arg-type]
            register = await api.request(
                "POST",
                "/hserve/v2.1/register/username/",
                json_body={"username": "durable", "password": "pw"},
                headers=api.hserve_headers(),
            )
            token = register.body["token"]
            bearer = await api.access_token()
            for i in range(JOBS):
                reply = await api.invoke(token, "work", {"i": i, "seconds": 0.2}, sync=False)
                assert reply.body == {"status": "ok"}, reply
            await until_fulfilled(api, bearer, 8)
            process.send_signal(signum)
            with anyio.fail_after(30):
                code = await process.wait()
            assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 0)
        # The state is kept next to the functions by default.
        assert (functions / ".minapp" / "state.sqlite3").exists()
        async with serve(*command) as (process, url):
            api = Api(_Remote(url), http)  # type: ignore[arg-type]
            await until_fulfilled(api, bearer, JOBS)
            listing = await job_list(api, bearer)
            jobs = listing["objects"]
            assert listing["meta"]["total_count"] == JOBS == len(jobs)
            assert {j["status"] for j in jobs} == {"fulfilled"}
            reruns = [j for j in jobs if j["rerun"]]
            assert reruns, "no job was cut off mid-run"
            assert all(j["attempts"] >= 2 for j in reruns)
            assert all(j["attempts"] == 1 for j in jobs if not j["rerun"])
            # Each number 0..99 was the result of exactly one job, and its log shows its end.
            seen = []
            for job in jobs:
                async with http.get(
                    job["user_log_url"], headers={"Authorization": f"Bearer {bearer}"}
                ) as response:
                    log = await response.text()
                (number,) = re.findall(r"finished (\d+)", log)
                seen.append(int(number))
            assert sorted(seen) == list(range(JOBS))
            # The session token from before the stop still works.
            again = await api.invoke(token, "work", {"i": -1, "seconds": 0})
            assert again.body == {"code": 0, "data": -1, "error": {}}, again
            process.send_signal(signal.SIGTERM)


def rss(pid: int) -> int:
    """The process's resident set size in bytes, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match[1]) * 1024


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(),
    reason="reads the serve process's RSS from /proc (Linux)",
)
async def test_forty_async_requests_of_a_mebibyte_keep_rss_bounded(tmp_path: Path) -> None:
    """40 async invokes of ~1 MiB each (many small values: the costliest to parse) raise the
    engine's RSS by well under 4x the bytes received; their results go to the state file."""
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "echo.py").write_text(ECHO_PY)
    data = list(range(140_000))  # ~1 MiB of JSON
    received = 0
    async with (
        aiohttp.ClientSession() as http,
        serve("--functions", str(functions), "--state", str(tmp_path / "s.sqlite3")) as (
            process,
            url,
        ),
    ):
        api = Api(_Remote(url), http)  # type: ignore[arg-type]
        register = await api.request(
            "POST",
            "/hserve/v2.1/register/username/",
            json_body={"username": "big", "password": "pw"},
            headers=api.hserve_headers(),
        )
        token = register.body["token"]
        bearer = await api.access_token()
        assert (await api.invoke(token, "echo", {"warm": True})).status == 200
        before = rss(process.pid)

        async def send(i: int) -> None:
            nonlocal received
            body = {"i": i, "values": data}
            reply = await api.invoke(token, "echo", body, sync=False)
            assert reply.body == {"status": "ok"}, reply
            received += len(json.dumps({"function_name": "echo", "sync": False, "data": body}))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(send, i)
        with anyio.fail_after(120):
            # The jobs run in another process: poll its job list.
            while True:
                reply = await api.oserve(
                    "GET", "/oserve/v1.3/cloud-function/echo/job/?status=fulfilled", bearer
                )
                if reply.body["meta"]["total_count"] == 41:
                    break
                await anyio.sleep(0.1)
        grown = rss(process.pid) - before
        assert received > 40 * 900_000
        assert grown < 4 * received + 64 * 1024 * 1024, (grown, received)
        print(f"RSS grew {grown / 2**20:.1f} MiB for {received / 2**20:.1f} MiB received")
        process.send_signal(signal.SIGTERM)


async def test_a_second_engine_on_the_same_state_is_refused(tmp_path: Path) -> None:
    """Two engines cannot share a state file: the second exits 1 naming the file."""
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "echo.py").write_text(ECHO_PY)
    state = tmp_path / "shared.sqlite3"
    async with serve("--functions", str(functions), "--state", str(state)) as (process, _):
        second = await anyio.run_process(
            [sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
             "--port", "0", "--state", str(state)],
            check=False,
        )  # fmt: skip
        assert second.returncode == 1
        message = second.stderr.decode()
        assert "in use by another engine" in message and str(state) in message
        assert "Traceback" not in message
        process.send_signal(signal.SIGTERM)
