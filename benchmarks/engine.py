"""The local engine against two anchors: sync helloWorld calls side by side, in one run.

Starts ``minapp-async serve`` over the seed's helloWorld.js and its Python twin, Google's
``@google-cloud/functions-framework`` serving the same helloWorld.js over HTTP
(``benchmarks/anchors/ff_hello.js``) and a bare ``node:http`` server calling it in-process
(``benchmarks/anchors/bare_hello.js``). One raw aiohttp load generator (this process, pinned
to the first CPU; every server and its workers on the last) sends the same calls to each, the
targets taking turns round by round. Engine calls go through the client API as a registered,
logged-in user (the real auth check; each call writes a job record).

    npm ci --prefix benchmarks                   # the anchors, from the pinned lock file
    python benchmarks/engine.py                  # throughput at c=8, p50 at c=1, cold start
    python benchmarks/engine.py --cli            # + `minapp-async invoke` against `import aiohttp`
    python benchmarks/engine.py --queue 100000   # + async acceptance up to 100,000 queued jobs
    python benchmarks/engine.py --serve-arg=--no-contain   # workers launched uncontained
    python benchmarks/engine.py --no-pin         # no CPU pinning: the scheduler places all

Every figure is printed as a ratio to an anchor, with the goal of the engine speed issue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common
import aiohttp

from minapp_async._protocol import CLIENT_ID_HEADER, CLIENT_JOB_PATH, REGISTER_PATH

HELLO_JS = _common.ROOT / "examples/functions/helloWorld.js"
HELLO_PY = _common.ROOT / "examples/functions/hello_py.py"
ANCHORS = _common.HERE / "anchors"
FF_BIN = _common.HERE / "node_modules/.bin/functions-framework"
CLIENT_ID = "a4d2d62965ddb57fa4d6"

_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
PINNED = len(_CPUS) >= 2
SERVER_CPUS = _CPUS[-1:]
CLIENT_CPUS = _CPUS[:-1]


def _pin_server() -> None:  # runs in the child before exec: the server and all it starts
    if PINNED:
        os.sched_setaffinity(0, SERVER_CPUS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[str], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@contextmanager
def _started(
    command: list[str], *, pattern: str | None, port: int | None = None, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE if pattern else subprocess.DEVNULL,
        text=True,
        cwd=_common.ROOT,
        env={**os.environ, **env},
        preexec_fn=_pin_server,  # noqa: PLW1509 - only sched_setaffinity, no locks
    )
    try:
        if pattern is not None:
            assert process.stdout is not None
            for line in process.stdout:
                match = re.search(pattern, line)
                if match:
                    url = match[1]
                    break
            else:
                raise RuntimeError(f"{command[0]} did not start")
            # Keep reading what it prints: a full pipe would stop the server mid-run.
            threading.Thread(target=process.stdout.read, daemon=True).start()
        else:
            assert port is not None
            _wait_port(port, process)
            url = f"http://127.0.0.1:{port}"
        yield process, url
    finally:
        _stop(process)


def engine_command(functions: Path, *extra: str) -> list[str]:
    # --quiet: no line per job on the terminal (the anchors print nothing either).
    quiet = ["--quiet"] if _has_flag("--quiet") else []
    return [
        sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
        "--port", "0", "--client-id", CLIENT_ID, "--log-level", "warning", *quiet, *extra,
    ]  # fmt: skip


@contextmanager
def engine(functions: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with _started(
        engine_command(functions, *extra), pattern=r"serving (http://127\.0\.0\.1:\d+)", env={}
    ) as started:
        yield started


# ---------------------------------------------------------------- the load generator


class Target:
    """One server and the request that calls helloWorld on it."""

    def __init__(self, name: str, url: str, body: dict[str, Any], headers: dict[str, str]):
        self.name, self.url, self.headers = name, url, headers
        self.body = json.dumps(body).encode()
        self.rates: list[float] = []
        self.p50s: list[float] = []


async def _call(http: aiohttp.ClientSession, target: Target) -> None:
    async with http.post(target.url, data=target.body, headers=target.headers) as response:
        raw = await response.read()
    if response.status != 200 or json.loads(raw).get("code") != 0:
        raise RuntimeError(f"{target.name}: HTTP {response.status} {raw[:200]!r}")


async def load(
    http: aiohttp.ClientSession, target: Target, calls: int, concurrency: int
) -> tuple[float, list[float]]:
    """Calls/s and each call's latency, for *calls* calls, *concurrency* at a time."""
    left = calls
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            await _call(http, target)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started), latencies


