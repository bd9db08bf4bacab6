"""Throughput and client CPU: ``session.map`` against raw aiohttp and httpx, side by side.

Each client makes the same sync helloWorld invocations (same JSON body, same headers) at the
same concurrency against one local job server (``benchmarks/server.py``, its own process, so
its CPU is not the client's). Rounds alternate the clients so that a noisy neighbour hits all
of them alike; the median round is reported. Client CPU is this process's user + system time.

    python benchmarks/throughput.py                       # 20,000 calls, concurrency 64
    python benchmarks/throughput.py --calls 5000 --rounds 1

httpx is measured over ``--httpx-calls`` (3,000) calls: it runs at a few hundred calls/s here.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common
import aiohttp
import httpx

import minapp_async
from minapp_async._constants import CLIENT_VERSION, DEFAULT_PLATFORM, SDK_TYPE, USER_AGENT

PATH = "/hserve/v1/cloud-function/job/"
BODY = {"function_name": _common.FUNCTION, "sync": True, "data": _common.PARAMS}
#: The headers the SDK sends on every client API call, so that the baselines send the same.
HEADERS = {
    "X-Hydrogen-Client-ID": _common.CLIENT_ID,
    "X-Hydrogen-Client-Version": CLIENT_VERSION,
    "X-Hydrogen-Client-Platform": DEFAULT_PLATFORM,
    "X-Hydrogen-Client-SDK-Type": SDK_TYPE,
    "User-Agent": USER_AGENT,
    "Content-Type": "application/json",
    "Accept": "application/json",
    "Authorization": f"Hydrogen-r1 {_common.TOKEN}",
}

Client = Callable[[str, int, int], Awaitable[int]]


def _check(reply: Any) -> int:
    return 1 if reply.get("code") == 0 and reply.get("data") == "hello allen" else 0


async def sdk_map(url: str, calls: int, concurrency: int) -> int:
    """minapp_async: ``session.map`` over a generator."""
    ok = 0
    async with minapp_async.Session(_common.CLIENT_ID, base_url=url, token=_common.TOKEN) as s:
        params = (_common.PARAMS for _ in range(calls))
        async with s.map(_common.FUNCTION, params, concurrency=concurrency) as outcomes:
            async for o in outcomes:
                ok += o.ok and o.result is not None and o.result.data == "hello allen"
    return ok


async def sdk_invoke(url: str, calls: int, concurrency: int) -> int:
    """minapp_async without map: ``session.invoke`` with a semaphore and gather, as a user
    would write it; the difference to ``map`` is the cost of the fan-out itself."""
    sem = asyncio.Semaphore(concurrency)
    async with minapp_async.Session(_common.CLIENT_ID, base_url=url, token=_common.TOKEN) as s:

        async def one() -> int:
            async with sem:
                result = await s.invoke(_common.FUNCTION, _common.PARAMS)
                return 1 if result.ok and result.data == "hello allen" else 0

        return sum(await asyncio.gather(*(one() for _ in range(calls))))


async def raw_aiohttp(url: str, calls: int, concurrency: int) -> int:
    """aiohttp as users write it: one ClientSession, a semaphore, gather."""
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(base_url=url, headers=HEADERS) as client:

        async def one() -> int:
            async with sem:
                # Serialised per call, as each call's params would be.
                body = json.dumps(BODY, separators=(",", ":")).encode()
                async with client.post(PATH, data=body) as resp:
                    return _check(json.loads(await resp.read()))

        return sum(await asyncio.gather(*(one() for _ in range(calls))))


async def raw_httpx(url: str, calls: int, concurrency: int) -> int:
    """httpx.AsyncClient, for reference: a semaphore, gather."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, limits=limits) as client:

        async def one() -> int:
            async with sem:
                body = json.dumps(BODY, separators=(",", ":")).encode()
                resp = await client.post(PATH, content=body)
                return _check(json.loads(resp.content))

        return sum(await asyncio.gather(*(one() for _ in range(calls))))


CLIENTS: dict[str, Client] = {
    "minapp_async map": sdk_map,
    "minapp_async invoke": sdk_invoke,
    "raw aiohttp": raw_aiohttp,
    "httpx": raw_httpx,
}
BASELINE = "raw aiohttp"


async def measure(client: Client, url: str, calls: int, concurrency: int) -> tuple[float, float]:
    """Wall seconds and client CPU seconds for *calls* invocations."""
    gc.collect()
    cpu, wall = _common.cpu_seconds(), time.perf_counter()
    ok = await client(url, calls, concurrency)
    wall, cpu = time.perf_counter() - wall, _common.cpu_seconds() - cpu
    if ok != calls:
        raise SystemExit(f"only {ok} of {calls} calls got the expected reply")
    return wall, cpu


async def bench(
    url: str, calls: int, httpx_calls: int, concurrency: int, rounds: int, only: list[str]
) -> None:
    clients = {name: CLIENTS[name] for name in only}
    # httpx is far slower here (see README): fewer calls keep the run short; rates compare.
    count = {name: httpx_calls if name == "httpx" else calls for name in clients}
    for client in clients.values():  # warm-up: imports, first connections, code paths
        await measure(client, url, 1000, concurrency)
    rates: dict[str, list[float]] = {name: [] for name in clients}
    cpus: dict[str, list[float]] = {name: [] for name in clients}
    for r in range(rounds):
        order = list(clients.items())
        if r % 2:
            order.reverse()
        for name, client in order:
            wall, cpu = await measure(client, url, count[name], concurrency)
            rates[name].append(count[name] / wall)
            cpus[name].append(cpu / count[name] * 1e6)
    rate = {name: statistics.median(v) for name, v in rates.items()}
    cpu_us = {name: statistics.median(v) for name, v in cpus.items()}
    print(f"sync invocations at concurrency {concurrency}, median of {rounds} rounds")
    head = f"{'client':<20} {'calls':>6} {'calls/s':>8} {'vs aiohttp':>10} {'CPU µs/call':>12}"
    print(head + f" {'vs aiohttp':>11}")
    for name in clients:
        ratio = f"{rate[name] / rate[BASELINE]:.2f}x" if BASELINE in rate else "-"
        delta = f"{cpu_us[name] - cpu_us[BASELINE]:+.1f}" if BASELINE in cpu_us else "-"
        print(
            f"{name:<20} {count[name]:>6} {rate[name]:>8.0f} {ratio:>10} {cpu_us[name]:>12.1f} "
            f"{delta:>11}"
        )
    if "minapp_async map" in rate and BASELINE in rate:
        ratio = rate["minapp_async map"] / rate[BASELINE]
        extra = cpu_us["minapp_async map"] - cpu_us[BASELINE]
        print(f"target map >= 0.95x raw aiohttp calls/s: {ratio:.2f}x, {_met(ratio >= 0.95)}")
        print(f"target map CPU <= raw aiohttp + 30 µs/call: {extra:+.1f} µs, {_met(extra <= 30)}")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--httpx-calls", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server-workers", type=int, default=1, help="job server processes")
    parser.add_argument("--only", nargs="+", choices=list(CLIENTS), default=list(CLIENTS))
    args = parser.parse_args()
    print(_common.machine_notes())
    with _common.job_server(args.server_workers) as url:
        asyncio.run(
            bench(url, args.calls, args.httpx_calls, args.concurrency, args.rounds, args.only)
        )


if __name__ == "__main__":
    main()
