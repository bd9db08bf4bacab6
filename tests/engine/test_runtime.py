"""The engine's function runtime, against real Node.js and Python workers.

Workers run contained (as by default) except in tests that check, by a pid a function reports,
that its processes are gone: inside its pid namespace a worker's pid means nothing here.
test_containment.py checks the same ends for contained workers.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import wait_until

from minapp_async.engine.runtime import RunOutcome, Runtime

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "functions"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (LOG|INFO|WARN|ERROR) (.*)")


@pytest.fixture(name="node")
def _node() -> str:
    """node on PATH. The project requires Node.js (README), so a machine without it fails
    these tests with this message instead of silently skipping them."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("Node.js is not installed: these tests run real Node.js functions")
    return path


needs_node = pytest.mark.usefixtures("node")


def write(folder: Path, filename: str, source: str) -> None:
    path = folder / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")


async def call(runtime: Runtime, name: str, data: Any = None, limit: float = 10.0) -> RunOutcome:
    return await runtime.run(name, {"data": data, "eventType": "sdk"}, time_limit=limit)


def log_lines(outcome: RunOutcome) -> list[tuple[str, str]]:
    """(level, message) for each line; every line must have the documented format."""
    lines = []
    for line in outcome.log.splitlines():
        match = LOG_LINE.fullmatch(line)
        assert match, f"badly formatted log line: {line!r}"
        lines.append((match[1], match[2]))
    return lines


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def not_even_a_zombie(pid: int) -> bool:
    """True once the process is reaped (a zombie still has its /proc entry)."""
    return not os.path.exists(f"/proc/{pid}")


async def wait_until_gone(pid: int) -> None:
    await wait_until(lambda: not running(pid), what=f"process {pid} to go away", within=5.0)


def real(path: Path) -> Path:
    return path.resolve()


@pytest.fixture(name="folder")
def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "functions"
    folder.mkdir()
    return folder


@pytest.fixture(name="runtime")
async def _runtime(folder: Path) -> AsyncIterator[Runtime]:
    runtime = Runtime(folder, memory_limit_mb=256)
    yield runtime
    await runtime.aclose()


@pytest.fixture(name="uncontained")
async def _uncontained(folder: Path) -> AsyncIterator[Runtime]:
    """For tests that check, by the pid a function reports, that its processes are gone: in a
    pid namespace that pid means nothing here (test_containment.py checks contained trees)."""
    runtime = Runtime(folder, memory_limit_mb=256, contain=False)
    yield runtime
    await runtime.aclose()


# -- Node.js ---------------------------------------------------------------------------------


@needs_node
async def test_seed_hello_world_runs_verbatim(folder: Path, runtime: Runtime) -> None:
    """The seed's helloWorld.js, unchanged, answers 'hello allen' in a code-0 envelope."""
    shutil.copy(EXAMPLES / "helloWorld.js", folder / "helloWorld.js")
    outcome = await call(runtime, "helloWorld", {"name": "allen"})
    assert outcome.status == "fulfilled"
    assert outcome.result == {"code": 0, "data": "hello allen", "error": {}}
    assert outcome.error_msg is None
    assert outcome.log == ""
    assert outcome.execution_time_ms > 0
    assert outcome.mem_usage > 1024 * 1024  # a Node process uses megabytes


@needs_node
async def test_node_async_main_returns_its_value(folder: Path, runtime: Runtime) -> None:
    """An async main's return value is the data; `return null` gives data null."""
    write(
        folder,
        "asyncy.js",
        """
        exports.main = async function (event) {
          await new Promise((resolve) => setTimeout(resolve, 10))
          return event.data === 'null' ? null : { doubled: event.data * 2 }
        }
        """,
    )
    assert (await call(runtime, "asyncy", 21)).result == {
        "code": 0,
        "data": {"doubled": 42},
        "error": {},
    }
    assert (await call(runtime, "asyncy", "null")).result == {"code": 0, "data": None, "error": {}}


@needs_node
async def test_node_module_exports_main_and_plain_return(folder: Path, runtime: Runtime) -> None:
    """module.exports.main works, and a plain (event) => value function returns its value."""
    write(folder, "plain.js", "module.exports.main = (event) => 'plain ' + event.data\n")
    outcome = await call(runtime, "plain", "value")
    assert outcome.result == {"code": 0, "data": "plain value", "error": {}}


@needs_node
async def test_node_callback_error_and_throw_give_code_1(folder: Path, runtime: Runtime) -> None:
    """callback(err), callback('text'), a throw and a rejection give code 1 with message/stack/type."""
    write(
        folder,
        "fails.js",
        """
        exports.main = async function (event, callback) {
          if (event.data === 'callback') return callback(new TypeError('bad input'))
          if (event.data === 'string') return callback('plain failure')
          if (event.data === 'throw') throw new RangeError('out of range')
          await null
          throw new SyntaxError('rejected later')
        }
        """,
    )
    callback = (await call(runtime, "fails", "callback")).result
    assert callback is not None
    assert callback["code"] == 1 and callback["data"] is None
    assert callback["error"]["message"] == "bad input"
    assert callback["error"]["type"] == "TypeError"
    assert "TypeError: bad input" in callback["error"]["stack"]
    assert "fails.js" in callback["error"]["stack"]

    string = await call(runtime, "fails", "string")
    assert string.status == "execution_failed"
    assert string.result == {
        "code": 1,
        "data": None,
        "error": {"message": "plain failure", "stack": "", "type": "Error"},
    }

    thrown = (await call(runtime, "fails", "throw")).result
    assert thrown is not None
    assert (thrown["code"], thrown["error"]["type"]) == (1, "RangeError")
    assert thrown["error"]["message"] == "out of range"

    rejected = (await call(runtime, "fails", "reject")).result
    assert rejected is not None
    assert (rejected["code"], rejected["error"]["type"]) == (1, "SyntaxError")


@needs_node
async def test_node_syntax_error_is_a_code_1_result(folder: Path, runtime: Runtime) -> None:
    """A function that does not parse fails with type SyntaxError, like the platform's debug API."""
    write(folder, "broken.js", "exports.main = function (event, callback) { callback(null, 1 }\n")
    outcome = await call(runtime, "broken")
    assert outcome.status == "execution_failed"
    assert outcome.result is not None
    assert outcome.result["code"] == 1
    assert outcome.result["error"]["type"] == "SyntaxError"


