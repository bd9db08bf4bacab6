"""A fan-out batch: invoke a cloud function once per item of a large input, bounded.

    python examples/fanout_batch.py --items 2000 --concurrency 32

The input is a generator, read lazily: ``session.map`` takes an item only when it has room for
it, so the batch runs in constant memory however long the input is. At most ``--concurrency``
calls are in flight; outcomes come back in input order, failures included
(``errors="collect"``). When the outcomes fit in memory, ``session.invoke_many`` returns them
all with a summary (counts, latency percentiles) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator

from _local import Target, add_target_arguments, target

import minapp_async


def users(count: int) -> Iterator[dict[str, str]]:
    """The batch's input: in real life, rows streamed from a database or a file."""
    for i in range(count):
        yield {"name": f"user-{i}"}


async def run(app_target: Target, items: int, concurrency: int) -> tuple[int, int]:
    """Invoke helloWorld for every user; return (ok, failed)."""
    ok = failed = 0
    async with minapp_async.Session(
        app_target.client_id, base_url=app_target.base_url, credentials=app_target.credentials
    ) as session:
        # `async with` closes the fan-out deterministically, even on break or Ctrl-C.
        async with session.map(
            "helloWorld", users(items), concurrency=concurrency, errors="collect"
        ) as outcomes:
            async for outcome in outcomes:  # in input order; nothing is kept once counted
                if outcome.ok:
                    ok += 1
                else:
                    failed += 1
                    problem = outcome.error or (outcome.result and outcome.result.error)
                    print(f"item {outcome.index} failed: {problem}")
    return ok, failed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    add_target_arguments(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    async with target(args) as app_target:
        ok, failed = await run(app_target, args.items, args.concurrency)
    print(
        f"done: {args.items} items, {ok} ok, {failed} failed in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
