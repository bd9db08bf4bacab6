"""Engine CPU to read a big result from a worker: linear in its size, or not.

Runs a Python function returning a string of N MiB on the engine's runtime, in this process,
and prints the CPU this process spent per run (the worker's own CPU is its process's, not
counted), for 8 MiB and 31 MiB (just under the 32 MiB cap). Linear reading gives a ratio
near 31/8 ≈ 3.9; the old quadratic buffer gave ~11.

    python benchmarks/big_result.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - puts the checkout first on sys.path

from minapp_async.engine.runtime import Runtime

SOURCE = "def main(event):\n    return 'a' * event['data']['n']\n"
MiB = 1024 * 1024


async def measure(runs: int, folder: str) -> None:
    runtime = Runtime(Path(folder), memory_limit_mb=1024)
    try:
        await runtime.run("big", {"data": {"n": 1}}, time_limit=60)  # a warm worker
        figures = {}
        for size in (8, 31):
            best = float("inf")
            for _ in range(runs):
                started = time.process_time()
                outcome = await runtime.run("big", {"data": {"n": size * MiB}}, time_limit=60)
                best = min(best, time.process_time() - started)
                assert outcome.result is not None and len(outcome.result["data"]) == size * MiB
            figures[size] = best
            print(f"{size:3d} MiB result: {best * 1000:7.0f} ms engine CPU (best of {runs})")
        print(f"31 MiB / 8 MiB CPU: {figures[31] / figures[8]:.1f}x (linear: ~3.9x)")
    finally:
        await runtime.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "big.py").write_text(SOURCE)
        asyncio.run(measure(parser.parse_args().runs, folder))


if __name__ == "__main__":
    main()
