"""``minapp-async tables`` and ``minapp-async outbox`` as real subprocesses, on the state file
a running engine uses at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest
from engine_api import Api

from minapp_async.engine import Engine

pytestmark = pytest.mark.anyio

NOTIFY_JS = """
exports.main = async (event) => {
  const T = new BaaS.TableObject('prize')
  const res = await T.orderBy('name').find()
  const names = res.data.objects.map(p => p.name)
  await BaaS.sendTemplateMessage({
    recipient_type: 'user_id', user_id: 1, template_id: 'tpl', submission_type: 'form_id',
    keywords: { keyword1: { value: names.join(',') } }
  })
  return names
}
"""


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(60):
        return await anyio.run_process([sys.executable, "-m", "minapp_async", *args], check=False)


def lines(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    return done.stdout.decode().splitlines()


async def test_tables_and_outbox_commands_with_a_running_engine(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "notify.js").write_text(NOTIFY_JS)
    state = functions / ".minapp" / "state.sqlite3"
    rows = tmp_path / "prizes.jsonl"
    rows.write_text('{"name": "pen", "stock": 3}\n\n{"name": "mug", "stock": 1}\n')

    done = await cli("tables", "import", "prize", str(rows), "--functions", str(functions))
    assert done.returncode == 0, done.stderr
    assert "imported 2 records into prize" in done.stderr.decode()

    async with (
        Engine(functions_dir=functions, state=str(state), allow_anonymous=True) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        reply = await api.invoke(await api.anonymous_token(), "notify", {})
        assert reply.body == {"code": 0, "data": ["mug", "pen"], "error": {}}

        # While the engine runs, on the same file.
        listed = await cli("tables", "list", "--state", str(state))
        assert listed.returncode == 0, listed.stderr
        assert "prize\t2" in lines(listed)
        exported = await cli("tables", "export", "prize", "--functions", str(functions))
        assert [json.loads(line)["name"] for line in lines(exported)] == ["pen", "mug"]
        outbox = await cli("outbox", "--functions", str(functions), "--clear")
        assert outbox.returncode == 0, outbox.stderr
        (message,) = [json.loads(line) for line in lines(outbox)]
        assert message["kind"] == "wechat.template_message"
        assert message["data"]["keywords"]["keyword1"]["value"] == "mug,pen"
        assert engine.outbox.messages() == []  # --clear emptied the engine's outbox

        reset = await cli("tables", "reset", "prize", "--state", str(state))
        assert reset.returncode == 0, reset.stderr
        assert engine.tables.rows("prize") == []
        reply = await api.invoke(await api.anonymous_token(), "notify", {})
        assert reply.body["data"] == []

    target = tmp_path / "out.jsonl"
    engine_rows = await cli("tables", "export", "prize", str(target), "--state", str(state))
    assert engine_rows.returncode == 0 and target.read_text() == ""
    dropped = await cli("tables", "reset", "--drop", "--state", str(state))
    assert dropped.returncode == 0
    assert lines(await cli("tables", "list", "--state", str(state))) == []


async def test_tables_command_errors(tmp_path: Path) -> None:
    missing = await cli("tables", "list", "--state", str(tmp_path / "none.sqlite3"))
    assert missing.returncode == 2
    assert "no state file at" in missing.stderr.decode()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    state = tmp_path / "state.sqlite3"
    done = await cli("tables", "import", "t", str(bad), "--state", str(state))
    assert done.returncode == 2
    assert "bad.jsonl, line 2: not valid JSON" in done.stderr.decode()
    assert not state.exists()  # nothing was written

    good = tmp_path / "good.jsonl"
    good.write_text('{"a": 1}\n')
    assert (await cli("tables", "import", "t", str(good), "--state", str(state))).returncode == 0
    assert lines(await cli("tables", "list", "--state", str(state))) == ["t\t1"]

    unknown = await cli("tables", "export", "nope", "--state", str(state))
    assert unknown.returncode == 1
    assert "table not found: 'nope'" in unknown.stderr.decode()
    assert "Traceback" not in unknown.stderr.decode()
