"""Memory: peak RSS growth while ``session.map`` streams invocations from a generator.

Each measurement runs in a fresh process against the local job server: after a warm-up (pool,
first calls, caches), the peak RSS is reset to the current RSS, then N items stream through
``map`` from a generator; the growth is the new peak minus that baseline. It should be small
and the same at 50,000 and 200,000 items. For contrast, ``--naive`` also measures what users
of other SDKs write: ``asyncio.gather`` over one coroutine per item, with a semaphore.

    python benchmarks/memory.py                  # map at 50,000 and 200,000 items
    python benchmarks/memory.py --naive          # plus gather at 50,000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys

import _common

import minapp_async

TARGET_MB = 50


async def child(url: str, items: int, naive: bool, concurrency: int) -> dict[str, float]:
    async with minapp_async.Session(_common.CLIENT_ID, base_url=url, token=_common.TOKEN) as s:

        async def streamed(n: int) -> int:
            ok = 0
            params = ({"name": "allen", "i": i} for i in range(n))
            async with s.map(_common.FUNCTION, params, concurrency=concurrency) as outcomes:
                async for o in outcomes:
                    ok += o.ok
            return ok

        async def gathered(n: int) -> int:
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> bool:
                async with sem:
                    return (await s.invoke(_common.FUNCTION, {"name": "allen", "i": i})).ok

            return sum(await asyncio.gather(*(one(i) for i in range(n))))

        run = gathered if naive else streamed
        await run(2000)  # warm-up
        gc.collect()
        baseline = _common.status_kib("VmRSS")
        exact = _common.reset_peak_rss()
        ok = await run(items)
        peak = _common.status_kib("VmHWM")
        if ok != items:
            raise SystemExit(f"only {ok} of {items} calls succeeded")
    return {"baseline_mb": baseline / 1024, "growth_mb": (peak - baseline) / 1024, "exact": exact}


def measure(url: str, items: int, naive: bool, concurrency: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--child", str(items), "--url", url]
    args += ["--concurrency", str(concurrency)] + (["--naive"] if naive else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--naive", action="store_true", help="also gather at the first size")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = asyncio.run(child(args.url, args.child, args.naive, args.concurrency))
        print(json.dumps(result))
        return
    print(_common.machine_notes())
    print(f"peak RSS growth streaming sync invocations at concurrency {args.concurrency}")
    print(f"{'how':<26} {'items':>8} {'baseline MB':>12} {'growth MB':>10}")
    with _common.job_server() as url:
        runs = [("session.map(generator)", n, False) for n in args.sizes]
        if args.naive:
            runs.append(("gather + semaphore", args.sizes[0], True))
        for label, n, naive in runs:
            r = measure(url, n, naive, args.concurrency)
            note = "" if r["exact"] else " (peak not resettable: growth since start)"
            print(f"{label:<26} {n:>8} {r['baseline_mb']:>12.1f} {r['growth_mb']:>10.1f}{note}")
    print(f"target: map growth <= {TARGET_MB} MB and flat in the number of items")


if __name__ == "__main__":
    main()
