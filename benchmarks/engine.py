"""The local engine, end to end: sync helloWorld invocations per second, Node and Python.

Starts ``minapp-async serve`` (its own process, default settings: 10 jobs at once) over the
seed's helloWorld.js and its Python twin, logs in as an anonymous user, and streams
``--calls`` invocations of each through ``session.map``. Besides calls/s and latency, it
splits the CPU each call costs between the client (this process), the engine's HTTP and
job handling (the serve process) and the function workers (its child processes), which
shows where the engine spends its time.

    python benchmarks/engine.py                       # 5,000 calls each, concurrency 32
    python benchmarks/engine.py --calls 500 --concurrency 10
    python benchmarks/engine.py --no-contain          # workers launched uncontained

"cold ms" is the first call of each function: it starts the function's first worker.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

import minapp_async

FUNCTIONS = {
    "helloWorld": ("helloWorld.js", _common.ROOT / "examples/functions/helloWorld.js"),
    "helloPython": ("helloPython.py", _common.ROOT / "examples/functions/hello_py.py"),
}


def start_engine(functions: Path, extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "minapp_async", "serve", "--functions", str(functions),
         "--port", "0", "--allow-anonymous", "--log-level", "warning", *extra],
        stdout=subprocess.PIPE,
        text=True,
        cwd=_common.ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
        if match:
            return process, match[1]
    raise RuntimeError("the engine did not start")


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


async def run(url: str, client_id: str, pid: int, calls: int, concurrency: int) -> None:
    async with minapp_async.Session(client_id, base_url=url) as s:
        await s.auth.anonymous_login()
        header = f"{'runtime':<8} {'cold ms':>7} {'calls/s':>8} {'p50 ms':>7} {'p95 ms':>7}"
        print(header + "   CPU µs per call: client  engine  workers")
        for name, runtime in (("helloWorld", "Node"), ("helloPython", "Python")):
            cold_started = time.perf_counter()
            await s.invoke(name, {"name": "cold"})
            cold_ms = (time.perf_counter() - cold_started) * 1000
            await s.invoke_many(name, [{"name": "allen"}] * 50, concurrency=concurrency)
            workers = _common.children(pid)
            before = (
                _common.cpu_seconds(),
                _common.cpu_seconds(pid),
                sum(_common.cpu_seconds(w) for w in workers),
            )
            params = ({"name": f"user{i}"} for i in range(calls))
            batch = await s.invoke_many(name, params, concurrency=concurrency)
            workers_now = _common.children(pid)
            after = (
                _common.cpu_seconds(),
                _common.cpu_seconds(pid),
                # Workers spawned during the run count from zero; ones that exited are lost.
                sum(_common.cpu_seconds(w) for w in workers_now),
            )
            summary = batch.summary
            if summary.ok != calls:
                raise SystemExit(f"{name}: {summary}")
            client, engine, work = (
                (a - b) / calls * 1e6 for a, b in zip(after, before, strict=True)
            )
            print(
                f"{runtime:<8} {cold_ms:>7.1f} {summary.calls_per_second:>8.0f} "
                f"{summary.latency_p50 * 1000:>7.1f} {summary.latency_p95 * 1000:>7.1f}   "
                f"{'':>16}{client:>6.0f} {engine:>7.0f} {work:>8.0f}"
            )
        print(f"workers alive at the end: {len(_common.children(pid))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-contain", action="store_true", help="serve --no-contain")
    args = parser.parse_args()
    print(_common.machine_notes())
    node = shutil.which("node")
    version = subprocess.run(
        [node or "node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"Node {version}; engine defaults (10 jobs at once); client concurrency "
        f"{args.concurrency}; functions {'uncontained' if args.no_contain else 'contained'}"
    )
    with tempfile.TemporaryDirectory(prefix="minapp-bench-") as tmp:
        for target, source in FUNCTIONS.values():
            shutil.copy(source, Path(tmp) / target)
        process, url = start_engine(Path(tmp), ["--no-contain"] if args.no_contain else [])
        try:
            from minapp_async.engine import DEFAULT_CLIENT_ID

            started = time.perf_counter()
            asyncio.run(run(url, DEFAULT_CLIENT_ID, process.pid, args.calls, args.concurrency))
            print(f"total {time.perf_counter() - started:.1f} s")
        finally:
            stop(process)


if __name__ == "__main__":
    main()
