"""The main demo: the seed's helloWorld, invoked sync and async on the local engine.

    python examples/demo.py

It starts the local cloud engine over examples/functions/ (on 127.0.0.1, a free port), logs in
as a user (by default only logged-in, non-anonymous users may invoke), and calls helloWorld the
way the mini-program seed does: ``BaaS.invoke('helloWorld', {name: 'allen'})``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import minapp_async
from minapp_async.engine import Engine

FUNCTIONS = Path(__file__).parent / "functions"


def show(label: str, result: minapp_async.InvokeResult) -> None:
    envelope = {"code": result.code, "data": result.data, "error": result.error}
    print(f"{label:<6} {json.dumps(envelope, ensure_ascii=False)}")


async def main() -> None:
    async with Engine(functions_dir=FUNCTIONS) as engine:
        print(f"local engine on {engine.url} (client id {engine.client_id})")
        engine.create_user(username="allen", password="demo-password")

        async with minapp_async.Session(engine.client_id, base_url=engine.url) as session:
            await session.auth.login(username="allen", password="demo-password")

            # sync=True (the default): wait for the function's result; it gets 5 s.
            show("sync", await session.invoke("helloWorld", {"name": "allen"}))

            # sync=False: returns once the job is accepted; the function gets 300 s.
            show("async", await session.invoke("helloWorld", {"name": "allen"}, False))

            # The same call, promise style, as ported mini-program code would write it.
            await session.invoke("helloWorld", {"name": "allen"}).then(
                lambda res: print(f"{'then':<6} {res.data}"),
                lambda err: print(f"{'catch':<6} {err}"),
            )

        await engine.drain(timeout=10)
        job = (await engine.jobs("helloWorld"))[1]  # the async one, run in the background
        print(f"{'job':<6} {job.id} {job.status}: {json.dumps(job.result)}")


if __name__ == "__main__":
    asyncio.run(main())
