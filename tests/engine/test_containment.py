"""Contained functions against a real engine: real Node and Python functions that try to escape.

Each function here is hostile: it starts children that try to outlive it, grows memory after it
returned, reads the engine's /proc entries, signals the engine, connects to its port, and leaves
files in /tmp. The engine runs it contained (its default), and the tests check from outside, on
the host's /proc, that nothing got out. Processes a function starts run ``lib/escapee.py`` of
its folder, so the host finds them by that path in their command line, whatever pid namespace
they are in. The last tests cover the uncontained path, which must still run functions and say
once what it cannot enforce.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from engine_api import Api, Reply

from minapp_async.engine._sandbox import Sandbox
from minapp_async.engine.runtime import Runtime
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

MEMORY_MB = 96  # small, so memory tests stay cheap on a shared machine


def _containment_here() -> str:
    sandbox = Sandbox(memory_limit_mb=MEMORY_MB)
    try:
        return "" if sandbox.report.complete else sandbox.report.summary()
    finally:
        sandbox.close()


_MISSING = _containment_here()
needs_containment = pytest.mark.skipif(
    bool(_MISSING), reason=f"this machine cannot contain functions: {_MISSING}"
)

# -- the hostile functions -------------------------------------------------------------------

#: Started by the functions: sleeps until killed, bounded so a failed test leaves nothing for
#: long. ``grow N`` allocates N MiB step by step, writing its progress, then "done".
ESCAPEE = """
import os, sys, time
if sys.argv[1] == "grow":
    keep = []
    with open(sys.argv[3], "a") as progress:
        for mb in range(0, int(sys.argv[2]), 8):
            keep.append(bytearray(8 * 1024 * 1024))
            for i in range(0, len(keep[-1]), 4096):
                keep[-1][i] = 1
            progress.write(f"{mb + 8}\\n")
            progress.flush()
            time.sleep(0.02)
        progress.write("done\\n")
        progress.flush()
    time.sleep(10)
else:
    time.sleep(120)
"""

#: The interpreter itself, outside any venv, for Node functions to start: a venv under /tmp
#: (a CI checkout there) is out of a Node worker's sight, behind its private /tmp.
HOST_PYTHON = os.path.realpath(sys.executable)

#: The four kinds of children: plain, new session, new process group, double-forked.
SPAWNER_PY = """
import os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ESCAPEE = os.path.join(HERE, "lib", "escapee.py")


def start(kind, *args):
    argv = [sys.executable, ESCAPEE, *args]
    if kind == "plain":
        subprocess.Popen(argv)
    elif kind == "session":
        subprocess.Popen(argv, start_new_session=True)
    elif kind == "group":
        subprocess.Popen(argv, preexec_fn=lambda: os.setpgid(0, 0))
    else:  # double fork: the grandchild is an orphan in its own session
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, argv)
            os._exit(0)
        os.waitpid(pid, 0)


calls = 0


