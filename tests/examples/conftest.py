"""The examples are scripts beside their helper, examples/_local.py: make them importable."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

from _local import FUNCTIONS, Target

from minapp_async import UserCredentials
from minapp_async.engine import Engine
from minapp_async.testing import running_engine


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """A local engine over examples/functions/, as the examples start by themselves."""
    async with running_engine(FUNCTIONS) as engine:
        yield engine


@pytest.fixture(name="target")
def _target(engine: Engine) -> Target:
    """The engine's app, with a service user the examples log in as."""
    engine.create_user(username="service", password="service-pw")
    return Target(
        engine.url, engine.client_id, UserCredentials(username="service", password="service-pw")
    )
