"""The stock ``mincloud`` CLI (npm mincloud 1.2.3, pinned in tests/js/package-lock.json) run
under real Node against the engine: login, new, deploy, list, invoke, pull, delete.

Each run gets a temporary HOME (mincloud keeps its token in ``~/.mincloudrc``) and reaches the
engine through ``mincloud_base_url``; nothing needs the internet.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

JS_DIR = Path(__file__).resolve().parents[1] / "js"
MINCLOUD = JS_DIR / "node_modules" / "mincloud" / "bin" / "faas-cli.js"
RUN_TIMEOUT = 60.0

GREETER = """\
exports.main = async function greeter(event) {
  console.log('greeting', event.data.name)
  return {greeting: 'hi ' + event.data.name, eventType: event.eventType}
}
"""
GREETER_V2 = GREETER.replace("'hi '", "'hello again '")


@pytest.fixture(name="node")
def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the mincloud test runs the stock CLI under Node.js")
    if not MINCLOUD.is_file():
        pytest.fail(f"mincloud is not installed in {JS_DIR}: run `npm ci --prefix tests/js`")
    return node


class Mincloud:
    """Runs ``mincloud`` with its own HOME, in a project folder, against one engine."""

    def __init__(self, node: str, engine: Engine, home: Path, project: Path) -> None:
        self.node = node
        self.engine = engine
        self.project = project
        self.env: Mapping[str, str] = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "mincloud_base_url": engine.url + "/",
        }

    async def __call__(self, *args: str, ok: bool = True) -> tuple[int, str]:
        with anyio.fail_after(RUN_TIMEOUT):
            done = await anyio.run_process(
                [self.node, str(MINCLOUD), *args], cwd=self.project, env=self.env, check=False
            )
        output = done.stdout.decode() + done.stderr.decode()
        if ok:
            assert done.returncode == 0, f"mincloud {' '.join(args)} failed:\n{output}"
        return done.returncode, output


async def test_the_stock_mincloud_workflow(node: str, tmp_path: Path) -> None:
    """login → new → deploy → list → invoke → pull → delete, each step checked on the engine's
    side (the functions folder, its jobs) and in mincloud's own output."""
    functions, home, project = (tmp_path / d for d in ("functions", "home", "project"))
    for folder in (functions, home, project):
        folder.mkdir()
    async with running_engine(functions) as engine:
        mincloud = Mincloud(node, engine, home, project)

        # Before login every command stops with 请先登录 ("please log in first").
        status, output = await mincloud("list", ok=False)
        assert status == 1 and "请先登录" in output

        await mincloud("login", engine.client_id, engine.client_secret)
        rc = (home / ".mincloudrc").read_text()
        assert f"client_id={engine.client_id}" in rc
        assert engine.client_secret not in rc

        # new: created on the engine (its hello template) and written locally.
        await mincloud("new", "greeter", "./", "-m", "a first function")
        deployed = functions / "greeter" / "index.js"
        assert "hello world" in deployed.read_text()
        assert "hello world" in (project / "greeter" / "index.js").read_text()

        # deploy: the local code replaces it, and runs at once.
        (project / "greeter" / "index.js").write_text(GREETER)
        await mincloud("deploy", "greeter", "./")
        assert deployed.read_text() == GREETER

        # deploy of a function the engine does not have: PATCH 404, then POST creates it.
        (project / "second.js").write_text(GREETER)
        await mincloud("deploy", "second", "./")
        assert (functions / "second" / "index.js").read_text() == GREETER

        _, output = await mincloud("list", "-j")
        listed = json.loads(output)
        assert [o["name"] for o in listed["objects"]] == ["greeter", "second"]
        assert listed["meta"]["total_count"] == 2

        _, output = await mincloud("invoke", "greeter", '{"name": "allen"}', "-j")
        reply = json.loads(output)
        assert reply["code"] == 0
        assert reply["data"] == {"greeting": "hi allen", "eventType": "open_api"}
        assert "greeting allen" in reply["log"]
        (job,) = await engine.jobs("greeter")
        assert job.id == reply["job_id"]

        # pull: the engine's code overwrites the local copy.
        deployed.write_text(GREETER_V2)
        await mincloud("pull", "greeter", "./")
        assert (project / "greeter" / "index.js").read_text() == GREETER_V2

        await mincloud("delete", "greeter")
        assert not (functions / "greeter").exists()
        status, output = await mincloud("invoke", "greeter", "{}", "-j", ok=False)
        assert status == 1 and "不存在" in output  # "does not exist": the engine's 404
        _, output = await mincloud("list", "-j")
        assert [o["name"] for o in json.loads(output)["objects"]] == ["second"]
