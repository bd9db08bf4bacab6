"""examples/fanout_batch.py: a lazily read input fanned out with bounded concurrency."""

from __future__ import annotations

import pytest
from _local import Target
from examples_support import run_script
from fanout_batch import run

from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio


async def test_every_item_runs_once_within_the_bound(engine: Engine, target: Target) -> None:
    """200 items at concurrency 8: all ok, each run once, never more than 8 at a time."""
    assert (200, 0) == await run(target, items=200, concurrency=8)

    stats = engine.stats().functions["helloWorld"]
    assert 200 == stats.executions
    assert stats.peak_in_flight <= 8


async def test_the_script_runs_to_completion() -> None:
    """python examples/fanout_batch.py starts its own engine and reports the batch."""
    done = await run_script("fanout_batch.py", "--items", "50", "--concurrency", "8")

    assert 0 == done.returncode, done.stderr
    assert "done: 50 items, 50 ok, 0 failed" in done.stdout.decode()
