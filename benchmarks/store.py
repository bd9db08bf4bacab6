"""Async-job acceptance into the durable state store, as the queue grows to 100,000 jobs.

Each accept is committed before it returns (as an async job's ``{"status": "ok"}`` must be);
``--concurrency`` callers accept at once, as that many HTTP handlers would, so the writer
thread commits them in groups. Every 10,000 accepted jobs the rate of that block is printed
with its ratio to the first block (engine speed issue: the second within 0.8x of the first).

    python benchmarks/store.py [--jobs 100000] [--block 10000] [--concurrency 64] [--full] [--random-ids]
    python benchmarks/store.py --sync     # CPU per sync call that record() adds
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - puts the checkout first on sys.path

from minapp_async.engine._store import EndedJob, Store, new_job_id

PARAMS = {"name": "allen", "n": 1}
RESULT = {"code": 0, "data": {"message": "hello allen"}, "error": {}}


async def sync_records(store: Store, count: int, concurrency: int) -> None:
    """What the sync path adds: one record() per call, not waited for, as the engine would
    write it after the call; printed as CPU per call, the loop thread's and the total."""

    async def caller(calls: int, write: bool) -> None:
        for _ in range(calls):
            began = time.time()
            await asyncio.sleep(0)  # the call itself happens here
            if not write:
                continue
            await store.record(
                EndedJob(
                    id=new_job_id(),
                    function_name="helloWorld",
                    sync=True,
                    source="sdk",
                    request_id="r",
                    params=PARAMS,
                    status="fulfilled",
                    created_at=began,
                    started_at=began,
                    result=RESULT,
                    execution_time_ms=1.0,
                    mem_usage=40_000_000,
                ),
            )

    for write in (False, True, False, True):
        cpu, loop_cpu = time.process_time(), time.thread_time()
        await asyncio.gather(*(caller(count // concurrency, write) for _ in range(concurrency)))
        await store.flush()
        total = (time.process_time() - cpu) / count * 1e6
        on_loop = (time.thread_time() - loop_cpu) / count * 1e6
        print(
            f"{'with record()' if write else 'no record    '}: {on_loop:5.1f} us/call on the "
            f"event loop thread, {total:5.1f} us/call in all threads"
        )


async def accept_block(
    store: Store, start: int, count: int, concurrency: int, random_ids: bool
) -> tuple[float, float]:
    """Accept *count* jobs with *concurrency* callers; the wall and CPU seconds it took."""
    next_index = start
    end = start + count

    async def caller() -> None:
        nonlocal next_index
        while next_index < end:
            next_index += 1
            await store.accept(
                secrets.token_hex(16) if random_ids else new_job_id(),
                "helloWorld",
                sync=False,
                source="sdk",
                request_id=secrets.token_hex(8),
                params=PARAMS,
                user_id=91464885772601,
            )

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - began, time.process_time() - cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--block", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--random-ids", action="store_true", help="random job ids instead of new_job_id()"
    )
    parser.add_argument(
        "--sync", action="store_true", help="measure sync-call records instead (see below)"
    )
    parser.add_argument("--full", action="store_true", help="synchronous=FULL (fsync a batch)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.sqlite3"
        store = await Store.open(path, durability="full" if args.full else "normal")
        print(
            f"python {sys.version.split()[0]}, sqlite, {path.name} in a temp folder, "
            f"synchronous={'FULL' if args.full else 'NORMAL'}, concurrency {args.concurrency}, "
            f"{'random' if args.random_ids else 'time-ordered'} job ids"
        )
        first_rate = first_cpu = 0.0
        if args.sync:
            try:
                await sync_records(store, 20_000, 8)
            finally:
                await store.aclose()
            return
        print("(CPU: this process, both threads, per accept: steadier than wall time on a")
        print(" shared machine; the ratios are the first block's cost over this block's)")
        try:
            for start in range(0, args.jobs, args.block):
                wall, cpu = await accept_block(
                    store, start, args.block, args.concurrency, args.random_ids
                )
                rate, cpu_us = args.block / wall, cpu / args.block * 1e6
                first_rate, first_cpu = first_rate or rate, first_cpu or cpu_us
                print(
                    f"jobs {start + 1:>7,}-{start + args.block:>7,}: {rate:>7,.0f} accepts/s "
                    f"{rate / first_rate:4.2f}x | CPU {cpu_us:5.1f} us/accept "
                    f"{first_cpu / cpu_us:4.2f}x | queued {store.stats.waiting:,}"
                )
        finally:
            await store.aclose()
        print(f"file size at the end: {path.stat().st_size / 2**20:.1f} MiB (+ WAL)")


if __name__ == "__main__":
    asyncio.run(main())
