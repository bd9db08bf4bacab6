"""Contained workers: real processes launched through engine/_sandbox.py try to get out.

An engine stand-in (sandbox_engine.py, a child process of the test so it can be SIGKILLed)
launches a worker stand-in (sandbox_worker.py) that forks escapees, spies on the engine, calls
the test's 127.0.0.1 listener, writes /tmp, and allocates beyond the tree's memory limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minapp_async.engine._sandbox import Sandbox, decode_returncode

HERE = Path(__file__).resolve().parent
ENGINE = HERE / "sandbox_engine.py"
SYSFS_KNOBS = (
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/power/state",
    "/sys/kernel/profiling",
)
WORKER = HERE / "sandbox_worker.py"
SECRET = "engine-secret-" + uuid.uuid4().hex  # in the engine's environment and command line
MEMORY_MB = 64
DEADLINE = 20.0  # for any one step; a step that works takes milliseconds


def _probe() -> Sandbox:
    sandbox = Sandbox(memory_limit_mb=MEMORY_MB)
    sandbox.close()
    return sandbox


REPORT = _probe().report
needs_namespaces = pytest.mark.skipif(
    not REPORT.pid_namespace, reason=f"no namespaces here: {REPORT.summary()}"
)
needs_cgroup = pytest.mark.skipif(
    not REPORT.tree_memory_limit, reason=f"no memory cgroup here: {REPORT.summary()}"
)


class StandIn:
    """The engine stand-in process and its JSON lines."""

    def __init__(
        self, mode: str, scenario: str, *args: str, cwd: Path, program: Path = WORKER
    ) -> None:
        self.token = f"sbx-{uuid.uuid4().hex}"
        worker = [sys.executable, "-I", str(program), "{fd}", scenario, self.token, *args]
        self.process = subprocess.Popen(
            [sys.executable, str(ENGINE), mode, str(MEMORY_MB), *worker, SECRET],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env={**os.environ, "ENGINE_SECRET": SECRET},
        )
        self._buffer = b""
        first = self.next()
        self.report: dict[str, Any] = first["report"]
        self.summary: str = first["summary"]

    def next(self) -> dict[str, Any]:
        """The next JSON line, within DEADLINE."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + DEADLINE
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "the engine stand-in said nothing in time"
            readable, _, _ = select.select([self.process.stdout], [], [], left)
            if readable:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                assert chunk, f"the engine stand-in ended (status {self.process.poll()})"
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def worker(self) -> dict[str, Any]:
        message = self.next()
        assert "worker" in message, message
        result: dict[str, Any] = message["worker"]
        return result

    def status(self) -> dict[str, Any]:
        """The tree's memory figures, as the engine's watchdog would read them."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"status\n")
        self.process.stdin.flush()
        message = self.next()
        assert "status" in message, message
        result: dict[str, Any] = message["status"]
        return result

    def kill_worker(self) -> dict[str, Any]:
        """What the engine does at a time limit or when it retires a worker."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"kill\n")
        self.process.stdin.flush()
        return self.next()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=DEADLINE)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture(name="stand_ins")
def _stand_ins() -> Iterator[list[StandIn]]:
    started: list[StandIn] = []
    yield started
    for stand_in in started:
        stand_in.close()
    Sandbox(memory_limit_mb=MEMORY_MB).close()  # cgroups of SIGKILLed stand-ins: removed


def start(
    stand_ins: list[StandIn],
    mode: str,
    scenario: str,
    *args: str,
    cwd: Path,
    program: Path = WORKER,
) -> StandIn:
    stand_in = StandIn(mode, scenario, *args, cwd=cwd, program=program)
    stand_ins.append(stand_in)
    return stand_in


def processes_with(token: str) -> set[int]:
    """Host pids whose command line holds the token."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """Exists and is not a zombie waiting for its parent (the test) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] != b"Z"


def survivors(pids: set[int]) -> set[int]:
    """Those still alive once DEADLINE has passed (returns as soon as none is)."""
    deadline = time.monotonic() + DEADLINE
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the kernel's view; the deadline bounds it
        left = {pid for pid in left if alive(pid)}
    return left


def spawned(stand_in: StandIn) -> set[int]:
    message = stand_in.worker()
    assert {"t": "spawned", "started": 5} == message
    pids = processes_with(stand_in.token) - {stand_in.process.pid}
    # worker + 5 kinds of descendants (+ the launcher's own processes)
    assert len(pids) >= 6, pids
    return pids


