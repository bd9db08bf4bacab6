"""Helpers for testing code that uses minapp_async against a real local engine.

``running_engine()`` starts an engine over functions given inline::

    async with running_engine({"echo.py": "def main(event):\\n    return event['data']\\n"}) as engine:
        ...  # point a Session at engine.url with engine.client_id

pytest users get the ``minapp_engine`` fixture by adding to their ``conftest.py``::

    pytest_plugins = ["minapp_async.testing"]

It works in anyio tests (``pytest.mark.anyio``) and under pytest-asyncio, strict mode
(``pytest.mark.asyncio``) or auto mode.

It serves the seed's ``helloWorld`` function; override the ``minapp_engine_functions``
(a ``{filename: source}`` mapping or a folder), ``minapp_engine_config`` (EngineConfig
overrides) and ``minapp_engine_tables`` (``{table: [rows]}`` seeded before the test) fixtures
to change that. Inside a test, ``minapp_engine.tables`` seeds, reads and resets the data tables
functions use, and ``minapp_engine.outbox.messages()`` lists the messages they sent.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Final, TypeVar, cast

from .engine import Engine

__all__ = ["HELLO_WORLD_JS", "running_engine"]

#: The seed's example function, verbatim (examples/functions/helloWorld.js).
HELLO_WORLD_JS: Final = """\
exports.main = function helloWorld(event, callback) {
  let name = event.data.name
  callback(null, 'hello ' + name)
}
"""


def _write_functions(root: Path, functions: Mapping[str, str]) -> None:
    for filename, source in functions.items():
        relative = PurePosixPath(filename)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"function file names must be relative paths, got {filename!r}")
        if not isinstance(source, str):
            raise TypeError(f"the source of {filename!r} must be a str")
        target = root.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")


@asynccontextmanager
async def running_engine(
    functions: Mapping[str, str] | Path | str | None = None,
    *,
    tables: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
    **config: Any,
) -> AsyncIterator[Engine]:
    """A started :class:`~minapp_async.engine.Engine`, shut down on exit.

    Args:
        functions: ``{filename: source}`` written to a temporary folder (e.g.
            ``{"echo.js": ..., "slow.py": ...}``), an existing folder, or None for an
            empty temporary folder.
        tables: ``{table: [rows]}`` seeded into the data tables once the engine runs.
        **config: :class:`~minapp_async.engine.EngineConfig` fields (``port`` defaults to 0).
    """
    with tempfile.TemporaryDirectory(prefix="minapp-engine-") as tmp:
        if functions is None or isinstance(functions, Mapping):
            functions_dir = Path(tmp)
            _write_functions(functions_dir, functions or {})
        else:
            functions_dir = Path(functions)
        async with Engine(functions_dir=functions_dir, **config) as engine:
            for table, rows in (tables or {}).items():
                engine.tables.seed(table, rows)
            yield engine


try:
    import pytest
except ImportError:  # pytest is optional: the fixtures exist only where it is installed
    pass
else:

    @pytest.fixture(name="minapp_engine_functions")
    def _minapp_engine_functions() -> Mapping[str, str] | Path | str | None:
        """The functions ``minapp_engine`` serves: the seed's helloWorld by default."""
        return {"helloWorld.js": HELLO_WORLD_JS}

    @pytest.fixture(name="minapp_engine_config")
    def _minapp_engine_config() -> Mapping[str, Any]:
        """EngineConfig overrides for ``minapp_engine``: none by default."""
        return {}

    @pytest.fixture(name="minapp_engine_tables")
    def _minapp_engine_tables() -> Mapping[str, Iterable[Mapping[str, Any]]]:
        """Rows seeded into ``minapp_engine``'s data tables, ``{table: [rows]}``: none."""
        return {}

    _Fixture = TypeVar("_Fixture", bound=Callable[..., Any])

    def _async_fixture(name: str) -> Callable[[_Fixture], _Fixture]:
        """pytest-asyncio's fixture decorator where it is installed, else pytest's. Its mark is
        what pytest-asyncio's strict mode needs; auto mode takes any async fixture, and anyio's
        plugin runs one for an anyio test either way (it ignores the mark)."""
        try:
            import pytest_asyncio
        except ImportError:
            return cast("Callable[[_Fixture], _Fixture]", pytest.fixture(name=name))
        return cast("Callable[[_Fixture], _Fixture]", pytest_asyncio.fixture(name=name))

    @_async_fixture(name="minapp_engine")
    async def _minapp_engine(
        minapp_engine_functions: Mapping[str, str] | Path | str | None,
        minapp_engine_config: Mapping[str, Any],
        minapp_engine_tables: Mapping[str, Iterable[Mapping[str, Any]]],
    ) -> AsyncIterator[Engine]:
        """A running local engine for one test: an anyio test (``pytest.mark.anyio``) or a
        pytest-asyncio one (``pytest.mark.asyncio``, or any async test in auto mode)."""
        async with running_engine(
            minapp_engine_functions, tables=minapp_engine_tables, **minapp_engine_config
        ) as engine:
            yield engine