@needs_node
async def test_node_missing_main_is_explained(folder: Path, runtime: Runtime) -> None:
    """A module without exports.main fails with a message saying so."""
    write(folder, "nomain.js", "exports.handler = () => 1\n")
    outcome = await call(runtime, "nomain")
    assert outcome.result is not None
    assert "does not export a main function" in outcome.result["error"]["message"]


@needs_node
async def test_node_logs_have_levels(folder: Path, runtime: Runtime) -> None:
    """console.log/info/warn/error and raw stream writes land in the job log with their levels."""
    write(
        folder,
        "logs.js",
        """
        exports.main = function (event, callback) {
          console.log('plain %s', 'text', { a: 1 })
          console.info('for your info')
          console.warn('careful')
          console.error('broken')
          process.stdout.write('raw out\\n')
          process.stderr.write('raw err\\n')
          callback(null, 'done')
        }
        """,
    )
    outcome = await call(runtime, "logs")
    assert outcome.result == {"code": 0, "data": "done", "error": {}}
    assert log_lines(outcome) == [
        ("LOG", "plain text { a: 1 }"),
        ("INFO", "for your info"),
        ("WARN", "careful"),
        ("ERROR", "broken"),
        ("LOG", "raw out"),
        ("ERROR", "raw err"),
    ]


@needs_node
async def test_node_output_cannot_forge_a_result(folder: Path, runtime: Runtime) -> None:
    """Protocol-looking text printed by the function stays log text; the real result wins."""
    forged = json.dumps({"t": "result", "j": 1, "r": {"code": 0, "data": "forged", "error": {}}})
    write(
        folder,
        "forger.js",
        f"""
        const fs = require('fs')
        exports.main = function (event, callback) {{
          console.log({json.dumps(forged)})
          fs.writeSync(1, {json.dumps(forged + chr(10))})
          fs.writeSync(2, {json.dumps(forged + chr(10))})
          callback(null, 'genuine')
        }}
        """,
    )
    outcome = await call(runtime, "forger")
    assert outcome.result == {"code": 0, "data": "genuine", "error": {}}
    assert outcome.log.count('"forged"') >= 1


@needs_node
async def test_node_result_must_be_json(folder: Path, runtime: Runtime) -> None:
    """Data that JSON cannot carry (a BigInt) is an execution failure with a clear message."""
    write(folder, "bigint.js", "exports.main = async () => ({ n: 10n })\n")
    outcome = await call(runtime, "bigint")
    assert outcome.status == "execution_failed"
    assert outcome.result is not None
    assert "not JSON-serialisable" in outcome.result["error"]["message"]


@needs_node
async def test_node_event_is_passed_as_given(folder: Path, runtime: Runtime) -> None:
    """The function sees the engine's event unchanged."""
    write(folder, "echo.js", "exports.main = async (event) => event\n")
    event = {
        "data": {"list": [1, 2.5, None, "中文"], "nested": {"ok": True}},
        "eventType": "sdk",
        "jobId": "a" * 32,
        "miniappId": 123,
        "timeLimitInMS": 5000,
        "memoryLimitInMB": 256,
        "request": {"user": {"id": 7}},
    }
    outcome = await runtime.run("echo", event, time_limit=10)
    assert outcome.result == {"code": 0, "data": event, "error": {}}


@needs_node
async def test_late_output_stays_with_its_own_job(folder: Path, runtime: Runtime) -> None:
    """A timer left running by one job logs nothing into the next job on the same worker."""
    write(
        folder,
        "leaky.js",
        """
        exports.main = async function (event) {
          if (event.data === 'first') {
            setTimeout(() => console.log('late line from the first job'), 20)
            return process.pid
          }
          await new Promise((resolve) => setTimeout(resolve, 200))
          console.log('second job')
          return process.pid
        }
        """,
    )
    first = await call(runtime, "leaky", "first")
    second = await call(runtime, "leaky", "second")
    assert first.result is not None and second.result is not None
    assert first.result["data"] == second.result["data"]  # the same warm worker
    assert log_lines(second) == [("LOG", "second job")]


# -- Python ----------------------------------------------------------------------------------


async def test_python_twin_of_hello_world(folder: Path, runtime: Runtime) -> None:
    """examples/functions/hello_py.py answers like the seed's helloWorld."""
    shutil.copy(EXAMPLES / "hello_py.py", folder / "hello_py.py")
    outcome = await call(runtime, "hello_py", {"name": "allen"})
    assert outcome.result == {"code": 0, "data": "hello allen", "error": {}}
    assert outcome.mem_usage > 1024 * 1024


async def test_python_styles(folder: Path, runtime: Runtime) -> None:
    """Sync callback, async return and plain return styles all give the function's data."""
    write(folder, "cb.py", "def main(event, callback):\n    callback(None, event['data'] + 1)\n")
    write(
        folder,
        "coro.py",
        """
        import asyncio

        async def main(event):
            await asyncio.sleep(0.01)
            return {"async": event["data"]}
        """,
    )
    write(folder, "ret.py", "def main(event):\n    return None\n")
    assert (await call(runtime, "cb", 1)).result == {"code": 0, "data": 2, "error": {}}
    assert (await call(runtime, "coro", "x")).result == {
        "code": 0,
        "data": {"async": "x"},
        "error": {},
    }
    assert (await call(runtime, "ret")).result == {"code": 0, "data": None, "error": {}}


async def test_python_callback_from_a_thread(folder: Path, runtime: Runtime) -> None:
    """A callback-style function may answer later from another thread."""
    write(
        folder,
        "later.py",
        """
        import threading

        def main(event, callback):
            threading.Timer(0.05, callback, args=(None, "from a thread")).start()
        """,
    )
    outcome = await call(runtime, "later")
    assert outcome.result == {"code": 0, "data": "from a thread", "error": {}}


async def test_python_failures_give_code_1(folder: Path, runtime: Runtime) -> None:
    """A raise (sync or async) and callback(err) give code 1 with message/stack/type."""
    write(
        folder,
        "raises.py",
        """
        async def main(event, callback):
            if event["data"] == "callback":
                callback("plain failure")
            elif event["data"] == "exception":
                callback(KeyError("k"))
            else:
                raise ValueError("no good")
        """,
    )
    raised = (await call(runtime, "raises", "raise")).result
    assert raised is not None
    assert raised["code"] == 1 and raised["data"] is None
    assert (raised["error"]["type"], raised["error"]["message"]) == ("ValueError", "no good")
    assert "Traceback" in raised["error"]["stack"] and "raises.py" in raised["error"]["stack"]
    assert (await call(runtime, "raises", "callback")).result == {
        "code": 1,
        "data": None,
        "error": {"message": "plain failure", "stack": "", "type": "Error"},
    }
    keyed = (await call(runtime, "raises", "exception")).result
    assert keyed is not None and keyed["error"]["type"] == "KeyError"