async def register(url: str) -> str:
    """A new registered user's token (the engine's real login, no anonymous switch)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/{REGISTER_PATH.format(kind='username')}",
            json={"username": f"bench{time.monotonic_ns()}", "password": "bench-password"},
            headers={CLIENT_ID_HEADER: CLIENT_ID},
        ) as response:
            reply = await response.json()
    return str(reply["token"])


def engine_target(name: str, url: str, token: str, function: str) -> Target:
    return Target(
        name,
        f"{url}/{CLIENT_JOB_PATH}",
        {"function_name": function, "data": {"name": "allen"}, "sync": True},
        {CLIENT_ID_HEADER: CLIENT_ID, "Authorization": f"Hydrogen-r1 {token}"},
    )


async def side_by_side(
    targets: Sequence[Target], rounds: int, calls: int, concurrency: int, latency_calls: int
) -> None:
    async def run(target: Target, calls: int, concurrency: int) -> tuple[float, list[float]]:
        # Fresh connections per run: a server may close keep-alive connections left idle
        # while the other targets ran (Node after 5 s, the engine after its idle timeout).
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            try:
                return await load(http, target, calls, concurrency)
            except TimeoutError:
                raise RuntimeError(f"{target.name}: a call took over 30 s") from None

    for target in targets:  # warm-up: workers started, JIT warm
        await run(target, 300, concurrency)
    for round_ in range(rounds):
        shift = round_ % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            rate, _ = await run(target, calls, concurrency)
            target.rates.append(rate)
            _, latencies = await run(target, latency_calls, 1)
            target.p50s.append(statistics.median(latencies))


# ---------------------------------------------------------------- cold start


async def cold_start(
    functions: Path, extra: Sequence[str], *, prestart: bool
) -> list[tuple[str, float, float]]:
    """Per function: the first call after the engine is up (with pre-started workers: after
    a second, for them to start), and a warm call's median (ms)."""
    found = []
    flags = [] if prestart or not _has_flag("--no-prestart") else ["--no-prestart"]
    with engine(functions, *flags, *extra) as (_, url):
        token = await register(url)
        if prestart:
            await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as http:
            for function in ("helloWorld", "helloPython"):
                target = engine_target(function, url, token, function)
                started = time.perf_counter()
                await _call(http, target)
                first = time.perf_counter() - started
                _, warm = await load(http, target, 50, 1)
                found.append((function, first * 1000, statistics.median(warm) * 1000))
    return found


# ---------------------------------------------------------------- async acceptance


#: The --queue run's function: it waits out its time limit, so the execution slots stay busy
#: and every job accepted after the first few stays queued (the queue grows to N).
HOLD_JS = "exports.main = () => new Promise(() => setInterval(() => {}, 60000))\n"


async def queue_run(
    functions: Path, total: int, block: int, extra: Sequence[str], function: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="minapp-bench-state-") as tmp:
        state_file = Path(tmp) / "state.db"
        state = [*extra, "--state", str(state_file)] if _has_flag("--state") else [*extra]
        if len(state) == len(extra):
            print("(serve has no --state here: acceptance measured without durable state)")
        with engine(functions, *state) as (process, url):
            token = await register(url)
            target = engine_target("async", url, token, function)
            target.body = json.dumps(
                {"function_name": function, "data": {"name": "allen"}, "sync": False}
            ).encode()
            connector = aiohttp.TCPConnector(limit=64)
            first = first_cpu = 0.0
            async with aiohttp.ClientSession(connector=connector) as http:
                for start in range(0, total, block):
                    cpu = _common.cpu_seconds(process.pid)
                    started = time.perf_counter()
                    await _accept(http, target, block)
                    rate = block / (time.perf_counter() - started)
                    cpu_us = (_common.cpu_seconds(process.pid) - cpu) / block * 1e6
                    first, first_cpu = first or rate, first_cpu or cpu_us
                    print(
                        f"jobs {start + 1:>7,}-{start + block:>7,}: {rate:>7,.0f} accepts/s "
                        f"{rate / first:>5.2f}x | engine CPU {cpu_us:>4.0f} us/accept "
                        f"{first_cpu / cpu_us:>4.2f}x | "
                        f"queued {_queued(state_file):>7} | RSS {_rss_mb(process.pid):>5.0f} MB"
                    )


