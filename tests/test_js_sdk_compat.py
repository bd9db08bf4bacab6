"""The official JS SDK (minapp-sdk 3.23.6, both builds) under real Node against the engine.

tests/js/compat.cjs loads the SDK bundle with a minimal host shim, runs one scenario against
an engine serving examples/functions (the seed's helloWorld, verbatim), and prints one JSON
line per step and per HTTP exchange. These tests assert on that output and on the engine's
own job records. The SDK is installed from tests/js/package-lock.json (``npm ci``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js"
HARNESS = JS_DIR / "compat.cjs"
FUNCTIONS = ROOT / "examples" / "functions"
SDK_VERSION = "3.23.6"  # the version pinned in tests/js/package.json
NPM_CI_TIMEOUT = 100.0  # two small packages; well inside pytest's 120 s per test
HARNESS_TIMEOUT = 60.0  # each SDK step has its own 15 s deadline inside the harness
JOB_TIMEOUT = 30.0

HELLO_ALLEN = {"code": 0, "data": "hello allen", "error": {}}
USERNAME, PASSWORD = "allen", "allen-password-1"
# The bodies PROTOCOL.md §3.1 captured from this SDK version; the engine must accept them.
SYNC_BODY = '{"function_name":"helloWorld","sync":true,"data":{"name":"allen"}}'
ASYNC_BODY = '{"function_name":"helloWorld","sync":false,"data":{"name":"allen"}}'
NO_PARAMS_BODY = '{"function_name":"helloWorld","sync":true}'
PLATFORM = {"web": "WEB", "wechat": "WECHAT"}


def _missing_packages() -> list[str]:
    """The packages of tests/js/package-lock.json not installed at their locked version."""
    lock = json.loads((JS_DIR / "package-lock.json").read_text(encoding="utf-8"))
    missing = []
    for path, entry in lock["packages"].items():
        if not path:
            continue  # the root project itself
        try:
            manifest = json.loads((JS_DIR / path / "package.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("version") != entry["version"]:
            missing.append(f"{path.removeprefix('node_modules/')}@{entry['version']}")
    return missing


@pytest.fixture(name="node", scope="module")
def _node() -> str:
    """Node.js, with the pinned SDK installed in tests/js (``npm ci`` if it is not)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the JS SDK compatibility test runs the official SDK under Node.js"
        )
    missing = _missing_packages()
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                f"{', '.join(missing)} not installed in {JS_DIR} and npm is not on PATH "
                "to install it: run `npm ci --prefix tests/js`"
            )
        command = [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(command)}` did not finish within {NPM_CI_TIMEOUT:g} s")
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        missing = _missing_packages()
        if missing:
            pytest.fail(f"npm ci finished but {', '.join(missing)} still not installed")
    return node


class Run:
    """One harness run: the SDK's steps by name and the HTTP exchanges in order."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.steps = {line["step"]: line for line in lines if "step" in line}
        self.wire = [line["wire"] for line in lines if "wire" in line]

    def value(self, step: str) -> Any:
        """What the step resolved with (fails the test if it rejected)."""
        record = self.steps[step]
        assert record["ok"], f"{step} rejected: {record['error']}"
        return record["value"]

    def error(self, step: str) -> dict[str, Any]:
        """What the step rejected with (fails the test if it resolved)."""
        record = self.steps[step]
        assert not record["ok"], f"{step} resolved with {record['value']!r}"
        error: dict[str, Any] = record["error"]
        return error

    def exchanges(self, path: str) -> list[dict[str, Any]]:
        return [w for w in self.wire if w["request"]["path"] == path]


async def run_sdk(
    node: str, engine: Engine, build: str, scenario: str, *args: str, client_id: str | None = None
) -> Run:
    """Run tests/js/compat.cjs against *engine* (as the app *client_id*, by default the
    engine's); the process is killed past the deadline."""
    app_id = engine.client_id if client_id is None else client_id
    command = [node, str(HARNESS), engine.url, app_id, build, scenario, *args]
    with anyio.fail_after(HARNESS_TIMEOUT):
        done = await anyio.run_process(command, check=False)
    stdout = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, f"harness exit {done.returncode}\n{stdout}\n{stderr[-3000:]}"
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines and lines[-1] == {"done": True}, f"harness did not finish:\n{stdout}"
    return Run(lines)


def engine_error(exchange: dict[str, Any]) -> str:
    """The ``error_msg`` of an engine error reply, which the SDK must surface verbatim."""
    body = json.loads(exchange["reply"])
    assert body["status"] == "error"
    message: str = body["error_msg"]
    return message


def assert_hserve_headers(exchange: dict[str, Any], build: str, engine: Engine) -> None:
    headers = exchange["request"]["headers"]
    assert headers["X-Hydrogen-Client-ID"] == engine.client_id
    assert headers["X-Hydrogen-Client-Version"] == f"v{SDK_VERSION}"
    assert headers["X-Hydrogen-Client-Platform"] == PLATFORM[build]
    assert headers["Authorization"] == "Hydrogen-r1 <token>"


BUILDS = pytest.mark.parametrize("build", ["web", "wechat"])


@BUILDS
async def test_anonymous_invoke_is_refused_by_default(node: str, build: str) -> None:
    """By default an anonymous user's invoke rejects with the engine's 403 error_msg; nothing runs."""
    async with running_engine(FUNCTIONS) as engine:
        run = await run_sdk(node, engine, build, "anonymous")

        assert run.value("anonymousLogin")["anonymous"] is True
        (invoke,) = run.exchanges("/hserve/v1/cloud-function/job/")
        assert invoke["request"]["body"] == SYNC_BODY
        assert_hserve_headers(invoke, build, engine)
        assert invoke["status"] == 403
        error = run.error("invoke")
        # HError: a plain Error with own code and message "<status>: <error_msg>" (§3.3, §4.2).
        assert error == {
            "constructor": "Error",
            "code": 403,
            "message": f"403: {engine_error(invoke)}",
            "own_keys": ["code", "message"],
        }
        assert "anonymous" in error["message"]
        assert engine.jobs() == []
        assert engine.executions("helloWorld") == 0


@BUILDS
async def test_anonymous_invoke_succeeds_when_allowed(node: str, build: str) -> None:
    """With allow_anonymous=True an anonymous user's invoke resolves hello allen."""
    async with running_engine(FUNCTIONS, allow_anonymous=True) as engine:
        run = await run_sdk(node, engine, build, "anonymous")

        user = run.value("anonymousLogin")
        assert user["anonymous"] is True
        assert run.value("invoke") == HELLO_ALLEN
        (job,) = engine.jobs("helloWorld")
        assert (job.status, job.user_id, job.source) == ("fulfilled", user["id"], "sdk")


@BUILDS
async def test_username_login_then_invoke_in_every_form(node: str, build: str) -> None:
    """After a username login, invoke/invokeFunction resolve the envelope and sync=false resolves {status:'ok'}."""
    async with running_engine(FUNCTIONS) as engine:
        user_id = engine.create_user(username=USERNAME, password=PASSWORD)
        run = await run_sdk(node, engine, build, "login", USERNAME, PASSWORD)

        assert run.value("login") == {"id": user_id, "anonymous": False}
        (login,) = run.exchanges("/hserve/v2.1/login/username/")
        assert json.loads(login["request"]["body"]) == {
            "username": USERNAME,
            "password": "<password>",
        }
        assert login["status"] == 201

        assert run.value("invoke") == HELLO_ALLEN
        assert run.value("invokeFunction") == HELLO_ALLEN
        # No params: the SDK omits "data"; the engine passes {} so event.data.name is undefined.
        assert run.value("invoke-no-params") == {"code": 0, "data": "hello undefined", "error": {}}
        assert run.value("invoke-async") == {"status": "ok"}

        jobs = run.exchanges("/hserve/v1/cloud-function/job/")
        bodies = [exchange["request"]["body"] for exchange in jobs]
        assert bodies[:4] == [SYNC_BODY, SYNC_BODY, NO_PARAMS_BODY, ASYNC_BODY]
        for exchange in jobs[:4]:
            assert_hserve_headers(exchange, build, engine)
            assert exchange["status"] == 200

        # The async job ran in the background and is visible as fulfilled.
        (batch,) = [job for job in engine.jobs("helloWorld") if job.service_type == "batch"]
        finished = await engine.wait_job(batch.id, timeout=JOB_TIMEOUT)
        assert finished.status == "fulfilled"
        assert finished.result == HELLO_ALLEN
        assert finished.user_id == user_id
        assert engine.executions("helloWorld") == 4

        # An unknown function: the web build surfaces the engine's error_msg; the WeChat build
        # replaces any 404 text with "not found" (PROTOCOL.md §3.3).
        unknown = jobs[4]
        assert unknown["status"] == 404
        expected = engine_error(unknown) if build == "web" else "not found"
        assert run.error("invoke-unknown")["message"] == f"404: {expected}"
        assert run.error("invoke-unknown")["code"] == 404

        assert run.value("logout") == {
            "status": 201,
            "data": {"message": "Destroy succeed.", "status": "ok"},
        }
        after = jobs[5]
        assert "Authorization" not in after["request"]["headers"]
        assert after["status"] == 401
        assert run.error("invoke-after-logout")["message"] == f"401: {engine_error(after)}"


@BUILDS
async def test_register_then_invoke(node: str, build: str) -> None:
    """A user registered through BaaS.auth.register can invoke straight away."""
    async with running_engine(FUNCTIONS) as engine:
        run = await run_sdk(node, engine, build, "register", USERNAME, PASSWORD)

        user = run.value("register")
        assert user["anonymous"] is False
        (register,) = run.exchanges("/hserve/v2.1/register/username/")
        assert register["status"] == 201
        assert run.value("invoke") == HELLO_ALLEN
        (job,) = engine.jobs("helloWorld")
        assert (job.status, job.user_id) == ("fulfilled", user["id"])


# The platform's lottery example, cut down: the front-end (the official SDK) registers a user
# and draws; the function queries the prizes in stock, takes one, records the win for
# event.request.user and notifies the winner through the outbox.
LOTTERY_JS = """
exports.main = async function (event) {
  const Prize = new BaaS.TableObject('prize')
  const inStock = new BaaS.Query()
  inStock.compare('stock', '>', 0)
  const total = await Prize.setQuery(inStock).count()
  if (total === 0) return { won: false }
  const pick = Prize.limit(1).offset(event.data.seed % total).orderBy('created_at').getWithoutData(inStock)
  pick.incrementBy('stock', -1)
  const taken = await pick.update()
  const prize = await Prize.get(taken.data.operation_result[0].success.id)
  const user = event.request.user
  await new BaaS.TableObject('lottery_record').create().set({ prize: prize.data.name, created_by: user.id }).save()
  await BaaS.sendTemplateMessage({
    recipient_type: 'user_id', user_id: user.id, template_id: 'tpl-win', submission_type: 'form_id',
    keywords: { keyword1: { value: prize.data.name } }
  })
  return { won: true, prize: prize.data.name }
}
"""


@BUILDS
async def test_lottery_draw_driven_by_the_sdk(node: str, build: str) -> None:
    """A registered user draws twice; the function's BaaS calls change the engine's tables."""
    prizes = [
        {"name": "mug", "stock": 1},
        {"name": "pen", "stock": 0},
        {"name": "book", "stock": 2},
    ]
    async with running_engine({"lottery.js": LOTTERY_JS}, tables={"prize": prizes}) as engine:
        run = await run_sdk(node, engine, build, "lottery", USERNAME, PASSWORD)

        user = run.value("register")
        assert run.value("draw-0") == {
            "code": 0,
            "data": {"won": True, "prize": "mug"},
            "error": {},
        }
        assert run.value("draw-1") == {
            "code": 0,
            "data": {"won": True, "prize": "book"},
            "error": {},
        }
        stock = {row["name"]: row["stock"] for row in engine.tables.rows("prize")}
        assert stock == {"mug": 0, "pen": 0, "book": 1}
        records = engine.tables.rows("lottery_record")
        assert [(r["prize"], r["created_by"]) for r in records] == [
            ("mug", user["id"]),
            ("book", user["id"]),
        ]
        sent = engine.outbox.messages("wechat.template_message")
        assert [m["data"]["user_id"] for m in sent] == [user["id"], user["id"]]


#: A front-end's own client id, which the engine was not started with.
FOREIGN_CLIENT_ID = "9f8e7d6c5b4a39281706"


@BUILDS
async def test_an_app_keeps_its_own_client_id(node: str, build: str) -> None:
    """An engine with no pinned id serves the SDK initialised with the app's real client id:
    login, invoke (sync and async) and logout all work, and the id is the one sent."""
    async with running_engine(FUNCTIONS) as engine:
        assert engine.client_id != FOREIGN_CLIENT_ID
        user_id = engine.create_user(username=USERNAME, password=PASSWORD)
        run = await run_sdk(
            node, engine, build, "login", USERNAME, PASSWORD, client_id=FOREIGN_CLIENT_ID
        )

        assert run.value("login") == {"id": user_id, "anonymous": False}
        assert run.value("invoke") == HELLO_ALLEN
        assert run.value("invoke-async") == {"status": "ok"}
        jobs = run.exchanges("/hserve/v1/cloud-function/job/")
        assert jobs[0]["request"]["headers"]["X-Hydrogen-Client-ID"] == FOREIGN_CLIENT_ID
        assert jobs[0]["status"] == 200
        assert run.value("logout")["status"] == 201


@BUILDS
async def test_a_pinned_client_id_refuses_another(node: str, build: str) -> None:
    """With --client-id pinned, the SDK with another id is refused with a hint naming the
    engine's id and the flag, which the SDK surfaces."""
    async with running_engine(FUNCTIONS, client_id="pinned0123456789abcd") as engine:
        engine.create_user(username=USERNAME, password=PASSWORD)
        run = await run_sdk(
            node, engine, build, "login", USERNAME, PASSWORD, client_id=FOREIGN_CLIENT_ID
        )
        (login,) = run.exchanges("/hserve/v2.1/login/username/")
        assert login["status"] == 401
        message = engine_error(login)
        assert "'pinned0123456789abcd'" in message and "--client-id" in message
        assert run.error("login")["code"] == 401