@needs_node
async def test_the_first_answer_stands(folder: Path, runtime: Runtime) -> None:
    """A callback followed by a throw or a second callback keeps the first answer."""
    write(
        folder,
        "twice.js",
        """
        exports.main = function (event, callback) {
          callback(null, 'first')
          callback(null, 'second')
          throw new Error('after answering')
        }
        """,
    )
    write(
        folder,
        "twicepy.py",
        """
        def main(event, callback):
            callback(None, "first")
            callback(None, "second")
            raise RuntimeError("after answering")
        """,
    )
    for name in ("twice", "twicepy"):
        outcome = await call(runtime, name)
        assert outcome.result == {"code": 0, "data": "first", "error": {}}


async def test_python_import_error_is_a_code_1_result(folder: Path, runtime: Runtime) -> None:
    """A Python function that does not compile fails with its SyntaxError, and others still run."""
    write(folder, "broken.py", "def main(event:\n    return 1\n")
    write(folder, "fine.py", "def main(event):\n    return 'fine'\n")
    outcome = await call(runtime, "broken")
    assert outcome.result is not None
    assert outcome.result["error"]["type"] == "SyntaxError"
    assert (await call(runtime, "fine")).result == {"code": 0, "data": "fine", "error": {}}


async def test_python_logs_have_levels(folder: Path, runtime: Runtime) -> None:
    """print -> LOG, stderr -> ERROR, logging levels mapped; raw fd output is captured too."""
    write(
        folder,
        "logs.py",
        """
        import logging
        import os
        import sys

        def main(event):
            print("printed", 1)
            print("to stderr", file=sys.stderr)
            logging.info("informed")
            logging.getLogger("lib").warning("warned")
            logging.error("failed")
            os.write(1, b"raw fd line\\n")
            return "ok"
        """,
    )
    outcome = await call(runtime, "logs")
    assert outcome.result == {"code": 0, "data": "ok", "error": {}}
    lines = log_lines(outcome)
    # The raw fd write travels on another pipe, so only its presence is certain, not its place.
    assert ("LOG", "raw fd line") in lines
    lines.remove(("LOG", "raw fd line"))
    assert lines == [
        ("LOG", "printed 1"),
        ("ERROR", "to stderr"),
        ("INFO", "informed"),
        ("WARN", "lib: warned"),
        ("ERROR", "failed"),
    ]


@pytest.mark.parametrize("language", ["py", "js"])
async def test_raw_output_written_before_the_result_is_in_its_log(
    folder: Path, runtime: Runtime, language: str
) -> None:
    """Lines a function writes straight to its stdout and stderr descriptors, just before it
    returns, reach that job's log every time: they travel on other pipes than the result, and
    the result must not overtake them."""
    if language == "py":
        write(
            folder,
            "raw.py",
            """
            import os

            def main(event):
                for i in range(event["data"]):
                    os.write(1, b"out %d\\n" % i)
                    os.write(2, b"err %d\\n" % i)
                return "ok"
            """,
        )
    else:
        write(
            folder,
            "raw.js",
            """
            const fs = require('fs')
            exports.main = async (event) => {
              for (let i = 0; i < event.data; i++) {
                fs.writeSync(1, `out ${i}\\n`)
                fs.writeSync(2, `err ${i}\\n`)
              }
              return 'ok'
            }
            """,
        )
    for lines in (1, 1, 50, 1, 500):
        outcome = await call(runtime, "raw", lines)
        assert outcome.result == {"code": 0, "data": "ok", "error": {}}
        logged = log_lines(outcome)
        assert [m for level, m in logged if level == "LOG"] == [f"out {i}" for i in range(lines)]
        assert [m for level, m in logged if level == "ERROR"] == [f"err {i}" for i in range(lines)]


async def test_a_child_flooding_stdout_does_not_hold_the_engine(
    folder: Path, runtime: Runtime
) -> None:
    """A child a function leaves writing to the worker's stdout without end: the next jobs on
    that worker still end at once with their results (reading what came before a result is
    bounded), and their logs stay capped."""
    write(
        folder,
        "flood.py",
        """
        import subprocess
        import sys
        import time

        def main(event):
            if event["data"] == "start":
                code = "import os\\nwhile True:\\n    os.write(1, b'x' * 4000 + b'\\\\n')"
                subprocess.Popen([sys.executable, "-c", code])
            else:
                time.sleep(0.05)  # a job that runs a while, as the flood goes on
            return event["data"]
        """,
    )
    with anyio.fail_after(30):
        assert (await call(runtime, "flood", "start")).result == {
            "code": 0,
            "data": "start",
            "error": {},
        }
        flooded = 0
        for n in range(5):
            outcome = await call(runtime, "flood", n)
            assert outcome.result == {"code": 0, "data": n, "error": {}}
            assert len(outcome.log) <= 1024 * 1024 + 4096
            flooded += "x" * 4000 in outcome.log
        assert flooded  # the child did flood (its lines reach the jobs that run meanwhile)


async def test_python_result_must_be_json(folder: Path, runtime: Runtime) -> None:
    """Data that JSON cannot carry is an execution failure naming the problem."""
    write(folder, "obj.py", "def main(event):\n    return {'x': object()}\n")
    write(folder, "nan.py", "def main(event):\n    return float('nan')\n")
    for name in ("obj", "nan"):
        outcome = await call(runtime, name)
        assert outcome.status == "execution_failed"
        assert outcome.result is not None
        assert "not JSON-serialisable" in outcome.result["error"]["message"]


async def test_log_is_capped_at_one_mebibyte(folder: Path, runtime: Runtime) -> None:
    """A chatty function's log stops at 1 MiB with a final line saying it was cut."""
    write(
        folder,
        "chatty.py",
        """
        def main(event):
            for i in range(30000):
                print("x" * 100)
            return "said a lot"
        """,
    )
    outcome = await call(runtime, "chatty", limit=60)
    assert outcome.result == {"code": 0, "data": "said a lot", "error": {}}
    assert 1024 * 1024 - 200 < len(outcome.log.encode()) < 1024 * 1024 + 300
    last = outcome.log.splitlines()[-1]
    assert re.fullmatch(r"\S+ WARN log truncated: .* \d+ more bytes were dropped", last)