# -- the whole tree is the function's ------------------------------------------------------


@needs_namespaces
@pytest.mark.parametrize("scenario", ["spawn", "spawn_exit"])
def test_killing_the_worker_kills_every_descendant(
    stand_ins: list[StandIn], tmp_path: Path, scenario: str
) -> None:
    stand_in = start(stand_ins, "on", scenario, cwd=tmp_path)
    pids = spawned(stand_in)  # (a spawn_exit worker waits for "go", which never comes here)
    end = stand_in.kill_worker()
    assert "exit" in end
    assert set() == survivors(pids)


@needs_namespaces
def test_worker_exiting_by_itself_takes_its_orphans_along(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    stand_in = start(stand_ins, "on", "spawn_exit", cwd=tmp_path)
    pids = spawned(stand_in)
    (tmp_path / "go").touch()  # the worker may exit now
    assert {"exit": 0, "oom": False} == stand_in.next()  # no kill asked for
    assert set() == survivors(pids)


@needs_namespaces
def test_sigkilled_engine_takes_every_descendant_along(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    stand_in = start(stand_ins, "on", "spawn", cwd=tmp_path)
    pids = spawned(stand_in)
    stand_in.process.send_signal(signal.SIGKILL)
    stand_in.process.wait(timeout=DEADLINE)
    assert set() == survivors(pids)


def test_uncontained_mode_leaves_escapees_which_the_report_admits(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    """The contrast: without containment a new-session child outlives a SIGKILLed engine."""
    stand_in = start(stand_ins, "off", "spawn", cwd=tmp_path)
    assert any("outlive" in reason for reason in stand_in.report["missing"])
    pids = spawned(stand_in)
    stand_in.process.send_signal(signal.SIGKILL)
    stand_in.process.wait(timeout=DEADLINE)
    try:
        assert {pid for pid in pids if alive(pid)}
    finally:
        for pid in pids:  # clean up what this test let loose
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# -- functions cannot see the engine -------------------------------------------------------


@needs_namespaces
def test_function_cannot_reach_the_engine(stand_ins: list[StandIn], tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        # "{engine}": the stand-in puts its own pid there.
        stand_in = start(stand_ins, "on", "spy", "{engine}", str(port), cwd=tmp_path)
        spy = stand_in.worker()
    engine_pid = stand_in.process.pid
    assert "spy" == spy.pop("t")
    # Nothing of the engine's secret anywhere the function looked.
    assert SECRET not in json.dumps(spy)
    assert spy["environ_1"].startswith("error:")  # its init has rights the function lacks
    assert spy["connect"].startswith("error:")
    assert engine_pid not in spy["pids"]
    assert spy["pids"] and max(spy["pids"]) < 100  # a pid namespace of its own
    assert {"PATH", "LANG"} <= set(spy["env"]) <= {"PATH", "LANG", "PWD", "LC_CTYPE"}
    assert "ok:inside" == spy["tmp"]
    assert "ok:[]" == spy["cgroup"]
    assert 0 != spy["umount"]  # no capabilities: the private mounts stay
    # Opened for writing only (nothing is written): a uid-0 process may do that by file mode.
    # (Read-only or denied; the files exist, so not FileNotFoundError.)
    assert spy["write_sysctl"] in ("error:OSError", "error:PermissionError")
    if any(Path(knob).exists() for knob in SYSFS_KNOBS):
        assert spy["write_sysfs"] in ("error:OSError", "error:PermissionError")
    assert not list(Path("/tmp").glob(stand_in.token))  # the host's /tmp never saw it
    for probe in ("engine_cmdline", "engine_environ", "engine_mem", "kill_engine"):
        assert spy[probe].startswith("error:"), (probe, spy[probe])
    assert stand_in.process.poll() is None  # the engine is still there


@needs_namespaces
def test_function_cannot_signal_or_read_the_engine_by_its_real_pid(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    # The test's own pid stands for "the engine": it is known and certainly alive.
    engine_pid = os.getpid()
    stand_in = start(stand_ins, "on", "spy", str(engine_pid), "1", cwd=tmp_path)
    spy = stand_in.worker()
    for probe in ("engine_cmdline", "engine_environ", "engine_mem", "kill_engine"):
        assert spy[probe].startswith("error:"), (probe, spy[probe])


# -- the memory limit covers the tree ------------------------------------------------------


@needs_cgroup
def test_child_allocating_beyond_the_tree_limit_dies(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    stand_in = start(stand_ins, "on", "hog", str(MEMORY_MB * 3), cwd=tmp_path)
    assert {"t": "hog", "child": -signal.SIGKILL} == stand_in.worker()
    end = stand_in.kill_worker()
    assert end["oom"] is True


@needs_cgroup
def test_tree_limit_holds_while_the_worker_is_idle(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    """After its job the worker sits idle; a detached child it left keeps growing, and the
    kernel stops it at the tree's limit with no watchdog looking."""
    stand_in = start(stand_ins, "on", "idle_hog", cwd=tmp_path)
    assert {"t": "idle"} == stand_in.worker()
    deadline = time.monotonic() + DEADLINE
    while True:
        status = stand_in.status()
        assert status["memory"] <= MEMORY_MB * 1024 * 1024
        if status["oom"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # polling the kernel's counters; the deadline bounds it
    assert status["oom"] is True
    assert MEMORY_MB * 1024 * 1024 // 2 < status["peak"] <= MEMORY_MB * 1024 * 1024
    assert stand_in.process.poll() is None  # the engine side never noticed a thing


@needs_cgroup
def test_child_within_the_tree_limit_lives(stand_ins: list[StandIn], tmp_path: Path) -> None:
    """The control case: the limit is what kills, not the launcher."""
    stand_in = start(stand_ins, "on", "hog", str(MEMORY_MB // 4), cwd=tmp_path)
    # It would live until the worker's 60 s wait ends; kill the tree before that.
    end = stand_in.kill_worker()
    assert end["oom"] is False


# -- where containment is unavailable ------------------------------------------------------


def test_unavailable_mode_still_runs_functions_and_says_what_is_missing(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    stand_in = start(stand_ins, "off", "hello", cwd=tmp_path)
    report = stand_in.report
    assert not any(
        report[key]
        for key in ("pid_namespace", "net_namespace", "private_tmp", "tree_kill")
        + ("tree_memory_limit",)
    )
    assert "containment is turned off" in report["missing"]
    assert "memory limit is per process" in stand_in.summary
    assert stand_in.summary.startswith("function containment is incomplete: ")
    assert {"t": "hello", "cwd": str(tmp_path)} == stand_in.worker()
    assert {"exit": 0, "oom": False} == stand_in.next()


@needs_namespaces
def test_function_under_tmp_still_finds_its_folder(
    stand_ins: list[StandIn], tmp_path: Path
) -> None:
    """The private /tmp covers the host's, yet a worker whose code and cwd lie under /tmp
    (every test's tmp_path) still has them, at the same path."""
    worker_copy = tmp_path / "my code" / "sandbox_worker.py"  # (a space: fstab escapes it)
    worker_copy.parent.mkdir()
    worker_copy.write_bytes(WORKER.read_bytes())
    stand_in = start(stand_ins, "on", "hello", cwd=tmp_path, program=worker_copy)
    assert stand_in.report["private_tmp"] is True
    assert {"t": "hello", "cwd": str(tmp_path)} == stand_in.worker()
    assert {"exit": 0, "oom": False} == stand_in.next()


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_crash_reads_the_same_contained_or_not(
    stand_ins: list[StandIn], tmp_path: Path, mode: str
) -> None:
    """The namespace's init turns "killed by SIGSEGV" into status 139; decode_returncode
    gives the engine -11 back, as Popen reports it for an uncontained worker."""
    if mode == "on" and not REPORT.pid_namespace:
        pytest.skip(f"no namespaces here: {REPORT.summary()}")
    stand_in = start(stand_ins, mode, "crash", cwd=tmp_path)
    assert {"t": "crashing"} == stand_in.worker()
    assert {"exit": -signal.SIGSEGV, "oom": False} == stand_in.next()


def test_decode_returncode() -> None:
    assert -9 == decode_returncode(137)
    assert -11 == decode_returncode(139)
    assert 1 == decode_returncode(1)
    assert -9 == decode_returncode(-9)
    assert decode_returncode(None) is None


def test_memory_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_limit_mb"):
        Sandbox(memory_limit_mb=0)
