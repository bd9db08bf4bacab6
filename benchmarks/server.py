"""The benchmarks' job server: answers the client API's job endpoint without running anything.

``POST /hserve/v1/cloud-function/job/`` gets ``{"code":0,"data":"hello allen","error":{}}``,
so what a benchmark measures is the client. Started by the benchmark scripts in its own
process (``--workers N`` runs N processes sharing the port); prints its URL on the first line.

    python benchmarks/server.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket

from aiohttp import web

BODY = b'{"code":0,"data":"hello allen","error":{}}'


async def job(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def serve(sock: socket.socket) -> None:
    app = web.Application()
    app.router.add_post("/hserve/v1/cloud-function/job/", job)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(sock: socket.socket) -> None:
    asyncio.run(serve(sock))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]} pid {os.getpid()}", flush=True)
    if args.workers == 1:
        run(sock)
        return
    # Forked workers accept on the one listening socket.
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=run, args=(sock,)) for _ in range(args.workers)]
    for p in procs:
        p.start()
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs])
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