# -- limits ----------------------------------------------------------------------------------


@needs_node
async def test_node_runaway_is_killed_while_a_concurrent_job_succeeds(
    folder: Path, runtime: Runtime
) -> None:
    """`while(true){}` is killed at the limit (deadline_exceeded); a concurrent job is unaffected."""
    write(
        folder,
        "spin.js",
        """
        exports.main = function (event, callback) {
          if (event.data === 'spin') { console.log('spinning'); while (true) {} }
          callback(null, process.pid)
        }
        """,
    )
    results: dict[str, RunOutcome] = {}

    async def run(key: str, data: str, limit: float) -> None:
        results[key] = await call(runtime, "spin", data, limit=limit)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "spin", "spin", 0.5)
        tg.start_soon(run, "good", "good", 10.0)
    assert time.monotonic() - started < 5  # killed at the limit, not hung
    spin = results["spin"]
    assert spin.status == "deadline_exceeded"
    assert spin.result is None
    assert spin.error_msg == "cloud function 'spin' timed out after 500 ms"
    assert ("LOG", "spinning") in log_lines(spin)
    assert results["good"].status == "fulfilled"
    # The function still works afterwards, on a fresh or warm worker.
    assert (await call(runtime, "spin", "again")).status == "fulfilled"


async def test_python_runaway_and_sleeper_are_killed(folder: Path, runtime: Runtime) -> None:
    """`while True: pass` and a blocking sleep are killed at the limit; another job succeeds."""
    write(
        folder,
        "stuck.py",
        """
        import time

        def main(event):
            if event["data"] == "spin":
                while True:
                    pass
            if event["data"] == "sleep":
                time.sleep(60)
            return "free"
        """,
    )
    results: dict[str, RunOutcome] = {}

    async def run(data: str, limit: float) -> None:
        results[data] = await call(runtime, "stuck", data, limit=limit)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "spin", 0.4)
        tg.start_soon(run, "sleep", 0.4)
        tg.start_soon(run, "go", 10.0)
    assert time.monotonic() - started < 5
    for data in ("spin", "sleep"):
        assert results[data].status == "deadline_exceeded"
        assert results[data].error_msg == "cloud function 'stuck' timed out after 400 ms"
    assert results["go"].result == {"code": 0, "data": "free", "error": {}}


@needs_node
async def test_never_calling_back_is_killed(folder: Path, runtime: Runtime) -> None:
    """A callback never called, or an async main returning undefined, ends at the limit."""
    write(folder, "silent.js", "exports.main = function (event, callback) {}\n")
    write(folder, "undef.js", "exports.main = async function (event) { return undefined }\n")
    for name in ("silent", "undef"):
        started = time.monotonic()
        outcome = await call(runtime, name, limit=0.3)
        assert time.monotonic() - started < 5
        assert outcome.status == "deadline_exceeded"
        assert outcome.error_msg == f"cloud function {name!r} timed out after 300 ms"


async def test_python_callback_never_called_is_killed(folder: Path, runtime: Runtime) -> None:
    """A Python callback-style function that never answers ends at the limit."""
    write(folder, "silent.py", "def main(event, callback):\n    pass\n")
    outcome = await call(runtime, "silent", limit=0.3)
    assert outcome.status == "deadline_exceeded"


@needs_node
async def test_node_memory_hog_is_killed(folder: Path) -> None:
    """A Node function allocating past the memory limit is killed with a message naming it."""
    write(
        folder,
        "hog.js",
        """
        exports.main = function (event, callback) {
          const keep = []
          if (event.data === 'buffers') { while (true) keep.push(Buffer.alloc(4 * 1024 * 1024, 1)) }
          while (true) keep.push(new Array(100000).fill({ x: Math.random() }))
        }
        """,
    )
    write(folder, "fine.js", "exports.main = async () => 'fine'\n")
    runtime = Runtime(folder, memory_limit_mb=100)
    try:
        for kind in ("heap", "buffers"):
            started = time.monotonic()
            outcome = await call(runtime, "hog", kind, limit=30)
            assert time.monotonic() - started < 20
            assert outcome.status == "execution_failed"
            assert outcome.result is None
            assert outcome.error_msg == (
                "cloud function 'hog' exceeded its memory limit of 100 MB and was killed"
            )
        assert (await call(runtime, "fine")).status == "fulfilled"
    finally:
        await runtime.aclose()


async def test_python_memory_hog_is_killed(folder: Path) -> None:
    """A Python function allocating past the limit (gradually or at once) is killed."""
    write(
        folder,
        "hog.py",
        """
        def main(event):
            if event["data"] == "huge":
                return len(bytearray(64 * 1024 ** 3))
            keep = []
            while True:
                keep.append(bytearray(1024 * 1024))
        """,
    )
    runtime = Runtime(folder, memory_limit_mb=80)
    try:
        for kind in ("gradual", "huge"):
            outcome = await call(runtime, "hog", kind, limit=30)
            assert outcome.status == "execution_failed", kind
            assert outcome.error_msg == (
                "cloud function 'hog' exceeded its memory limit of 80 MB and was killed"
            )
    finally:
        await runtime.aclose()


@needs_node
async def test_crashes_are_contained(folder: Path, runtime: Runtime) -> None:
    """process.exit, os._exit and a segfault fail the job only; the function runs again after."""
    write(
        folder,
        "crash.js",
        """
        exports.main = function (event, callback) {
          if (event.data === 'exit') process.exit(3)
          if (event.data === 'segv') process.kill(process.pid, 'SIGSEGV')
          callback(null, 'alive')
        }
        """,
    )
    write(
        folder,
        "crash.py",
        """
        import ctypes
        import os

        def main(event):
            if event["data"] == "exit":
                os._exit(3)
            if event["data"] == "segv":
                ctypes.string_at(0)
            return "alive"
        """,
    )
    # crash.js shadows crash.py (lookup order), so the Python one gets its own folder.
    pyfolder = folder / "py"
    pyfolder.mkdir()
    (folder / "crash.py").rename(pyfolder / "crashpy.py")
    pyruntime = Runtime(pyfolder)
    try:
        for rt, name in ((runtime, "crash"), (pyruntime, "crashpy")):
            exited = await call(rt, name, "exit")
            assert exited.status == "execution_failed"
            assert exited.result is None
            assert (
                exited.error_msg
                == f"cloud function {name!r} crashed: its worker exited with code 3"
            )
            segv = await call(rt, name, "segv")
            assert segv.status == "execution_failed"
            assert segv.error_msg == (
                f"cloud function {name!r} crashed: its worker was killed by signal SIGSEGV"
            )
            assert (await call(rt, name, "ok")).result == {"code": 0, "data": "alive", "error": {}}
    finally:
        await pyruntime.aclose()