def main(event):
    global calls
    calls += 1
    data = event["data"]
    if data["what"] == "children":
        for kind in ("plain", "session", "group", "double"):
            start(kind, "sleep")
    elif data["what"] == "grow":  # a child that grows after the function returned
        start("double", "grow", str(data["mb"]), os.path.join(HERE, "progress.txt"))
    elif data["what"] == "hold":  # children holding memory while the function runs
        for n in range(data["children"]):
            start("double", "grow", str(data["mb"]), os.path.join(HERE, f"hold{n}.txt"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = [os.path.join(HERE, f"hold{n}.txt") for n in range(data["children"])]
            if all(os.path.exists(p) and "done" in open(p).read() for p in done):
                return "all children hold their memory"
            time.sleep(0.05)
    if data.get("then") == "spin":
        while True:
            pass
    return calls
"""

SPAWNER_JS = """
const { spawn } = require('child_process')
const path = require('path')
const escapee = path.join(__dirname, 'lib', 'escapee.py')
exports.main = function (event, callback) {
  const python = event.data.python
  spawn(python, [escapee, 'sleep'], { stdio: 'ignore' })
  spawn(python, [escapee, 'sleep'], { stdio: 'ignore', detached: true }).unref()
  const q = (s) => "'" + s + "'"
  spawn('sh', ['-c', `(setsid ${q(python)} ${q(escapee)} sleep &) &`], { stdio: 'ignore' })
  if (event.data.then === 'spin') { while (true) {} }
  callback(null, 'spawned')
}
"""

#: Reaches for the engine and for other workers; returns what it could get.
PROBE_PY = """
import os, signal, socket


def scan(secrets, victim):
    found, victim_seen = [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as file:
                    text = file.read().decode("utf-8", "replace")
            except OSError:
                continue
            found += [s for s in secrets if s in text]
            if part == "cmdline" and victim in text:
                victim_seen.append(int(entry))
    return sorted(set(found)), victim_seen


def reach(pid):
    got = []
    try:
        os.listdir(f"/proc/{pid}/fd")
        got.append("fd")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.read(1)
        got.append("mem")
    except OSError:
        pass
    return got


def connect(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def main(event):
    data = event["data"]
    what = data["what"]
    if what == "proc":
        found, victim_pids = scan(data["secrets"], data["victim"])
        return {
            "found": found,
            "own_environ": sorted(set(os.environ) - {"PATH", "LANG", "PWD"}),
            "victim_seen": victim_pids,
            "victim_reached": [r for p in data["victim_pids"] + victim_pids for r in reach(p)],
            "engine_reached": reach(data["engine_pid"]),
        }
    if what == "signal":
        sent = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                os.kill(data["engine_pid"], signum)
                sent.append(int(signum))
            except OSError:
                pass
        return sent
    if what == "connect":
        return {
            "ports": {str(p): connect(p) for p in data["ports"]},
            "interfaces": sorted(name for _, name in socket.if_nameindex()),
        }
    if what == "state":
        here = os.path.dirname(os.path.abspath(__file__))
        return os.listdir(os.path.join(here, ".minapp"))
    if what == "write_tmp":
        with open(f"/tmp/{data['name']}", "w") as file:
            file.write("private")
        return sorted(os.listdir("/tmp"))
    raise ValueError(what)
"""

#: Another function's worker, kept warm: the probe must not reach it.
VICTIM_PY = """
import os


def main(event):
    name = (event.get("data") or {}).get("tmp")
    if name:
        return os.path.exists(f"/tmp/{name}")
    return "victim"
"""


def write_functions(folder: Path) -> Path:
    (folder / "lib").mkdir(parents=True)
    sources = {
        "lib/escapee.py": ESCAPEE,
        "spawner.py": SPAWNER_PY,
        "spawnerjs.js": SPAWNER_JS,
        "probe.py": PROBE_PY,
        "victim.py": VICTIM_PY,
    }
    for name, source in sources.items():
        (folder / name).write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return folder


@pytest.fixture(name="functions")
def _functions(tmp_path: Path) -> Path:
    return write_functions(tmp_path / "functions")


# -- looking from the host -------------------------------------------------------------------


def host_processes(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains *marker*, from the host's /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                cmdline = file.read().decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as file:
                state = file.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def escapees(functions: Path) -> list[int]:
    """The escapee processes themselves (not a shell or setsid on the way to one)."""
    script = str(functions / "lib" / "escapee.py")
    found = []
    for pid in host_processes(script):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = file.read().decode("utf-8", "replace").split("\0")
            if argv[0] in (sys.executable, HOST_PYTHON) and argv[1:2] == [script]:
                found.append(pid)
    return found


async def wait_for(predicate: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    """Poll state that lives outside this process (/proc, files) until true or the deadline."""
    with anyio.move_on_after(deadline):
        while not predicate():  # noqa: ASYNC110 - nothing to await: the state is elsewhere
            await anyio.sleep(0.02)
    assert predicate(), f"gave up waiting for {what}"


async def wait_escapees(functions: Path, count: int) -> None:
    await wait_for(lambda: len(escapees(functions)) >= count, f"{count} escapees", 20.0)


async def wait_all_gone(functions: Path) -> None:
    await wait_for(lambda: not escapees(functions), "every escaped child to die", deadline=5.0)


@asynccontextmanager
async def engine_api(functions: Path, **config: Any) -> AsyncIterator[tuple[Api, str]]:
    """An engine over *functions* (contained unless told otherwise), a client and a token."""
    config.setdefault("memory_limit_mb", MEMORY_MB)
    async with (
        running_engine(functions, **config) as engine,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        api = Api(engine, http)
        yield api, await api.login()


def data_of(reply: Reply) -> Any:
    assert reply.status == 200 and reply.body["code"] == 0, reply
    return reply.body["data"]


# -- the whole process tree is the function's ------------------------------------------------


@needs_containment
@pytest.mark.parametrize("spawner", ["spawner", "spawnerjs"])
async def test_children_die_at_the_time_limit(functions: Path, spawner: str) -> None:
    """Children of every kind (plain, new session, new group, double-forked) die with the job at
    its time limit, also while the worker spins."""
    replies: list[Reply] = []
    async with engine_api(functions, sync_time_limit=3.0) as (api, token):

        async def call() -> None:
            data = {"what": "children", "then": "spin", "python": HOST_PYTHON}
            replies.append(await api.invoke(token, spawner, data))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            # Started and alive while the function spins (Node starts three kinds).
            await wait_escapees(functions, 4 if spawner == "spawner" else 3)
        (reply,) = replies
        assert reply.status == 400
        assert reply.body["job_status"] == "deadline_exceeded"
        await wait_all_gone(functions)
        assert data_of(await api.invoke(token, "victim", {})) == "victim"  # still serving


@needs_containment
async def test_children_die_when_the_worker_is_retired(functions: Path) -> None:
    """An idle worker's detached children die when it is retired: hot reload, engine stop."""
    async with engine_api(functions) as (api, token):
        assert data_of(await api.invoke(token, "spawner", {"what": "children"})) == 1
        await wait_escapees(functions, 4)  # the function returned; they live on, for now
        old = set(escapees(functions))
        # Hot reload retires the warm worker the next call would have used.
        source = functions / "spawner.py"
        source.write_text(source.read_text() + "\n# edited\n", encoding="utf-8")
        assert data_of(await api.invoke(token, "victim", {})) == "victim"
        assert data_of(await api.invoke(token, "spawner", {"what": "children"})) == 1
        await wait_for(
            lambda: not old & set(escapees(functions)), "the retired worker's children to die"
        )
        await wait_escapees(functions, 4)  # the new worker's
    await wait_all_gone(functions)  # the engine stopped: gone too


@needs_containment
async def test_children_die_when_an_idle_worker_expires(functions: Path) -> None:
    """Idle retirement (the runtime's idle timeout) takes the worker's detached children."""
    runtime = Runtime(functions, memory_limit_mb=MEMORY_MB, idle_timeout=0.3)
    try:
        event = {"data": {"what": "children"}, "eventType": "sdk"}
        outcome = await runtime.run("spawner", event, time_limit=10)
        assert outcome.status == "fulfilled", outcome
        await wait_escapees(functions, 4)
        await wait_all_gone(functions)  # expired after 0.3 s idle, with its tree
    finally:
        await runtime.aclose()


# -- serve as a subprocess ------------------------------------------------------------------


@asynccontextmanager
async def serve(
    functions: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Process, str, list[str]]]:
    """``python -m minapp_async serve`` on a free port; yields it, its URL and banner lines."""
    process = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "minapp_async",
            "serve",
            "--functions",
            str(functions),
            "--port",
            "0",
            "--allow-anonymous",
            "--memory-limit-mb",
            str(MEMORY_MB),
            "--quiet",  # (job logs would go to the stdout pipe nobody reads after the banner)
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
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


class ServeClient:
    """Anonymous calls to a serve process (it runs with --allow-anonymous)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.headers: dict[str, str] = {"X-Hydrogen-Client-ID": "1a2b3c4d5e6f7a8b9c0d"}

    async def login(self) -> None:
        async with self.http.post(
            self.url + "/hserve/v2.0/login/anonymous/", json={}, headers=self.headers
        ) as response:
            assert response.status == 201
            token = (await response.json())["token"]
        self.headers["Authorization"] = f"Hydrogen-r1 {token}"

    async def invoke(self, name: str, data: Any, sync: bool = True) -> Any:
        body = {"function_name": name, "data": data, "sync": sync}
        async with self.http.post(
            self.url + "/hserve/v1/cloud-function/job/", json=body, headers=self.headers
        ) as response:
            reply = await response.json()
            assert response.status == 200, reply
        return reply if not sync else reply["data"]


@needs_containment
async def test_serve_killed_takes_every_worker_tree_with_it(functions: Path) -> None:
    """SIGKILL the serve process: idle workers' detached children die, and a busy worker stops
    spinning (nothing it started outlives the engine)."""
    async with (
        serve(functions) as (process, url, _banner),
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        client = ServeClient(http, url)
        await client.login()
        assert await client.invoke("spawner", {"what": "children"}) == 1
        await wait_escapees(functions, 4)
        # A busy worker: spins (async job) with children of its own.
        reply = await client.invoke(
            "spawnerjs", {"then": "spin", "python": HOST_PYTHON}, sync=False
        )
        assert reply == {"status": "ok"}
        await wait_escapees(functions, 7)
        spinning = host_processes(str(functions / "spawnerjs.js"))
        assert spinning  # the Node worker, from the host's side
        process.kill()
        with anyio.fail_after(10):
            await process.wait()
    await wait_all_gone(functions)
    await wait_for(
        lambda: not host_processes(str(functions / "spawnerjs.js")), "the busy worker to die"
    )


@needs_containment
async def test_serve_secrets_and_signals_are_out_of_reach(functions: Path) -> None:
    """A function cannot read serve's command line (--client-secret) or environment, reach its
    /proc entries, or stop it with a signal; the engine keeps serving."""
    secret = "cs-" + secrets.token_hex(8)
    env_secret = "env-" + secrets.token_hex(8)
    env = {**os.environ, "MINAPP_TEST_ENGINE_SECRET": env_secret}
    async with (
        serve(functions, "--client-secret", secret, env=env) as (process, url, banner),
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        client = ServeClient(http, url)
        await client.login()
        assert await client.invoke("victim", {}) == "victim"
        victim_pids = host_processes(str(functions / "victim.py"))  # its launcher's too
        assert victim_pids
        got = await client.invoke(
            "probe",
            {
                "what": "proc",
                "secrets": [secret, env_secret],
                "victim": str(functions / "victim.py"),
                "victim_pids": victim_pids,
                "engine_pid": process.pid,
            },
        )
        assert got == {
            "found": [],
            "own_environ": [],
            "victim_seen": [],
            "victim_reached": [],
            "engine_reached": [],
        }
        assert await client.invoke("probe", {"what": "signal", "engine_pid": process.pid}) == []
        assert await client.invoke("victim", {}) == "victim"  # still serving
        assert process.returncode is None
    assert any(line.strip().startswith("containment: on") for line in banner), banner


# -- memory: the whole tree, busy or idle ----------------------------------------------------


@needs_containment
async def test_memory_limit_covers_children_while_the_function_runs(functions: Path) -> None:
    """Detached children that together hold more than the limit fail the job as a memory death."""
    async with engine_api(functions) as (api, token):
        reply = await api.invoke(
            token, "spawner", {"what": "hold", "children": 3, "mb": MEMORY_MB // 2}
        )
        assert reply.status == 400, reply
        assert reply.error_msg == (
            f"cloud function 'spawner' exceeded its memory limit of {MEMORY_MB} MB and was killed"
        )
        await wait_all_gone(functions)


@needs_containment
async def test_memory_limit_holds_while_the_worker_is_idle(functions: Path) -> None:
    """A child left behind that grows after the function returned cannot pass the tree's limit;
    the worker whose tree hit it is replaced."""
    progress = functions / "progress.txt"
    async with engine_api(functions) as (api, token):
        assert (
            data_of(await api.invoke(token, "spawner", {"what": "grow", "mb": 3 * MEMORY_MB})) == 1
        )
        await wait_escapees(functions, 1)
        await wait_all_gone(functions)  # killed by the kernel at the limit
        steps = progress.read_text().split()
        assert "done" not in steps
        assert max(map(int, steps)) <= MEMORY_MB
        # The worker whose tree ran out is not reused: a fresh one counts from 1 again.
        assert data_of(await api.invoke(token, "spawner", {"what": "none"})) == 1


# -- functions cannot see the engine or each other --------------------------------------------


@needs_containment
async def test_no_network_not_even_the_engines_port(functions: Path) -> None:
    """No TCP connection to the engine's own 127.0.0.1 port or another local listener; the
    worker has no network interface but a loopback that is down."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        other_port = listener.getsockname()[1]
        async with engine_api(functions) as (api, token):
            engine_port = int(api.engine.url.rsplit(":", 1)[1])
            got = data_of(
                await api.invoke(
                    token, "probe", {"what": "connect", "ports": [engine_port, other_port]}
                )
            )
    assert got == {"ports": {str(engine_port): False, str(other_port): False}, "interfaces": ["lo"]}


@needs_containment
async def test_tmp_is_private_to_each_worker(functions: Path) -> None:
    """A file one function writes to /tmp is seen neither by another function nor the host."""
    name = "left-by-probe-" + secrets.token_hex(6)
    async with engine_api(functions) as (api, token):
        listing = data_of(await api.invoke(token, "probe", {"what": "write_tmp", "name": name}))
        assert name in listing
        assert data_of(await api.invoke(token, "victim", {"tmp": name})) is False
        assert not await anyio.Path(f"/tmp/{name}").exists()


@needs_containment
async def test_the_engines_state_folder_is_hidden(functions: Path) -> None:
    """The engine's state folder in the functions folder (.minapp) shows up empty to functions."""
    (functions / ".minapp").mkdir()
    (functions / ".minapp" / "state.db").write_text("users and tokens", encoding="utf-8")
    async with engine_api(functions) as (api, token):
        assert data_of(await api.invoke(token, "probe", {"what": "state"})) == []


@needs_containment
async def test_in_process_engine_secrets_are_out_of_reach(functions: Path) -> None:
    """Against the in-process Engine: its environment and its process are out of reach."""
    marker = "MINAPP_TEST_" + secrets.token_hex(6)
    async with engine_api(functions) as (api, token):
        assert data_of(await api.invoke(token, "victim", {})) == "victim"
        victim_pids = host_processes(str(functions / "victim.py"))  # its launcher's too
        assert victim_pids
        got = data_of(
            await api.invoke(
                token,
                "probe",
                {
                    "what": "proc",
                    "secrets": [api.engine.client_secret, marker],
                    "victim": str(functions / "victim.py"),
                    "victim_pids": victim_pids,
                    "engine_pid": os.getpid(),
                },
            )
        )
    assert got["found"] == [] and got["victim_seen"] == [] and got["victim_reached"] == []
    assert got["engine_reached"] == []


# -- where containment is off or unavailable ----------------------------------------------------


async def test_uncontained_engine_runs_functions_and_says_so_once(
    functions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With containment turned off the engine still runs functions, and logs one warning at
    start-up naming what it does not enforce."""
    caplog.set_level(logging.INFO, logger="minapp_async.engine")
    async with engine_api(functions, contain_functions=False) as (api, token):
        assert data_of(await api.invoke(token, "victim", {})) == "victim"
        assert data_of(await api.invoke(token, "spawner", {"what": "none"})) == 1
        assert data_of(await api.invoke(token, "spawner", {"what": "none"})) == 2
    records = [r for r in caplog.records if "containment" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith("function containment is incomplete: containment is turned off")
    assert "see and signal the engine" in message
    assert "use the network" in message
    assert "share /tmp" in message


@needs_containment
async def test_contained_engine_says_so_once_at_info(
    functions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fully contained, the start-up line is information, not a warning."""
    caplog.set_level(logging.INFO, logger="minapp_async.engine")
    async with engine_api(functions) as (api, token):
        assert data_of(await api.invoke(token, "victim", {})) == "victim"
    records = [r for r in caplog.records if "contain" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in records] == [
        (logging.INFO, "functions are contained")
    ]


async def test_serve_without_containment_says_so_in_its_banner(functions: Path) -> None:
    """``serve --no-contain`` runs functions and its banner says what is not enforced."""
    async with (
        serve(functions, "--no-contain") as (_process, url, banner),
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        (line,) = [line for line in banner if line.strip().startswith("containment:")]
        assert "containment is turned off" in line
        client = ServeClient(http, url)
        await client.login()
        assert await client.invoke("victim", {}) == "victim"


@needs_containment
async def test_a_venv_python_under_tmp_runs_contained(functions: Path, tmp_path: Path) -> None:
    """A worker Python from a venv under /tmp (a symlink into the base install) still starts,
    with its venv, although /tmp is covered by the worker's own."""
    venv = tmp_path / "venv"
    done = await anyio.run_process([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert done.returncode == 0
    (functions / "prefix.py").write_text(
        "import sys\n\ndef main(event):\n    return [sys.executable, sys.prefix]\n"
    )
    runtime = Runtime(functions, python=str(venv / "bin" / "python"))
    try:
        outcome = await runtime.run("prefix", {"data": None}, time_limit=10)
    finally:
        await runtime.aclose()
    assert outcome.result == {
        "code": 0,
        "data": [str(venv / "bin" / "python"), str(venv)],
        "error": {},
    }, outcome
