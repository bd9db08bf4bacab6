"""An asyncio worker: N tasks take jobs from a queue and invoke a cloud function for each.

    python examples/queue_worker.py --jobs 20 --workers 4

A producer puts names on an ``asyncio.Queue``; each worker invokes ``helloWorld`` with one and
records the outcome. Shutdown is clean either way: when the queue is drained (``queue.join()``)
the workers are cancelled, and on Ctrl-C the task group cancels them in the middle of a call,
which cancels its HTTP request. The Session closes after the workers, releasing the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import anyio
from _local import Target, add_target_arguments, target

import minapp_async


async def worker(
    session: minapp_async.Session, queue: asyncio.Queue[str], results: dict[str, str]
) -> None:
    while True:
        name = await queue.get()
        try:
            result = await session.invoke("helloWorld", {"name": name})
            results[name] = str(result.data) if result.ok else f"failed: {result.error}"
        except minapp_async.HError as err:  # one failed call must not stop the worker
            results[name] = f"error: {err}"
        finally:
            queue.task_done()


async def run(app_target: Target, jobs: int, workers: int) -> dict[str, str]:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=workers * 2)  # bounded: back-pressure
    results: dict[str, str] = {}
    async with minapp_async.Session(
        app_target.client_id, base_url=app_target.base_url, credentials=app_target.credentials
    ) as session:
        # A task group owns the workers: none outlives this block, on success, error or Ctrl-C.
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker, session, queue, results)
            for i in range(jobs):
                await queue.put(f"user-{i}")  # waits while the queue is full
            await queue.join()  # every job taken and done
            tg.cancel_scope.cancel()  # the workers now wait on an empty queue: stop them
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    add_target_arguments(parser)
    args = parser.parse_args()
    async with target(args) as app_target:
        results = await run(app_target, args.jobs, args.workers)
    for name, outcome in results.items():
        print(f"{name}: {outcome}")
    print(f"done: {len(results)} jobs, {sum(r.startswith('hello') for r in results.values())} ok")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
