"""The public test helper: running_engine() and the minapp_engine pytest fixture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from engine_api import Api

from minapp_async.testing import HELLO_WORLD_JS, running_engine

pytestmark = pytest.mark.anyio


async def test_running_engine_writes_a_mapping_of_functions() -> None:
    """A {filename: source} mapping becomes the functions folder, subfolders included."""
    functions = {
        "helloWorld.js": HELLO_WORLD_JS,
        "nested/index.js": "exports.main = async (event) => 'nested ' + event.data.x\n",
        "twice.py": "def main(event):\n    return event['data'] * 2\n",
    }
    async with running_engine(functions) as engine, aiohttp.ClientSession() as http:
        assert engine.url.startswith("http://127.0.0.1:")
        assert not engine.url.endswith("/")
        api = Api(engine, http)
        token = await api.login()
        assert (await api.invoke(token, "nested", {"x": 1})).body["data"] == "nested 1"
        assert (await api.invoke(token, "twice", 21)).body["data"] == 42
        folder = engine.config.functions_dir
    assert not folder.exists()  # the temporary folder is removed on exit


async def test_running_engine_serves_an_existing_folder(tmp_path: Path) -> None:
    """A folder is served as is (and kept)."""
    (tmp_path / "helloWorld.js").write_text(HELLO_WORLD_JS)
    async with running_engine(tmp_path, sync_time_limit=1.0) as engine:
        assert engine.config.functions_dir == tmp_path
        assert engine.config.sync_time_limit == 1.0
        async with aiohttp.ClientSession() as http:
            api = Api(engine, http)
            reply = await api.invoke(await api.login(), "helloWorld", {"name": "dir"})
            assert reply.body["data"] == "hello dir"
    assert (tmp_path / "helloWorld.js").exists()


async def test_running_engine_without_functions_is_empty() -> None:
    """No functions: every invoke is a 404."""
    async with running_engine() as engine, aiohttp.ClientSession() as http:
        api = Api(engine, http)
        reply = await api.invoke(await api.login(), "helloWorld", {})
        assert reply.status == 404


@pytest.mark.parametrize("filename", ["../escape.js", "/abs.js", ""])
async def test_running_engine_refuses_paths_outside_the_folder(filename: str) -> None:
    """File names must stay inside the temporary folder."""
    with pytest.raises(ValueError, match="relative"):
        async with running_engine({filename: "x"}):
            pass


#: The pytest configuration of a user's project for each way of running async tests; the
#: marker line is what the project's tests carry.
PROJECTS = {
    "anyio": (
        "addopts = -p anyio -p no:asyncio -p no:cacheprovider\n",
        "pytestmark = pytest.mark.anyio",
    ),
    "asyncio-strict": (
        (
            "addopts = -p no:anyio -p no:cacheprovider\nasyncio_mode = strict\n"
            "asyncio_default_fixture_loop_scope = function\n"
        ),
        "pytestmark = pytest.mark.asyncio",
    ),
    "asyncio-auto": (
        (
            "addopts = -p no:anyio -p no:cacheprovider\nasyncio_mode = auto\n"
            "asyncio_default_fixture_loop_scope = function\n"
        ),
        "",
    ),
}

USER_TESTS = """
import aiohttp
import pytest

{marker}


async def test_hello(minapp_engine):
    minapp_engine.create_user(username="u", password="p")
    headers = {{"X-Hydrogen-Client-ID": minapp_engine.client_id}}
    async with aiohttp.ClientSession(minapp_engine.url) as http:
        async with http.post(
            "/hserve/v2.1/login/username/",
            json={{"username": "u", "password": "p"}},
            headers=headers,
        ) as r:
            token = (await r.json())["token"]
        headers["Authorization"] = "Hydrogen-r1 " + token
        async with http.post(
            "/hserve/v1/cloud-function/job/",
            json={{"function_name": "helloWorld", "data": {{"name": "user"}}}},
            headers=headers,
        ) as r:
            assert await r.json() == {{"code": 0, "data": "hello user", "error": {{}}}}


class TestOverride:
    @pytest.fixture
    def minapp_engine_functions(self):
        return {{"shout.py": "def main(event):\\n    return 'HI'\\n"}}

    @pytest.fixture
    def minapp_engine_config(self):
        return {{"allow_anonymous": True}}

    async def test_overrides(self, minapp_engine):
        assert minapp_engine.config.allow_anonymous
        assert (minapp_engine.config.functions_dir / "shout.py").exists()


TOTAL = (
    "async def main(event):\\n"
    "    rows = await BaaS.table('order').find()\\n"
    "    await BaaS.send_email({{'recipient': 'a@b.c', 'subject': 's', 'body': 'b'}})\\n"
    "    return sum(r['price'] for r in rows['objects'])\\n"
)


class TestTables:
    @pytest.fixture
    def minapp_engine_functions(self):
        return {{"total.py": TOTAL}}

    @pytest.fixture
    def minapp_engine_tables(self):
        return {{"order": [{{"price": 2}}, {{"price": 5}}]}}

    async def test_seeded(self, minapp_engine):
        assert [r["price"] for r in minapp_engine.tables.rows("order")] == [2, 5]
        minapp_engine.create_user(username="u", password="p")
        headers = {{"X-Hydrogen-Client-ID": minapp_engine.client_id}}
        async with aiohttp.ClientSession(minapp_engine.url) as http:
            async with http.post(
                "/hserve/v2.1/login/username/",
                json={{"username": "u", "password": "p"}},
                headers=headers,
            ) as r:
                token = (await r.json())["token"]
            headers["Authorization"] = "Hydrogen-r1 " + token
            async with http.post(
                "/hserve/v1/cloud-function/job/",
                json={{"function_name": "total"}},
                headers=headers,
            ) as r:
                assert await r.json() == {{"code": 0, "data": 7, "error": {{}}}}
        assert [m["kind"] for m in minapp_engine.outbox.messages()] == ["email"]
"""


@pytest.mark.parametrize("mode", sorted(PROJECTS))
def test_minapp_engine_fixture_in_a_users_project(tmp_path: Path, mode: str) -> None:
    """A project using pytest_plugins = ["minapp_async.testing"] gets a working engine, with
    anyio's pytest plugin or pytest-asyncio (strict or auto mode), in a pytest run of its own."""
    options, marker = PROJECTS[mode]
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{options}filterwarnings = error\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["minapp_async.testing"]\n')
    (tmp_path / "test_user.py").write_text(USER_TESTS.format(marker=marker))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("mode", ["anyio", "asyncio-strict"])
def test_the_readme_fixture_example_runs(tmp_path: Path, mode: str) -> None:
    """The README's complete example test (conftest.py and test_greet.py) passes as written
    with anyio's plugin, and with pytest-asyncio once its mark is swapped in."""
    text = README.read_text(encoding="utf-8")
    start = text.index("# conftest.py\npytest_plugins")
    block = text[start : text.index("```", start)]
    conftest, test = block.split("# test_greet.py\n")
    if mode == "asyncio-strict":
        test = test.replace("pytestmark = pytest.mark.anyio", "pytestmark = pytest.mark.asyncio")
    options, _ = PROJECTS[mode]
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{options}filterwarnings = error\n")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_greet.py").write_text(test)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