async def test_crash_is_seen_even_when_a_forked_child_holds_the_pipes(
    folder: Path, uncontained: Runtime
) -> None:
    """A worker that forks and then dies fails at once (not at the limit); the child is killed."""
    runtime = uncontained
    write(
        folder,
        "forker.py",
        """
        import os
        import time

        def main(event):
            child = os.fork()
            if child == 0:
                time.sleep(60)
                os._exit(0)
            with open(event["data"], "w") as file:
                file.write(str(child))
            os._exit(3)
        """,
    )
    marker = folder / "child.txt"
    started = time.monotonic()
    outcome = await call(runtime, "forker", str(marker), limit=30)
    assert time.monotonic() - started < 10
    assert outcome.status == "execution_failed"
    assert outcome.error_msg == "cloud function 'forker' crashed: its worker exited with code 3"
    await wait_until_gone(int(marker.read_text()))


@needs_node
async def test_uncaught_async_error_fails_the_job_and_replaces_the_worker(
    folder: Path, runtime: Runtime
) -> None:
    """A throw inside a timer fails that job with the error, and the next job gets a new worker."""
    write(
        folder,
        "timer.js",
        """
        const worker = Math.random()  // contained workers all have the same pid
        exports.main = function (event, callback) {
          if (event.data === 'throw') setTimeout(() => { throw new EvalError('in a timer') }, 1)
          else callback(null, worker)
        }
        """,
    )
    first = await call(runtime, "timer", "pid")
    assert first.result is not None
    failed = await call(runtime, "timer", "throw")
    assert failed.result is not None
    assert failed.result["error"]["type"] == "EvalError"
    assert failed.result["error"]["message"] == "in a timer"
    after = await call(runtime, "timer", "pid")
    assert after.result is not None and after.result["data"] != first.result["data"]


# -- workers: reuse, reload, isolation -------------------------------------------------------


@needs_node
async def test_concurrent_jobs_get_their_own_workers_then_reuse_them(
    folder: Path, runtime: Runtime
) -> None:
    """Concurrent jobs on one function each get a worker; later jobs reuse a warm one."""
    write(
        folder,
        "slow.js",
        """
        const worker = Math.random()  // contained workers all have the same pid
        exports.main = async function (event) {
          await new Promise((resolve) => setTimeout(resolve, 200))
          return worker
        }
        """,
    )
    pids: list[float] = []

    async def run() -> None:
        outcome = await call(runtime, "slow")
        assert outcome.result is not None
        pids.append(outcome.result["data"])

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    assert len(set(pids)) == 4
    again = await call(runtime, "slow")
    assert again.result is not None and again.result["data"] in pids