def _queued(state_file: Path) -> str:
    """Jobs the state file holds waiting (accepted, not started), read outside the timed
    part through a read-only connection of our own."""
    if not state_file.exists():
        return "?"
    with contextlib.closing(sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE finished_at IS NULL AND status = 'waiting'"
        )
        return f"{row.fetchone()[0]:,}"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _accept(http: aiohttp.ClientSession, target: Target, count: int) -> None:
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with http.post(target.url, data=target.body, headers=target.headers) as r:
                raw = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"async accept: HTTP {r.status} {raw[:200]!r}")

    await asyncio.gather(*(worker() for _ in range(64)))


@functools.cache
def _has_flag(flag: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "minapp_async", "serve", "--help"],
        capture_output=True, text=True, check=False, cwd=_common.ROOT,
    ).stdout  # fmt: skip
    return flag in out


# ---------------------------------------------------------------- the CLI


def cli_run(url: str, token: str, runs: int) -> None:
    """Both commands with compiled bytecode, as from an installed wheel: this checkout may run
    with PYTHONDONTWRITEBYTECODE, which makes every start compile the SDK from source."""
    invoke = (
        f'{sys.executable} -m minapp_async invoke helloWorld --params \'{{"name":"allen"}}\' '
        f"--base-url {url} --client-id {CLIENT_ID}"
    )
    anchor = f'{sys.executable} -c "import aiohttp"'
    with tempfile.TemporaryDirectory(prefix="minapp-bench-pyc-") as pyc:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(MINAPP_TOKEN=token, PYTHONPYCACHEPREFIX=pyc)
        if shutil.which("hyperfine"):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run(
                    ["hyperfine", "--warmup", "3", "--runs", str(runs), "--export-json",
                     out.name, "--style", "none", anchor, invoke],
                    check=True, env=env, stdout=subprocess.DEVNULL,
                )  # fmt: skip
                results = json.loads(Path(out.name).read_text())["results"]
            (a, b), (ca, cb) = (
                [r["median"] * 1000 for r in results],
                [(r["user"] + r["system"]) * 1000 for r in results],
            )
            how = "hyperfine medians; CPU: user + system means"
        else:
            walls, cpus = [], []
            for command in (anchor, invoke):
                samples, cpu = [], []
                for _ in range(runs):
                    before = os.times()
                    started = time.perf_counter()
                    subprocess.run(command, shell=True, check=True, env=env, capture_output=True)
                    samples.append(time.perf_counter() - started)
                    after = os.times()
                    cpu.append(
                        after.children_user + after.children_system
                        - before.children_user - before.children_system
                    )  # fmt: skip
                walls.append(statistics.median(samples) * 1000)
                cpus.append(statistics.median(cpu) * 1000)
            (a, b), (ca, cb) = walls, cpus
            how = "medians of a loop"
    print(f"({how}, {runs} runs each)")
    print(f'python -c "import aiohttp"      wall {a:>7.1f} ms   CPU {ca:>6.1f} ms')
    print(
        f"minapp-async invoke helloWorld  wall {b:>7.1f} ms   CPU {cb:>6.1f} ms   "
        f"{b / a:.2f}x wall, {cb / ca:.2f}x CPU   goal <= 1.2x"
    )


# ---------------------------------------------------------------- main


