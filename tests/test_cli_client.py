"""``minapp-async invoke``, ``login`` and ``logout``, run as subprocesses against a real engine."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from fakeserver import Reply, fake_server

from minapp_async.engine import Engine
from minapp_async.testing import HELLO_WORLD_JS, running_engine

pytestmark = pytest.mark.anyio

FUNCTIONS = {
    "helloWorld.js": HELLO_WORLD_JS,
    "fails.js": "exports.main = async function (event) { throw new Error('no luck') }\n",
    "slow.py": "import time\n\ndef main(event):\n    time.sleep(3)\n    return 'late'\n",
    "echo.py": "def main(event):\n    return event['data']\n",
}
PASSWORD = "s3cret-pass-Word"
ANSI = "\x1b["


@attrs.frozen
class Run:
    """A finished CLI run."""

    status: int
    stdout: str
    stderr: str


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """A local engine serving helloWorld and a few test functions."""
    async with running_engine(FUNCTIONS) as engine:
        yield engine


@pytest.fixture(name="env")
def _env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: no MINAPP_* settings of the developer's, a private home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MINAPP") and k not in ("NO_COLOR", "PYTHONWARNINGS")
    }
    env["MINAPP_ASYNC_HOME"] = str(tmp_path / "home")
    return env


async def cli(*args: str, env: Mapping[str, str], stdin: str = "") -> Run:
    """Run ``python -m minapp_async ARGS`` without blocking the engine's event loop."""
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "minapp_async", *args],
            input=stdin.encode(),
            env=dict(env),
            check=False,
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def app(engine: Engine) -> list[str]:
    """The options naming the engine's app."""
    return ["--base-url", engine.url, "--client-id", engine.client_id]


async def login(engine: Engine, env: Mapping[str, str], *extra: str) -> Run:
    """Log in as user 'allen' through the CLI, creating the user on the engine first."""
    engine.create_user(username="allen", password=PASSWORD)
    run = await cli(
        "login", *app(engine), "--username", "allen", "--password-stdin", *extra,
        env=env, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert 0 == run.status, run.stderr
    return run


def session_path(env: Mapping[str, str], engine: Engine) -> Path:
    return Path(env["MINAPP_ASYNC_HOME"]) / f"{engine.client_id}.json"


class TestInvoke:
    async def test_prints_the_envelope_as_one_line_of_json(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """With a stored login, invoke prints {code, data, error} as plain one-line JSON."""
        await login(engine, env)
        run = await cli("invoke", "helloWorld", "--params", '{"name": "allen"}', *app(engine),
                        env=env)  # fmt: skip
        assert 0 == run.status, run.stderr
        assert 1 == run.stdout.count("\n")
        assert {"code": 0, "data": "hello allen", "error": {}} == json.loads(run.stdout)
        assert ANSI not in run.stdout + run.stderr
        assert "" == run.stderr

    async def test_async_returns_the_acknowledgement_and_the_job_runs(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """--async prints {"status": "ok"} and the engine runs the job in the background."""
        await login(engine, env)
        run = await cli("invoke", "helloWorld", "--async", "--params", '{"name": "bg"}',
                        *app(engine), env=env)  # fmt: skip
        assert 0 == run.status, run.stderr
        assert {"status": "ok"} == json.loads(run.stdout)["data"]
        await engine.drain(timeout=30)
        (job,) = await engine.jobs("helloWorld")
        assert "hello bg" == job.result["data"]

    async def test_params_from_a_file_and_from_stdin(
        self, engine: Engine, env: dict[str, str], tmp_path: Path
    ) -> None:
        """--params @FILE and @- read JSON (UTF-8, non-ASCII kept) from a file and stdin."""
        await login(engine, env)
        params = {"name": "小程序", "n": [1, 2.5, None, True]}
        (tmp_path / "p.json").write_text(json.dumps(params, ensure_ascii=False), "utf-8")
        from_file = await cli("invoke", "echo", "--params", f"@{tmp_path / 'p.json'}",
                              *app(engine), env=env)  # fmt: skip
        from_stdin = await cli("invoke", "echo", "--params", "@-", *app(engine),
                               env=env, stdin=json.dumps(params))  # fmt: skip
        for run in (from_file, from_stdin):
            assert 0 == run.status, run.stderr
            assert params == json.loads(run.stdout)["data"]
        assert "小程序" in from_file.stdout  # not \\u-escaped

    async def test_a_failed_function_prints_the_result_and_exits_3(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """A function that throws: the envelope with code != 0 on stdout, exit status 3."""
        await login(engine, env)
        run = await cli("invoke", "fails", *app(engine), env=env)
        assert 3 == run.status
        envelope = json.loads(run.stdout)
        assert 0 != envelope["code"]
        assert "no luck" in json.dumps(envelope["error"])
        assert run.stderr.startswith("error: fails failed:")

    async def test_not_logged_in_exits_1_with_a_hint(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """Without any login the server's 401 is printed, with the next step, and exit 1."""
        run = await cli("invoke", "helloWorld", *app(engine), env=env)
        assert 1 == run.status
        assert "" == run.stdout
        first, hint = run.stderr.splitlines()[:2]
        assert first.startswith("error: 401: not logged in")
        assert "request id" in first
        assert hint.startswith("hint: log in first: minapp-async login")

    async def test_unknown_function_is_a_404(self, engine: Engine, env: dict[str, str]) -> None:
        """An unknown function name exits 1 with the server's 404 and its request id."""
        await login(engine, env)
        run = await cli("invoke", "nope", *app(engine), env=env)
        assert 1 == run.status
        assert run.stderr.startswith("error: 404: ")
        assert "request id " in run.stderr

    async def test_timeout_ends_a_slow_call(self, engine: Engine, env: dict[str, str]) -> None:
        """--timeout 0.5 on a function that takes 3 s fails with 601 at the deadline."""
        await login(engine, env)
        started = anyio.current_time()
        run = await cli("invoke", "slow", "--timeout", "0.5", *app(engine), env=env)
        assert 1 == run.status
        assert run.stderr.startswith("error: 601: no reply within 0.5 s")
        assert anyio.current_time() - started < 20  # the limit held, nothing hung

    async def test_ctrl_c_cancels_the_call_and_exits_130(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """Ctrl-C during a call: exit 130 with 'interrupted', no traceback, the call given up."""
        await login(engine, env)
        process = await anyio.open_process(
            [sys.executable, "-m", "minapp_async", "invoke", "slow", *app(engine)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        async with process:
            with anyio.fail_after(60):
                # Poll: the engine's counters have no event to wait on.
                while "slow" not in engine.stats().functions:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
                process.send_signal(signal.SIGINT)
                status = await process.wait()
            assert process.stderr is not None
            stderr = b"".join([chunk async for chunk in process.stderr]).decode()
        assert 130 == status
        assert "error: interrupted" in stderr
        assert "Traceback" not in stderr

    async def test_env_vars_configure_app_and_token(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """MINAPP_BASE_URL, MINAPP_CLIENT_ID and MINAPP_TOKEN are used; the token never prints."""
        await login(engine, env)
        token = json.loads(session_path(env, engine).read_text())["token"]
        session_path(env, engine).unlink()  # the token alone must be enough
        env |= {
            "MINAPP_BASE_URL": engine.url,
            "MINAPP_CLIENT_ID": engine.client_id,
            "MINAPP_TOKEN": token,
        }
        run = await cli("invoke", "helloWorld", "--params", '{"name": "env"}', env=env)
        assert 0 == run.status, run.stderr
        assert "hello env" == json.loads(run.stdout)["data"]
        assert "" == run.stderr
        assert not session_path(env, engine).exists()  # a token is used, never stored

    async def test_token_option_works_and_warns_it_is_visible(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """--token is accepted with a warning about the process list; a bad one is a 401."""
        await login(engine, env)
        token = json.loads(session_path(env, engine).read_text())["token"]
        good = await cli("invoke", "helloWorld", "--params", '{"name": "t"}', "--token", token,
                         *app(engine), env=env)  # fmt: skip
        assert 0 == good.status, good.stderr
        assert good.stderr.startswith("warning: --token is visible to other users")
        assert token not in good.stderr + good.stdout
        bad = await cli("invoke", "helloWorld", "--token", "0" * 40, *app(engine), env=env)
        assert 1 == bad.status
        assert "401" in bad.stderr
        assert "0" * 40 not in bad.stderr

    async def test_client_secret_invokes_through_the_open_api(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """MINAPP_CLIENT_SECRET invokes as the app itself, with no user login."""
        env["MINAPP_CLIENT_SECRET"] = engine.client_secret
        run = await cli("invoke", "helloWorld", "--params", '{"name": "app"}', *app(engine),
                        env=env)  # fmt: skip
        assert 0 == run.status, run.stderr
        assert "hello app" == json.loads(run.stdout)["data"]
        assert engine.client_secret not in run.stderr

    async def test_token_and_secret_together_are_refused(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """A token and a client secret at once exit 2, from options or from variables."""
        both = await cli("invoke", "x", "--token", "t", "--client-secret", "s", *app(engine),
                         env=env)  # fmt: skip
        assert 2 == both.status
        assert "not allowed with argument" in both.stderr
        env |= {"MINAPP_TOKEN": "t", "MINAPP_CLIENT_SECRET": "s"}
        from_env = await cli("invoke", "x", *app(engine), env=env)
        assert 2 == from_env.status
        assert "both MINAPP_TOKEN and MINAPP_CLIENT_SECRET are set" in from_env.stderr

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ("{name: 1}", "--params is not valid JSON: Expecting property name"),
            ("NaN", "--params is not valid JSON: NaN is not JSON"),
            ("@/nonexistent/p.json", "cannot read '/nonexistent/p.json': No such file"),
            ("[" * 100_000, "--params is nested too deeply"),
        ],
    )
    async def test_bad_params_exit_2_naming_the_problem(
        self, engine: Engine, env: dict[str, str], params: str, message: str
    ) -> None:
        """Unusable --params exit 2 before anything is sent, saying what is wrong."""
        run = await cli("invoke", "echo", "--params", params, *app(engine), env=env)
        assert 2 == run.status
        assert message in run.stderr
        assert "Traceback" not in run.stderr
        assert 0 == engine.stats().requests_served

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["helloWorld"], "no client id: pass --client-id ID or set MINAPP_CLIENT_ID"),
            (["helloWorld", "--client-id", "../x"], "client id '../x' is not valid"),
            (["helloWorld", "--client-id", "c", "--base-url", "ftp://h"], "must start with"),
            (
                ["", "--client-id", "c", "--base-url", "http://127.0.0.1:9"],
                "605: incorrect parameter type: function_name",
            ),
            (["helloWorld", "--timeout", "0"], "--timeout: must be a number > 0"),
        ],
    )
    async def test_usage_errors_exit_2(
        self, env: dict[str, str], args: list[str], message: str
    ) -> None:
        """Missing or malformed settings exit 2 with a message naming them."""
        run = await cli("invoke", *args, env=env)
        assert 2 == run.status
        assert message in run.stderr
        assert "Traceback" not in run.stderr

    async def test_unreachable_server_is_a_network_error(self, env: dict[str, str]) -> None:
        """Nothing listening on the base URL: exit 1 with a 600 error, no traceback."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again before the CLI runs: refused
        run = await cli("invoke", "helloWorld", "--base-url", f"http://127.0.0.1:{port}",
                        "--client-id", "c", env=env)  # fmt: skip
        assert 1 == run.status
        assert run.stderr.startswith("error: 600: ")
        assert "Traceback" not in run.stderr

    async def test_env_id_is_sent_and_a_malformed_reply_is_reported(
        self, env: dict[str, str]
    ) -> None:
        """--env is sent as X-Hydrogen-Env-ID; an HTML 200 reply exits 1 with a clear error."""
        async with fake_server() as server:
            server.reply(Reply(body="<html>proxy</html>", content_type="text/html"))
            run = await cli("invoke", "f", "--env", "e-42", "--base-url", server.url,
                            "--client-id", "c", env=env)  # fmt: skip
        assert 1 == run.status
        assert "invalid reply: not JSON (text/html)" in run.stderr
        (request,) = server.requests
        assert "e-42" == request.header("X-Hydrogen-Env-ID")


class TestLogin:
    async def test_login_stores_the_session_privately(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """login writes <home>/<client id>.json, mode 0600, and prints no token or password."""
        run = await login(engine, env)
        path = session_path(env, engine)
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        stored = json.loads(path.read_text())
        assert stored["token"] and stored["user_id"] is not None
        assert run.stdout.startswith("logged in as user ")
        assert str(path) in run.stdout
        for secret in (stored["token"], PASSWORD):
            assert secret not in run.stdout + run.stderr

    async def test_register_then_invoke(self, engine: Engine, env: dict[str, str]) -> None:
        """login --register creates the user on the server, and invoke runs as that user."""
        reg = await cli("login", *app(engine), "--email", "a@b.cn", "--register",
                        "--password-stdin", env=env, stdin=PASSWORD)  # fmt: skip
        assert 0 == reg.status, reg.stderr
        assert "(a@b.cn)" in reg.stdout
        run = await cli("invoke", "helloWorld", "--params", '{"name": "new"}', *app(engine),
                        env=env)  # fmt: skip
        assert "hello new" == json.loads(run.stdout)["data"]

    async def test_wrong_password_exits_1_and_keeps_no_session(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """A refused login exits 1 with a hint, never echoes the password, stores nothing."""
        engine.create_user(username="allen", password=PASSWORD)
        run = await cli("login", *app(engine), "--username", "allen", "--password-stdin",
                        env=env, stdin="wrong-password-xyz\n")  # fmt: skip
        assert 1 == run.status
        assert "hint: check the user name and password" in run.stderr
        assert "wrong-password-xyz" not in run.stderr + run.stdout
        assert not session_path(env, engine).exists()

    async def test_no_terminal_and_no_password_stdin_is_a_usage_error(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """Without a terminal to prompt on, login asks for --password-stdin and exits 2."""
        run = await cli("login", *app(engine), "--username", "allen", env=env)
        assert 2 == run.status
        assert "pass --password-stdin" in run.stderr
        assert 0 == engine.stats().requests_served

    async def test_no_password_option_exists(self, engine: Engine, env: dict[str, str]) -> None:
        """A password can never be given as an option, where ps would show it."""
        run = await cli("login", *app(engine), "--username", "allen", "--password", "hunter2x",
                        env=env)  # fmt: skip
        assert 2 == run.status
        assert "--password is not accepted" in run.stderr
        assert "hunter2x" not in run.stderr
        assert 0 == engine.stats().requests_served

    async def test_anonymous_login_cannot_invoke_by_default(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """An anonymous login works; invoking then gets the platform's 403 and a hint."""
        run = await cli("login", *app(engine), "--anonymous", env=env)
        assert 0 == run.status, run.stderr
        assert "anonymous user" in run.stdout
        refused = await cli("invoke", "helloWorld", *app(engine), env=env)
        assert 1 == refused.status
        assert refused.stderr.startswith("error: 403: anonymous users may not invoke")
        assert "hint: by default only logged-in, non-anonymous users" in refused.stderr

    async def test_logout_ends_the_session_on_the_server(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """logout deletes the file, and the old token is refused by the server afterwards."""
        await login(engine, env)
        token = json.loads(session_path(env, engine).read_text())["token"]
        run = await cli("logout", *app(engine), env=env)
        assert 0 == run.status, run.stderr
        assert not session_path(env, engine).exists()
        again = await cli("logout", *app(engine), env=env)
        assert 0 == again.status
        assert again.stdout.startswith("not logged in")
        stale = await cli("invoke", "helloWorld", "--token", token, *app(engine), env=env)
        assert 1 == stale.status
        assert "401" in stale.stderr

    async def test_logout_without_a_server_still_forgets_locally(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        """When the server cannot be reached, logout deletes the file and says so, exit 1."""
        await login(engine, env)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        run = await cli("logout", "--base-url", f"http://127.0.0.1:{port}", "--client-id",
                        engine.client_id, env=env)  # fmt: skip
        assert 1 == run.status
        assert "the local session was deleted, the server was not told" in run.stderr
        assert not session_path(env, engine).exists()


class TestTerminal:
    async def test_help_explains_each_command_with_examples(self, env: dict[str, str]) -> None:
        """--help lists every command, and each command's help has examples."""
        top = await cli("--help", env=env)
        assert 0 == top.status
        for name in ("invoke", "login", "logout", "serve"):
            assert f"    {name} " in top.stdout
        for name in ("invoke", "login", "logout"):
            run = await cli(name, "--help", env=env)
            assert 0 == run.status
            assert "example" in run.stdout
            assert f"minapp-async {name} " in run.stdout

    @pytest.mark.parametrize("no_color", [False, True])
    async def test_colour_only_on_a_terminal_without_no_color(
        self, engine: Engine, env: dict[str, str], no_color: bool
    ) -> None:
        """On a terminal the JSON is indented and coloured, unless NO_COLOR is set."""
        await login(engine, env)
        if no_color:
            env["NO_COLOR"] = "1"
        output = await cli_on_a_terminal(
            ["invoke", "helloWorld", "--params", '{"name": "tty"}', *app(engine)], env
        )
        assert (ANSI + "36m" in output) is (not no_color)
        assert '  "data": "hello tty"' in output.replace(ANSI + "36m", "").replace(ANSI + "0m", "")
        assert "request id " in output  # the status line, on a terminal only


async def cli_on_a_terminal(args: list[str], env: Mapping[str, str]) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; returns what it showed."""
    main, child = pty.openpty()
    try:
        with anyio.fail_after(60):
            process = await anyio.open_process(
                [sys.executable, "-m", "minapp_async", *args],
                stdin=subprocess.DEVNULL,
                stdout=child,
                stderr=child,
                env=dict(env),
            )
            os.close(child)
            child = -1
            async with process:
                output = await anyio.to_thread.run_sync(_read_all, main)
                assert 0 == await process.wait(), output
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    return output.replace("\r\n", "\n")


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


#: Shows some --help (each must exit 0), runs some commands, all in one process; then prints
#: the exit statuses and which modules of the engine's side were imported.
_IMPORTS_SCRIPT = """\
import json, sys
from minapp_async.cli import main

for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
statuses = [main(argv) for argv in json.loads(sys.argv[2])]
loaded = sorted(m for m in sys.modules if m.startswith(("minapp_async.engine", "aiohttp.web")))
print(json.dumps({"statuses": statuses, "loaded": loaded}))
"""


async def imports(helps: list[list[str]], runs: list[list[str]], env: Mapping[str, str]) -> Any:
    """Run _IMPORTS_SCRIPT in a fresh interpreter; its report."""
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", _IMPORTS_SCRIPT, json.dumps(helps), json.dumps(runs)],
            env=dict(env),
            check=False,
        )
    assert 0 == done.returncode, done.stderr.decode()
    return json.loads(done.stdout.decode().splitlines()[-1])


class TestImports:
    async def test_client_commands_load_neither_the_engine_nor_aiohttp_web(
        self, engine: Engine, env: dict[str, str], tmp_path: Path
    ) -> None:
        """Every --help but serve's, and real invoke, map and logout runs, import no module of
        minapp_async.engine and none of aiohttp.web; serve --help does (the check can fail)."""
        env["MINAPP_CLIENT_SECRET"] = engine.client_secret
        source = tmp_path / "in.jsonl"
        source.write_text('{"name": "a"}\n{"name": "b"}\n', encoding="utf-8")
        helps = [[], ["invoke"], ["map"], ["login"], ["logout"]]
        runs = [
            ["invoke", "helloWorld", "--params", '{"name": "lazy"}', *app(engine)],
            ["map", "helloWorld", "--input", str(source), "--output", str(tmp_path / "out"),
             "--no-progress", *app(engine)],
            ["logout", *app(engine)],
        ]  # fmt: skip
        report = await imports([[*h, "--help"] for h in helps], runs, env)
        assert {"statuses": [0, 0, 0], "loaded": []} == report
        assert 2 == len((tmp_path / "out").read_text().splitlines())

        served = await imports([["serve", "--help"]], [], env)
        assert "minapp_async.engine" in served["loaded"]
        assert "aiohttp.web" in served["loaded"]

    async def test_invoke_help_imports_no_engine_module(self, env: dict[str, str]) -> None:
        """What the issue names: ``-X importtime`` of ``invoke --help`` shows neither."""
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-X", "importtime", "-m", "minapp_async", "invoke", "--help"],
                env=dict(env),
            )
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines()]
        assert "minapp_async.cli._main" in imported  # the report is the one we think
        assert "minapp-async invoke helloWorld" in done.stdout.decode()  # invoke's own help
        assert [] == [m for m in imported if m.startswith(("minapp_async.engine", "aiohttp.web"))]