def processes_running(path: Path) -> set[int]:
    """Live processes (any of ours) whose command line names *path*."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    argv = file.read().split(b"\0")
            except OSError:
                continue
            if os.fsencode(path) in argv and running(int(entry)):
                found.add(int(entry))
    return found


def process_groups(pids: set[int]) -> set[int]:
    """The process groups of *pids*: a worker and what launches it share one."""
    groups = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as file:
                groups.add(int(file.read().rsplit(")", 1)[1].split()[2]))
        except (OSError, IndexError, ValueError):
            continue
    return groups


async def test_prestart_leaves_a_warm_worker_that_the_first_call_uses(
    folder: Path, runtime: Runtime
) -> None:
    """prestart() starts one worker per function in the background; the first call runs on it
    instead of starting another. Names that are not functions are skipped."""
    write(folder, "pre.py", "def main(event):\n    return 'warm'\n")
    path = real(folder / "pre.py")
    runtime.prestart(["pre", "missing", "../bad"])
    await wait_until(lambda: bool(processes_running(path)), what="the pre-started worker")
    started = process_groups(processes_running(path))  # one per worker, contained or not
    assert len(started) == 1
    outcome = await call(runtime, "pre")
    assert outcome.result == {"code": 0, "data": "warm", "error": {}}
    assert process_groups(processes_running(path)) == started


async def test_prestart_then_close_leaves_no_worker(folder: Path) -> None:
    """Closing the runtime while workers are still starting kills and reaps them all."""
    write(folder, "pre.py", "def main(event):\n    return 1\n")
    runtime = Runtime(folder, memory_limit_mb=256)
    runtime.prestart(["pre"])
    await runtime.aclose()
    assert processes_running(real(folder / "pre.py")) == set()


async def test_a_cancel_landing_while_a_worker_closes_still_reaps_it(
    folder: Path, uncontained: Runtime
) -> None:
    """A plain task.cancel() goes through anyio's shields. One that lands while a cancelled
    call is closing its worker (as the engine's shutdown does to every call) must not leave
    the worker unreaped or its pipes open: the runtime's close finishes the job. The worker's
    child, in a session of its own (uncontained, it escapes the group kill), keeps the worker's
    output pipes open, so that close takes a while whether or not the reap is quick."""
    write(
        folder,
        "slow.py",
        """
        import subprocess
        import sys
        import time

        def main(event):
            child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
            )
            with open(event["data"], "w") as file:
                file.write(str(child.pid))
            time.sleep(30)
        """,
    )
    marker = folder / "child.txt"
    fds_before = set(os.listdir("/proc/self/fd"))
    task = asyncio.get_running_loop().create_task(call(uncontained, "slow", str(marker), 60))
    await wait_until(lambda: marker.exists() and marker.read_text() != "", what="the job")
    child = int(marker.read_text())
    try:
        (worker,) = processes_running(real(folder / "slow.py"))
        task.cancel()
        await asyncio.sleep(0)  # one loop step: the call sees the cancel and starts closing
        task.cancel()  # and this one lands in the middle of that close
        with pytest.raises(asyncio.CancelledError):
            await task
        await uncontained.aclose()
        assert not_even_a_zombie(worker), "the worker was left a zombie"
        assert set(os.listdir("/proc/self/fd")) <= fds_before, "the worker's pipes were left open"
        gc.collect()  # an unreaped Popen or an unclosed pipe transport warns (an error) here
    finally:
        os.kill(child, signal.SIGKILL)


FREEZER = Path("/sys/fs/cgroup/freezer")


@pytest.mark.skipif(
    os.geteuid() != 0 or not FREEZER.is_dir(),
    reason="needs root and the cgroup v1 freezer, to hold a worker past SIGKILL",
)
async def test_a_worker_that_outlives_its_kill_is_reaped_when_it_exits(
    folder: Path, uncontained: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker frozen by the kernel does not die at SIGKILL until it thaws. Its close gives up
    waiting after a while (the job is not held up), says so, and the worker is still reaped
    when it finally exits: no zombie, no ResourceWarning."""
    write(
        folder,
        "slow.py",
        """
        import time

        def main(event):
            open(event["data"], "w").close()
            time.sleep(30)
        """,
    )
    marker = folder / "started"
    task = asyncio.get_running_loop().create_task(call(uncontained, "slow", str(marker), 60))
    await wait_until(marker.exists, what="the job to start")
    (worker,) = processes_running(real(folder / "slow.py"))
    freezer = FREEZER / f"minapp-test-{os.getpid()}-{worker}"
    freezer.mkdir()
    try:
        (freezer / "cgroup.procs").write_text(str(worker))
        (freezer / "freezer.state").write_text("FROZEN")
        await wait_until(
            lambda: (freezer / "freezer.state").read_text().strip() == "FROZEN", what="frozen"
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert f"worker pid {worker} did not exit within" in caplog.text
        assert not not_even_a_zombie(worker)
    finally:
        (freezer / "freezer.state").write_text("THAWED")
        await wait_until(lambda: not (freezer / "cgroup.procs").read_text(), what="it to exit")
        freezer.rmdir()
    await wait_until(lambda: not_even_a_zombie(worker), what="the worker to be reaped")
    gc.collect()  # an unreaped Popen would warn (an error) here


async def test_hot_reload_uses_the_new_code(folder: Path, runtime: Runtime) -> None:
    """Changing the function's file makes the next run use the new code."""
    write(folder, "version.py", "def main(event):\n    return 'v1'\n")
    assert (await call(runtime, "version")).result == {"code": 0, "data": "v1", "error": {}}
    assert (await call(runtime, "version")).result == {"code": 0, "data": "v1", "error": {}}
    write(folder, "version.py", "def main(event):\n    return 'version two'\n")
    outcome = await call(runtime, "version")
    assert outcome.result == {"code": 0, "data": "version two", "error": {}}


@needs_node
async def test_hot_reload_node(folder: Path, runtime: Runtime) -> None:
    """A Node function is reloaded too (no stale require cache)."""
    write(folder, "version.js", "exports.main = async () => 'v1'\n")
    assert (await call(runtime, "version")).result == {"code": 0, "data": "v1", "error": {}}
    write(folder, "version.js", "exports.main = async () => 'version two'\n")
    outcome = await call(runtime, "version")
    assert outcome.result == {"code": 0, "data": "version two", "error": {}}


@needs_node
async def test_hot_reload_in_a_huge_function_folder(folder: Path, runtime: Runtime) -> None:
    """A function folder with far more files and folders than are watched (3,000 of each):
    its entry file's edits are still seen, whatever part of the tree goes unwatched."""
    data = folder / "huge" / "data"
    data.mkdir(parents=True)
    for i in range(3000):
        (data / f"f{i}.txt").write_text("x")
        (data / f"d{i}").mkdir()
    write(folder, "huge/index.js", "exports.main = async () => 'v1'\n")
    assert (await call(runtime, "huge")).result == {"code": 0, "data": "v1", "error": {}}
    write(folder, "huge/index.js", "exports.main = async () => 'version two'\n")
    outcome = await call(runtime, "huge")
    assert outcome.result == {"code": 0, "data": "version two", "error": {}}


@needs_node
async def test_hot_reload_of_a_node_helper_module(folder: Path, uncontained: Runtime) -> None:
    """Editing name/util.js, which name/index.js requires, reloads the function: the next
    run uses the new helper, on a new worker, and the old warm worker is retired. Unchanged
    files keep the warm worker."""
    runtime = uncontained  # (it checks that the old worker's host pid is gone)
    write(folder, "calc/util.js", "exports.version = () => 'v1'\n")
    write(
        folder,
        "calc/index.js",
        "const util = require('./util')\n"
        "exports.main = async () => ({ version: util.version(), pid: process.pid })\n",
    )
    first = await call(runtime, "calc")
    assert first.result is not None and first.result["data"]["version"] == "v1"
    old_pid = first.result["data"]["pid"]
    warm = await call(runtime, "calc")
    assert warm.result is not None and warm.result["data"]["pid"] == old_pid
    write(folder, "calc/util.js", "exports.version = () => 'version two'\n")
    reloaded = await call(runtime, "calc")
    assert reloaded.result is not None
    assert reloaded.result["data"]["version"] == "version two"
    assert reloaded.result["data"]["pid"] != old_pid
    assert not running(old_pid)


async def test_hot_reload_of_a_python_helper_module(folder: Path, uncontained: Runtime) -> None:
    """Editing a helper module a Python function imports (a neighbour, or one in a package
    folder) reloads the function on its next run; a folder function's files do not."""
    runtime = uncontained  # (it checks that the old worker's host pid is gone)
    write(folder, "helpers.py", "GREETING = 'hi'\n")
    write(folder, "lib/words.py", "WORD = 'one'\n")
    write(
        folder,
        "greet.py",
        "import os\nimport helpers\nfrom lib import words\n\n"
        "def main(event):\n    return [helpers.GREETING, words.WORD, os.getpid()]\n",
    )
    first = await call(runtime, "greet")
    assert first.result is not None and first.result["data"][:2] == ["hi", "one"]
    old_pid = first.result["data"][2]
    write(folder, "other/index.js", "exports.main = async () => 1\n")  # another function
    warm = await call(runtime, "greet")
    assert warm.result is not None and warm.result["data"][2] == old_pid
    write(folder, "helpers.py", "GREETING = 'hello again'\n")
    second = await call(runtime, "greet")
    assert second.result is not None and second.result["data"][:2] == ["hello again", "one"]
    assert not running(old_pid)
    write(folder, "lib/words.py", "WORD = 'two words'\n")
    third = await call(runtime, "greet")
    assert third.result is not None and third.result["data"][:2] == ["hello again", "two words"]


async def test_hot_reload_with_remembered_folder_listings(folder: Path, runtime: Runtime) -> None:
    """Folders are listed again only when their mtime changes, and only remembered once that
    mtime is settled: a file added to a folder whose mtime then reads as before (two changes
    within one timestamp tick) is still seen, and so are additions to and in-place edits in
    a folder listed long ago."""
    write(folder, "lib/a.py", "A = 1\n")
    write(
        folder,
        "listing.py",
        "import os\n\nHERE = os.path.dirname(os.path.abspath(__file__))\n"
        "FILES = sorted(os.listdir(os.path.join(HERE, 'lib')))\n"
        "SIZE = os.path.getsize(os.path.join(HERE, 'lib', 'a.py'))\n\n"
        "def main(event):\n    return [FILES, SIZE]\n",
    )
    lib = folder / "lib"

    async def seen() -> Any:
        outcome = await call(runtime, "listing")
        assert outcome.result is not None, outcome.error_msg
        return outcome.result["data"]

    assert await seen() == [["a.py"], 6]
    # A recent folder: an entry added with the folder's mtime put back as it was.
    before = lib.stat()
    write(folder, "lib/b.py", "B = 2\n")
    os.utime(lib, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert await seen() == [["a.py", "b.py"], 6]
    # A settled folder (mtime an hour ago): listed once, then remembered.
    past = time.time_ns() - 3600 * 10**9
    os.utime(lib, ns=(past, past))
    assert await seen() == [["a.py", "b.py"], 6]
    assert await seen() == [["a.py", "b.py"], 6]
    write(folder, "lib/a.py", "A = 'edited'\n")  # in place: lib's mtime stays
    assert lib.stat().st_mtime_ns == past
    assert await seen() == [["a.py", "b.py"], 13]
    write(folder, "lib/c.py", "C = 3\n")  # a new entry: lib's mtime moves
    assert await seen() == [["a.py", "b.py", "c.py"], 13]


@needs_node
async def test_workers_get_a_clean_environment(
    folder: Path, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine environment variable reaches user code, and cwd is the function's folder."""
    monkeypatch.setenv("MINAPP_TEST_SECRET", "s3cr3t-value")
    write(
        folder, "env.js", "exports.main = async () => ({ env: process.env, cwd: process.cwd() })\n"
    )
    write(folder, "pkg/index.js", "exports.main = async () => process.cwd()\n")
    write(
        folder,
        "envpy.py",
        "import os\n\ndef main(event):\n    return {'env': dict(os.environ), 'cwd': os.getcwd()}\n",
    )
    for name in ("env", "envpy"):
        outcome = await call(runtime, name)
        assert outcome.result is not None
        data = outcome.result["data"]
        assert "MINAPP_TEST_SECRET" not in data["env"]
        assert "s3cr3t-value" not in json.dumps(data)
        assert Path(data["cwd"]) == real(folder)
    folder_fn = await call(runtime, "pkg")
    assert folder_fn.result is not None
    assert Path(folder_fn.result["data"]) == real(folder / "pkg")


async def test_python_function_imports_its_neighbours(folder: Path, runtime: Runtime) -> None:
    """A Python function can import a helper module from its own folder."""
    write(folder, "helpers.py", "GREETING = 'hi'\n")
    write(folder, "greet.py", "import helpers\n\ndef main(event):\n    return helpers.GREETING\n")
    outcome = await call(runtime, "greet")
    assert outcome.result == {"code": 0, "data": "hi", "error": {}}


async def test_idle_workers_are_reaped(folder: Path) -> None:
    """A worker idle for longer than idle_timeout is killed and reaped."""
    write(folder, "pid.py", "import os\n\ndef main(event):\n    return os.getpid()\n")
    runtime = Runtime(folder, idle_timeout=0.2, contain=False)  # host pids (see docstring)
    try:
        outcome = await call(runtime, "pid")
        assert outcome.result is not None
        pid = outcome.result["data"]
        await wait_until_gone(pid)
        assert (await call(runtime, "pid")).status == "fulfilled"
    finally:
        await runtime.aclose()


# -- lookup ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b",
        "..",
        "../functions/ok",
        "ok/../ok",
        "o\x00k",
        "名字",
        "ok\n",
        " ok",
        "ok.js",
        "-ok",
        "a" * 65,
    ],
)
def test_find_rejects_bad_names(folder: Path, name: str) -> None:
    """Names with /, .., NUL, unicode, spaces, dots, a leading '-' or over 64 chars find nothing."""
    write(folder, "ok.js", "exports.main = async () => 1\n")
    runtime = Runtime(folder)
    assert runtime.find("ok") == (folder / "ok.js").resolve()
    assert runtime.find(name) is None


def test_find_lookup_order_and_names(folder: Path) -> None:
    """DIR/name.js, then DIR/name/index.js, then DIR/name.py; names() lists what exists."""
    write(folder, "both.js", "")
    write(folder, "both.py", "")
    write(folder, "pkg/index.js", "")
    write(folder, "only_py.py", "")
    write(folder, f"{'x' * 64}.py", "")
    write(folder, "bad name.js", "")
    write(folder, "notafunction/readme.txt", "")
    runtime = Runtime(folder)
    assert runtime.find("both") == (folder / "both.js").resolve()
    assert runtime.find("pkg") == (folder / "pkg" / "index.js").resolve()
    assert runtime.find("only_py") == (folder / "only_py.py").resolve()
    assert runtime.find("x" * 64) is not None
    assert runtime.find("missing") is None
    assert runtime.names() == ["both", "only_py", "pkg", "x" * 64]


def test_find_never_leaves_the_folder(folder: Path, tmp_path: Path) -> None:
    """A symlink pointing outside the functions folder is not a function."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside, "secret.js", "exports.main = async () => 'escaped'\n")
    write(outside, "index.js", "exports.main = async () => 'escaped'\n")
    (folder / "link.js").symlink_to(outside / "secret.js")
    (folder / "dirlink").symlink_to(outside, target_is_directory=True)
    write(folder, "real.js", "")
    (folder / "inside.js").symlink_to(folder / "real.js")
    runtime = Runtime(folder)
    assert runtime.find("link") is None
    assert runtime.find("dirlink") is None
    assert runtime.find("inside") == (folder / "real.js").resolve()
    assert "link" not in runtime.names()


def test_find_sees_every_change_after_a_first_lookup(folder: Path, tmp_path: Path) -> None:
    """A name found once is remembered, yet each later lookup still sees the folder as it is:
    a file taking precedence, a re-pointed symlink (also to outside), an edit, a removal."""
    write(folder, "f.py", "")
    runtime = Runtime(folder)
    assert runtime.find("f") == (folder / "f.py").resolve()
    write(folder, "f/index.js", "")  # takes precedence over f.py
    assert runtime.find("f") == (folder / "f" / "index.js").resolve()
    write(folder, "f.js", "")  # and f.js over both
    assert runtime.find("f") == (folder / "f.js").resolve()
    before = runtime.locate("f")
    write(folder, "f.js", "exports.main = async () => 2\n")  # an edit: a new version
    after = runtime.locate("f")
    assert before is not None and after is not None and after.key != before.key
    (folder / "f.js").unlink()
    assert runtime.find("f") == (folder / "f" / "index.js").resolve()

    write(folder, "one.js", "")
    write(folder, "two.js", "exports.main = async () => 2\n")
    (folder / "link.js").symlink_to(folder / "one.js")
    assert runtime.find("link") == (folder / "one.js").resolve()
    (folder / "link.js").unlink()
    (folder / "link.js").symlink_to(folder / "two.js")
    assert runtime.find("link") == (folder / "two.js").resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside, "secret.js", "exports.main = async () => 'escaped'\n")
    (folder / "link.js").unlink()
    (folder / "link.js").symlink_to(outside / "secret.js")
    assert runtime.find("link") is None
    (folder / "f" / "index.js").unlink()
    (folder / "f.py").unlink()
    assert runtime.find("f") is None


async def test_bad_arguments_are_refused(folder: Path, runtime: Runtime) -> None:
    """A non-JSON event or a time limit that is not a positive number is refused clearly."""
    write(folder, "ok.py", "def main(event):\n    return 1\n")
    with pytest.raises(TypeError, match="event for cloud function 'ok' is not JSON"):
        await runtime.run("ok", {"data": object()}, time_limit=1)
    for limit in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="time_limit must be a positive number"):
            await runtime.run("ok", {}, time_limit=limit)
    assert (await call(runtime, "ok")).status == "fulfilled"


async def test_unknown_function_raises_lookup_error(runtime: Runtime) -> None:
    """run() on a missing function raises LookupError naming it."""
    with pytest.raises(LookupError, match="cloud function 'nope' not found"):
        await call(runtime, "nope")


async def test_node_missing_gives_a_clear_message(folder: Path) -> None:
    """Without node, .js functions fail with a message saying so; Python functions still run."""
    write(folder, "js.js", "exports.main = async () => 1\n")
    write(folder, "py.py", "def main(event):\n    return 'py'\n")
    runtime = Runtime(folder, node="/nonexistent/node")
    try:
        outcome = await call(runtime, "js")
        assert outcome.status == "execution_failed"
        assert outcome.result is None
        assert outcome.error_msg is not None
        assert outcome.error_msg.startswith("node was not found at '/nonexistent/node'")
        assert "install Node.js" in outcome.error_msg
        assert (await call(runtime, "py")).result == {"code": 0, "data": "py", "error": {}}
    finally:
        await runtime.aclose()
    no_node = Runtime(folder, node=None)
    try:
        outcome = await call(no_node, "js")
        assert outcome.error_msg == (
            "node was not found on PATH: install Node.js to run .js cloud functions"
        )
    finally:
        await no_node.aclose()


# -- shutdown --------------------------------------------------------------------------------


@needs_node
async def test_aclose_leaves_no_processes(folder: Path) -> None:
    """aclose() kills and reaps idle and busy workers, and the children they spawned."""
    write(
        folder,
        "spawner.js",
        """
        const { spawn } = require('child_process')
        exports.main = function (event, callback) {
          const child = spawn('sleep', ['60'], { stdio: 'ignore' })
          if (event.data !== null) { require('fs').writeFileSync(event.data, 'running'); return }
          callback(null, { worker: process.pid, child: child.pid })
        }
        """,
    )
    write(folder, "pid.py", "import os\n\ndef main(event):\n    return os.getpid()\n")
    runtime = Runtime(folder, contain=False)  # host pids (see the module docstring)
    node = await call(runtime, "spawner")
    py = await call(runtime, "pid")
    assert node.result is not None and py.result is not None
    pids = [node.result["data"]["worker"], node.result["data"]["child"], py.result["data"]]
    assert all(running(pid) for pid in pids)
    hung: list[RunOutcome] = []
    marker = folder / "running.txt"

    async def hang() -> None:
        hung.append(await call(runtime, "spawner", str(marker), limit=60))

    async with anyio.create_task_group() as tg:
        tg.start_soon(hang)
        await wait_until(marker.exists, what="the never-answering job to start")
        await runtime.aclose()
    await runtime.aclose()  # idempotent
    assert hung[0].status == "execution_failed"
    assert hung[0].error_msg == "cloud function 'spawner' was stopped because the engine shut down"
    for pid in pids:
        await wait_until_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        await call(runtime, "pid")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@needs_node
async def test_no_descriptor_leaks(folder: Path) -> None:
    """After jobs that succeed, time out and crash, aclose() leaves no file descriptor open."""
    write(folder, "ok.js", "exports.main = async () => 1\n")
    write(folder, "spin.py", "def main(event):\n    while True:\n        pass\n")
    write(folder, "crash.py", "import os\n\ndef main(event):\n    os._exit(1)\n")
    before = open_fds()
    runtime = Runtime(folder)
    try:
        assert (await call(runtime, "ok")).status == "fulfilled"
        assert (await call(runtime, "spin", limit=0.3)).status == "deadline_exceeded"
        assert (await call(runtime, "crash")).status == "execution_failed"
        assert len(open_fds()) > len(before)  # the warm Node worker's pipes
    finally:
        await runtime.aclose()
    assert open_fds() == before


@needs_node
async def test_cancelling_a_job_kills_its_worker(folder: Path, uncontained: Runtime) -> None:
    """Cancelling run() mid-job kills and reaps that job's worker at once."""
    runtime = uncontained
    write(
        folder,
        "hang.js",
        """
        const fs = require('fs')
        exports.main = function (event, callback) {
          fs.writeFileSync(event.data, String(process.pid))
          while (true) {}
        }
        """,
    )
    marker = folder / "pid.txt"
    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, runtime, "hang", str(marker), 60.0)
            await wait_until(lambda: marker.exists() and marker.read_text() != "", what="the job")
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    pid = int(marker.read_text())
    assert not running(pid)  # reaped before run() finished cancelling
    assert (await call(runtime, "hang", str(folder / "second.txt"), 0.3)).status == (
        "deadline_exceeded"
    )
