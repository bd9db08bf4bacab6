"""``minapp-async functions`` and ``timers``, run as subprocesses against a real engine through
its Open API with the app's client credentials."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from minapp_async.engine import TRIGGER_FILE, Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

CODE = "exports.main = async (event) => 'deployed ' + event.data.n\n"
TRIGGERS = {
    "timers": [{"name": "sweep", "function": "echo", "cron": "0 4 1 1 *", "params": {"n": 1}}]
}


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    functions = {
        "echo.py": "def main(event):\n    return event['data']\n",
        TRIGGER_FILE: json.dumps(TRIGGERS),
    }
    async with running_engine(functions) as engine:
        yield engine


async def cli(engine: Engine, *args: str, cwd: Path, secret: bool = True) -> tuple[int, str, str]:
    env = {"PATH": os.environ.get("PATH", os.defpath), "MINAPP_ASYNC_HOME": str(cwd)}
    if secret:
        env["MINAPP_CLIENT_SECRET"] = engine.client_secret
    argv = [*args, "--base-url", engine.url, "--client-id", engine.client_id]
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "minapp_async", *argv], cwd=cwd, env=env, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_deploy_list_pull_delete(engine: Engine, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "adder").mkdir(parents=True)
    (project / "adder" / "index.js").write_text(CODE)
    deployed = engine.config.functions_dir / "adder" / "index.js"

    status, out, err = await cli(engine, "functions", "deploy", "adder", "project", cwd=tmp_path)
    assert (status, out.strip()) == (0, "created adder"), err
    assert deployed.read_text() == CODE
    status, out, _ = await cli(engine, "functions", "deploy", "adder", "project", cwd=tmp_path)
    assert (status, out.strip()) == (0, "updated adder")

    status, out, _ = await cli(engine, "functions", "list", "--json", cwd=tmp_path)
    assert status == 0
    assert [o["name"] for o in json.loads(out)["objects"]] == ["adder", "echo"]

    deployed.write_text(CODE.replace("deployed", "changed"))
    status, _, _ = await cli(engine, "functions", "pull", "adder", "pulled", cwd=tmp_path)
    assert status == 0
    assert "changed" in (tmp_path / "pulled" / "adder" / "index.js").read_text()

    status, out, _ = await cli(engine, "functions", "delete", "adder", cwd=tmp_path)
    assert (status, out.strip()) == (0, "deleted adder")
    assert not deployed.exists()
    status, _, err = await cli(engine, "functions", "delete", "adder", cwd=tmp_path)
    assert status == 1 and "404: cloud function 'adder' not found" in err


async def test_usage_errors(engine: Engine, tmp_path: Path) -> None:
    status, _, err = await cli(engine, "functions", "list", cwd=tmp_path, secret=False)
    assert status == 2 and "MINAPP_CLIENT_SECRET" in err
    status, _, err = await cli(engine, "functions", "deploy", "nothing", cwd=tmp_path)
    assert status == 2 and "no function file" in err
    assert await engine.jobs() == []


async def test_timers_list_and_fire(engine: Engine, tmp_path: Path) -> None:
    status, out, _ = await cli(engine, "timers", "list", cwd=tmp_path)
    assert status == 0
    assert out.startswith("sweep\t0 4 1 1 *\techo\tnext ")
    status, out, _ = await cli(engine, "timers", "fire", "sweep", cwd=tmp_path)
    assert status == 0
    reply = json.loads(out)
    job = await engine.wait_job(reply["job_id"], timeout=30)
    assert (job.source, job.status) == ("timer", "fulfilled")
    assert job.result is not None and job.result["data"] == {"n": 1}
    status, _, err = await cli(engine, "timers", "fire", "nope", cwd=tmp_path)
    assert status == 1 and "no timer named 'nope'" in err


_IMPORTS = """\
import sys
from minapp_async.cli import main
status = main(sys.argv[1:])
print([m for m in sys.modules if m.startswith(("minapp_async.engine", "aiohttp.web"))], status)
"""


async def test_the_commands_load_neither_the_engine_nor_aiohttp_web(
    engine: Engine, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "MINAPP_CLIENT_SECRET": engine.client_secret,
    }
    for verb in (["functions", "list"], ["timers", "list"]):
        argv = [*verb, "--base-url", engine.url, "--client-id", engine.client_id]
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-c", _IMPORTS, *argv], env=env, cwd=tmp_path
            )
        assert done.stdout.decode().splitlines()[-1] == "[] 0"