def _report(targets: dict[str, Target]) -> None:
    med = {k: statistics.median(t.rates) for k, t in targets.items()}
    p50 = {k: statistics.median(t.p50s) * 1000 for k, t in targets.items()}
    print(f"\n{'target':<30} {'calls/s c=8':>11} {'(min-max)':>13} {'p50 ms c=1':>10}")
    for k, t in targets.items():
        span = f"{min(t.rates):.0f}-{max(t.rates):.0f}"
        print(f"{t.name:<30} {med[k]:>11.0f} {span:>13} {p50[k]:>10.2f}")
    checks: list[tuple[str, float, str, Callable[[float], bool]]] = [
        ("engine Node / functions-framework", med["node"] / med["ff"], ">= 1.0", lambda r: r >= 1),
        ("engine Node / bare Node http", med["node"] / med["bare"], ">= 0.5", lambda r: r >= 0.5),
        ("engine Python / engine Node", med["python"] / med["node"], ">= 0.8", lambda r: r >= 0.8),
        ("p50 c=1 engine Node / f-framework", p50["node"] / p50["ff"], "<= 2.0", lambda r: r <= 2),
    ]
    print()
    for label, ratio, goal, ok in checks:
        print(f"{label:<36} {ratio:>5.2f}x  goal {goal}  {'met' if ok(ratio) else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="calls per target per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-calls", type=int, default=200, help="c=1 calls per round")
    parser.add_argument("--cli", action="store_true", help="also time `minapp-async invoke`")
    parser.add_argument("--cli-runs", type=int, default=30)
    parser.add_argument("--queue", type=int, default=0, metavar="N", help="async acceptance to N")
    parser.add_argument("--queue-only", action="store_true", help="only the --queue part")
    parser.add_argument(
        "--queue-runs",
        action="store_true",
        help="queue helloWorld, which runs meanwhile (default: a function that holds its slot "
        "until its time limit, so the queue grows to N)",
    )
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra `serve` argument (repeatable)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="no CPU pinning (load generator and servers)"
    )
    args = parser.parse_args()
    global PINNED
    PINNED = PINNED and not args.no_pin
    if not FF_BIN.exists():
        raise SystemExit("the anchors are not installed: npm ci --prefix benchmarks")
    print(_common.machine_notes())
    node_version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    ff_version = json.loads(
        (_common.HERE / "node_modules/@google-cloud/functions-framework/package.json").read_text()
    )["version"]
    print(f"Node {node_version}, functions-framework {ff_version}; load average {_load()}")
    print("command: python benchmarks/engine.py " + " ".join(sys.argv[1:]))
    if PINNED:
        os.sched_setaffinity(0, CLIENT_CPUS)
        print(f"pinned: load generator on CPU {CLIENT_CPUS}, servers on CPU {SERVER_CPUS}")
    with tempfile.TemporaryDirectory(prefix="minapp-bench-") as tmp:
        functions = Path(tmp)
        shutil.copy(HELLO_JS, functions / "helloWorld.js")
        shutil.copy(HELLO_PY, functions / "helloPython.py")
        if args.queue:
            queue_functions = functions / "queue"  # its own folder: no holdQueue elsewhere
            queue_functions.mkdir()
            shutil.copy(HELLO_JS, queue_functions / "helloWorld.js")
            (queue_functions / "holdQueue.js").write_text(HOLD_JS)
            queued = "helloWorld" if args.queue_runs else "holdQueue"
            print(f"\nasync acceptance, {args.queue:,} jobs of {queued} queued by 64 callers")
            asyncio.run(queue_run(queue_functions, args.queue, 10_000, args.serve_arg, queued))
            if args.queue_only:
                return
        print(
            f"\nsync helloWorld: {args.rounds} rounds x {args.calls} calls at "
            f"c={args.concurrency}, then {args.latency_calls} at c=1, targets in turn"
        )
        started = time.perf_counter()
        port = _free_port()
        env = {"HELLO_JS": str(functions / "helloWorld.js")}
        ff_command = [str(FF_BIN), "--target=helloWorld", f"--source={ANCHORS / 'ff_hello.js'}",
                      f"--port={port}", "--host=127.0.0.1"]  # fmt: skip
        with (
            engine(functions, *args.serve_arg) as (engine_process, engine_url),
            _started(
                ff_command, pattern=None, port=port, env={**env, "NODE_ENV": "production"}
            ) as (_, ff_url),
            _started(
                ["node", str(ANCHORS / "bare_hello.js")], pattern=r"(http://\S+)", env=env
            ) as (_, bare_url),
        ):
            token = asyncio.run(register(engine_url))
            targets = {
                "node": engine_target("engine, Node helloWorld", engine_url, token, "helloWorld"),
                "python": engine_target(
                    "engine, Python helloPython", engine_url, token, "helloPython"
                ),
                "ff": Target("functions-framework", ff_url + "/", {"data": {"name": "allen"}}, {}),
                "bare": Target("bare Node http", bare_url + "/", {"data": {"name": "allen"}}, {}),
            }
            asyncio.run(
                side_by_side(
                    list(targets.values()),
                    args.rounds,
                    args.calls,
                    args.concurrency,
                    args.latency_calls,
                )
            )
            _report(targets)
            if args.cli:
                print("\nCLI wall time against the running engine")
                cli_run(engine_url, token, args.cli_runs)
            del engine_process
        print("\ncold start: a fresh engine, each function's first call against a warm call")
        for prestart in (False, True):
            how = "pre-started workers" if prestart else "--no-prestart"
            for function, first, warm in asyncio.run(
                cold_start(functions, args.serve_arg, prestart=prestart)
            ):
                print(
                    f"{how:<20} {function:<12} first call {first:>7.1f} ms, "
                    f"warm p50 {warm:>5.2f} ms"
                )
        print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {_load()}")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
