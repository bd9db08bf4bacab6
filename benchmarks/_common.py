"""What the benchmark scripts share: the import path, the local server, machine notes, /proc.

Run the scripts from a checkout as ``python benchmarks/<name>.py``: this module puts the
checkout first on ``sys.path``, so the package there is measured, installed or not.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent

#: What every client sends: the seed's helloWorld call, as the JS SDK writes it.
FUNCTION = "helloWorld"
PARAMS = {"name": "allen"}
CLIENT_ID = "a4d2d62965ddb57fa4d6"
TOKEN = "bench-token-not-checked-by-the-server"


@contextlib.contextmanager
def job_server(workers: int = 1) -> Iterator[str]:
    """Start ``benchmarks/server.py`` in its own process; yields its base URL.

    With one server process and two CPUs or more, the server is pinned to the last CPU and
    this process (the client) to the others, so that the scheduler never puts both on one
    core: on a small VM that alone moved the same figure by ±15 % from run to run.
    """
    process = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), "--workers", str(workers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = workers == 1 and len(cpus) >= 2
    if pinned:
        os.sched_setaffinity(process.pid, cpus[-1:])
        os.sched_setaffinity(0, cpus[:-1])
        print(f"pinned: client on CPU {cpus[:-1]}, server on CPU {cpus[-1]}")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "listening on http://127.0.0.1:PORT"
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if match is None:
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        yield match[1]
    finally:
        if pinned:
            os.sched_setaffinity(0, cpus)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def children(pid: int) -> list[int]:
    """Every descendant process of *pid* (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_notes() -> str:
    """One line about where the numbers were taken."""
    import aiohttp

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )
