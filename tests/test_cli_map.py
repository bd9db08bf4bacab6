"""``minapp-async map``, run as a subprocess against a real engine started by each test."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from minapp_async.engine import Engine
from minapp_async.testing import HELLO_WORLD_JS, running_engine

pytestmark = pytest.mark.anyio

FUNCTIONS = {
    "helloWorld.js": HELLO_WORLD_JS,
    "echo.py": "def main(event):\n    return event['data']\n",
    "picky.js": (
        "exports.main = async function (event) {\n"
        "  if (event.data.n % 4 === 0) throw new RangeError('multiple of 4')\n"
        "  return event.data.n\n"
        "}\n"
    ),
    "slow.py": (
        "import time\n\n"
        "def main(event):\n"
        "    time.sleep(event['data'].get('sleep', 0))\n"
        "    return event['data']['n']\n"
    ),
}


@attrs.frozen
class Run:
    """A finished CLI run."""

    status: int
    stdout: str
    stderr: str


@pytest.fixture(name="engine")
async def _engine() -> AsyncIterator[Engine]:
    """A local engine serving helloWorld and a few test functions."""
    async with running_engine(FUNCTIONS, concurrency=8) as engine:
        yield engine


@pytest.fixture(name="env")
def _env(tmp_path: Path, engine: Engine) -> dict[str, str]:
    """The app and server credentials from environment variables; no developer settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MINAPP") and k not in ("NO_COLOR", "PYTHONWARNINGS")
    }
    env["MINAPP_ASYNC_HOME"] = str(tmp_path / "home")
    env["MINAPP_BASE_URL"] = engine.url
    env["MINAPP_CLIENT_ID"] = engine.client_id
    env["MINAPP_CLIENT_SECRET"] = engine.client_secret
    return env


async def cli(*args: str, env: Mapping[str, str], stdin: str = "") -> Run:
    """Run ``python -m minapp_async map ARGS`` without blocking the engine's event loop."""
    with anyio.fail_after(90):
        done = await anyio.run_process(
            [sys.executable, "-m", "minapp_async", "map", *args],
            input=stdin.encode(),
            env=dict(env),
            check=False,
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_maps_every_line_to_an_output_line(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """Each input line gives one output line with its index and the reply; exit 0."""
    names = [f"user{i}" for i in range(40)]
    source = write_jsonl(tmp_path / "in.jsonl", [{"name": n} for n in names])
    out = tmp_path / "out.jsonl"

    run = await cli("helloWorld", "--input", str(source), "--output", str(out),
                    "--concurrency", "8", env=env)  # fmt: skip

    assert 0 == run.status, run.stderr
    records = sorted(read_jsonl(out), key=lambda r: r["index"])
    assert list(range(40)) == [r["index"] for r in records]
    assert [f"hello {n}" for n in names] == [r["data"] for r in records]
    assert all(r["code"] == 0 and r["error"] == {} for r in records)
    assert "" == run.stdout
    assert "40 items" in run.stderr and "40 ok, 0 failed, 0 errors" in run.stderr
    assert "Traceback" not in run.stderr
    assert engine.client_secret not in run.stderr


async def test_ordered_output_and_blank_lines(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """--ordered writes in input order; a blank line is skipped but keeps its line index."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"n": 0, "sleep": 0.2}\n\n{"n": 2}\n{"n": 3}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"

    run = await cli("slow", "--input", str(source), "--output", str(out), "--ordered", env=env)

    assert 0 == run.status, run.stderr
    assert [(0, 0), (2, 2), (3, 3)] == [(r["index"], r["data"]) for r in read_jsonl(out)]


async def test_failures_are_written_and_exit_non_zero(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """A function failing for some items: their lines carry the code; exit status 3."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n} for n in range(1, 10)])
    out = tmp_path / "out.jsonl"

    run = await cli("picky", "--input", str(source), "--output", str(out), env=env)

    records = {r["index"]: r for r in read_jsonl(out)}
    assert 3 == run.status, run.stderr
    assert [3, 7] == sorted(i for i, r in records.items() if r["code"] != 0)
    assert "multiple of 4" in records[3]["error"]["message"]
    assert "7 ok, 2 failed" in run.stderr


async def test_call_errors_are_error_lines(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """A call that times out is written as {index, error_code, message, may_have_executed}
    (true: the request was sent, the function may have run); exit status 1."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": 0}, {"n": 1, "sleep": 3}, {"n": 2}])
    out = tmp_path / "out.jsonl"

    run = await cli("slow", "--input", str(source), "--output", str(out), "--timeout", "0.5",
                    env=env)  # fmt: skip

    records = {r["index"]: r for r in read_jsonl(out)}
    assert 1 == run.status, run.stderr
    assert {"index", "error_code", "message", "may_have_executed"} == set(records[1])
    assert (601, True) == (records[1]["error_code"], records[1]["may_have_executed"])
    assert "no reply within 0.5 s" in records[1]["message"]
    assert (0, 2) == (records[0]["data"], records[2]["data"])


async def test_resume_skips_what_is_written_and_repairs_a_torn_line(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """A rerun runs only the missing indexes, after removing a half-written last line."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n} for n in range(10)])
    out = tmp_path / "out.jsonl"
    # An interrupted earlier run: items 0, 2 and 5 done (5 failed), item 6 cut off mid-line.
    out.write_text(
        '{"index": 0, "code": 0, "data": 0, "error": {}}\n'
        '{"index": 2, "code": 0, "data": 2, "error": {}}\n'
        '{"index": 5, "error_code": 601, "message": "601: request timeout"}\n'
        '{"index": 6, "code": 0, "da',
        encoding="utf-8",
    )

    run = await cli("echo", "--input", str(source), "--output", str(out), env=env)

    records = read_jsonl(out)
    indexes = [r["index"] for r in records]
    assert 1 == run.status, run.stderr  # item 5's error is still in the output
    assert [0, 2, 5] == indexes[:3]
    assert [1, 3, 4, 6, 7, 8, 9] == sorted(indexes[3:])
    assert 7 == engine.stats().functions["echo"].executions
    assert "resuming: 3 items" in run.stderr
    assert "removed an incomplete last line" in run.stderr

    again = await cli("echo", "--input", str(source), "--output", str(out), env=env)
    assert 10 == len(read_jsonl(out))  # nothing left to do: nothing run, nothing written
    assert 7 == engine.stats().functions["echo"].executions
    assert 1 == again.status


async def test_ctrl_c_finishes_in_flight_and_resumes(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl-C: the calls in flight finish and are written, exit 130; a rerun does the rest
    and no item runs twice."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n, "sleep": 0.3} for n in range(40)])
    out = tmp_path / "out.jsonl"
    args = ["slow", "--input", str(source), "--output", str(out), "--concurrency", "4"]
    process = await anyio.open_process(
        [sys.executable, "-m", "minapp_async", "map", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    async with process:
        with anyio.fail_after(60):
            while not out.exists() or len(read_jsonl(out)) < 4:  # noqa: ASYNC110 - a file
                await anyio.sleep(0.02)
            process.send_signal(signal.SIGINT)
            status = await process.wait()
        assert process.stderr is not None
        stderr = b"".join([chunk async for chunk in process.stderr]).decode()

    first = read_jsonl(out)
    assert 130 == status, stderr
    assert "finishing the calls in flight" in stderr
    assert "Traceback" not in stderr
    assert 4 <= len(first) < 40
    # Every call the engine started was finished and written.
    assert len(first) == engine.stats().functions["slow"].executions

    run = await cli(*args, env=env)
    records = read_jsonl(out)
    assert 0 == run.status, run.stderr
    assert list(range(40)) == sorted(r["index"] for r in records)
    assert 40 == engine.stats().functions["slow"].executions


async def test_stdin_input_and_async_mode(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """--input - reads standard input; --async records the acknowledgements."""
    out = tmp_path / "out.jsonl"
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(5))

    run = await cli("echo", "--input", "-", "--output", str(out), "--async", env=env, stdin=lines)
    await engine.drain(timeout=30)

    assert 0 == run.status, run.stderr
    assert [{"status": "ok"}] * 5 == [r["data"] for r in read_jsonl(out)]
    assert 5 == engine.stats().functions["echo"].executions


async def test_rate_limit(engine: Engine, env: dict[str, str], tmp_path: Path) -> None:
    """--rate 10 over 6 items takes at least half a second."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n} for n in range(6)])
    out = tmp_path / "out.jsonl"
    started = anyio.current_time()

    run = await cli("echo", "--input", str(source), "--output", str(out), "--rate", "10", env=env)

    assert 0 == run.status, run.stderr
    assert anyio.current_time() - started >= 0.5
    assert 6 == len(read_jsonl(out))


async def test_run_wide_error_stops_without_writing(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """No such function: the run stops at once, writes nothing and says why; exit 1."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n} for n in range(20)])
    out = tmp_path / "out.jsonl"

    run = await cli("nope", "--input", str(source), "--output", str(out), env=env)

    assert 1 == run.status
    assert "" == out.read_text()
    assert "error: stopped: 404" in run.stderr
    assert "Traceback" not in run.stderr


async def test_fail_fast(engine: Engine, env: dict[str, str], tmp_path: Path) -> None:
    """--fail-fast stops after the first failed item, which is written; the calls already in
    flight (at most the window, 2 x concurrency) finish and are written too, never cut off."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n} for n in range(1, 200)])
    out = tmp_path / "out.jsonl"

    run = await cli("picky", "--input", str(source), "--output", str(out), "--ordered",
                    "--fail-fast", "--concurrency", "2", env=env)  # fmt: skip

    records = read_jsonl(out)
    assert 3 == run.status, run.stderr
    indexes = [r["index"] for r in records]
    assert [0, 1, 2, 3] == indexes[:4]
    assert 1 == records[3]["code"]
    assert indexes == list(range(len(indexes))) and len(indexes) <= 4 + 2 * 2, indexes
    assert all("error_code" not in r for r in records), records


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"n": 1}\n{"n": \n', "line 2 is not valid JSON"),
        ('{"n": 1}\nNaN\n', "line 2 is not valid JSON: NaN is not JSON"),
    ],
)
async def test_bad_input_line_is_a_usage_error_before_any_call(
    engine: Engine, env: dict[str, str], tmp_path: Path, content: str, message: str
) -> None:
    """A bad line in the input file is named, and nothing is invoked; exit 2."""
    source = tmp_path / "in.jsonl"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"

    run = await cli("echo", "--input", str(source), "--output", str(out), env=env)

    assert 2 == run.status
    assert message in run.stderr
    assert "echo" not in engine.stats().functions
    assert not out.exists()


async def test_bad_stdin_line_stops_the_run(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """Standard input is checked as it is read: a bad line stops the run with exit 2."""
    out = tmp_path / "out.jsonl"
    run = await cli("echo", "--input", "-", "--output", str(out), env=env,
                    stdin='{"n": 0}\n[1,\n')  # fmt: skip

    assert 2 == run.status
    assert "--input '-' line 2 is not valid JSON" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "missing.jsonl"], "cannot read"),
        (["--output", "{input}"], "--input and --output are the same file"),
        (["--concurrency", "0"], "must be >= 1"),
        (["--rate", "-2"], "must be a number > 0"),
    ],
)
async def test_usage_errors(
    engine: Engine, env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    """Unusable options are named; exit 2."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    given = {"--input": str(source), "--output": str(tmp_path / "out.jsonl")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        given[flag] = value.format(input=source)
    run = await cli("echo", *(x for kv in given.items() for x in kv), env=env)

    assert 2 == run.status
    assert message in run.stderr


async def test_output_that_is_not_ours_is_refused(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """An output file whose lines are not map results is never appended to."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"name": "not a result"}\n', encoding="utf-8")

    run = await cli("echo", "--input", str(source), "--output", str(out), env=env)

    assert 2 == run.status
    assert "line 1 has no index" in run.stderr
    assert '{"name": "not a result"}\n' == out.read_text()


async def test_help_lists_map() -> None:
    """The top-level help lists the map command, and its help shows an example."""
    with anyio.fail_after(60):
        top = await anyio.run_process([sys.executable, "-m", "minapp_async", "--help"])
        sub = await anyio.run_process([sys.executable, "-m", "minapp_async", "map", "--help"])
    assert "map" in top.stdout.decode()
    assert "minapp-async map helloWorld --input params.jsonl" in sub.stdout.decode()


#: Runs the CLI as if the "progress" extra were not installed: tqdm cannot be imported.
_WITHOUT_TQDM = (
    "import sys; sys.modules['tqdm'] = None; from minapp_async.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


async def test_progress_line_on_a_terminal(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    """On a terminal without tqdm, stderr shows our redrawn progress line."""
    shown = await map_on_a_terminal(["-c", _WITHOUT_TQDM], env, tmp_path)

    assert "\r" in shown
    assert "/20 done, 0 errors" in shown or "/20 [" in shown  # our line, or tqdm's
    assert "/20 [" not in shown  # ours: tqdm was not there
    assert "20 ok, 0 failed, 0 errors" in shown


async def test_tqdm_bar_on_a_terminal(engine: Engine, env: dict[str, str], tmp_path: Path) -> None:
    """With tqdm installed (the "progress" extra; the test extra has it), stderr shows its bar."""
    shown = await map_on_a_terminal(["-m", "minapp_async"], env, tmp_path)

    bars = [part for part in shown.split("\r") if part.startswith("slow:")]
    assert bars, shown
    assert "20/20 [" in bars[-1]  # tqdm's count and timing, for the whole input
    assert "call/s]" in bars[-1]  # our unit
    assert "/20 done," not in shown  # not our own line
    assert "20 ok, 0 failed, 0 errors" in shown


async def map_on_a_terminal(python_args: list[str], env: Mapping[str, str], tmp_path: Path) -> str:
    """Run ``python PYTHON_ARGS map`` over 20 slow items with stderr on a terminal; what it
    showed there."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": n, "sleep": 0.05} for n in range(20)])
    out = tmp_path / "out.jsonl"
    args = ["slow", "--input", str(source), "--output", str(out), "--concurrency", "2"]
    main, child = pty.openpty()
    # A real terminal has a size; tqdm draws nothing on a 0-column one.
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        with anyio.fail_after(60):
            process = await anyio.open_process(
                [sys.executable, *python_args, "map", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=child,
                env={**env, "NO_COLOR": "1"},
            )
            os.close(child)
            child = -1
            async with process:
                shown = await anyio.to_thread.run_sync(_read_all, main)
                assert 0 == await process.wait(), shown
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    return shown


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
