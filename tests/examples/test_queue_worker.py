"""examples/queue_worker.py: N workers invoking from an asyncio.Queue, clean shutdown."""

from __future__ import annotations

import anyio
import pytest
from _local import Target
from examples_support import run_script
from queue_worker import run

from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio


async def test_every_job_is_done_by_at_most_n_workers(engine: Engine, target: Target) -> None:
    """30 jobs through 3 workers: every one answered, never more than 3 calls at once."""
    results = await run(target, jobs=30, workers=3)
    assert {f"user-{i}": f"hello user-{i}" for i in range(30)} == results
    stats = engine.stats().functions["helloWorld"]
    assert 30 == stats.executions
    assert stats.peak_in_flight <= 3


async def test_cancelling_stops_the_workers_and_closes_the_session(
    engine: Engine, target: Target
) -> None:
    """Cancelled mid-stream (as Ctrl-C does), run() returns no later than told, nothing left."""
    with anyio.move_on_after(1) as scope:
        await run(target, jobs=1_000_000, workers=4)
    assert scope.cancelled_caught
    await engine.drain(timeout=30)  # calls cut off mid-flight settle; no task is left behind
    assert 0 == engine.stats().requests_in_flight


async def test_the_script_runs_to_completion() -> None:
    """python examples/queue_worker.py starts its own engine and reports every job done."""
    done = await run_script("queue_worker.py", "--jobs", "12", "--workers", "3")
    output = done.stdout.decode()
    assert 0 == done.returncode, done.stderr
    assert output.rstrip().endswith("done: 12 jobs, 12 ok")
    assert "user-11: hello user-11" in output
