"""A worker stand-in for the sandbox tests: it does what a hostile function would.

Run as ``python -I sandbox_worker.py FD SCENARIO TOKEN [ARGS...]``; it reports JSON lines on
descriptor FD, the way the real workers do. TOKEN is in every descendant's command line, so the
test can find them all from the host's /proc. Standard library only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

FD = int(sys.argv[1])
SCENARIO = sys.argv[2]
TOKEN = sys.argv[3]
ARGS = sys.argv[4:]
# sysfs files root may write by mode alone; the first that exists here is tried.
SYSFS_KNOBS = (
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/power/state",
    "/sys/kernel/profiling",
)
_FOREVER = "import signal\nwhile True: signal.pause()"


def send(**message: object) -> None:
    os.write(FD, (json.dumps(message) + "\n").encode())


def forever(ready: int) -> None:
    """A descendant that tells it started, then lives until killed."""
    os.write(ready, b"x")
    while True:
        signal.pause()


def spawn_descendants() -> int:
    """Five kinds of descendants; returns how many started."""
    ready_r, ready_w = os.pipe()
    kinds = 0
    if os.fork() == 0:  # a plain child, in the worker's process group
        forever(ready_w)
    kinds += 1
    if os.fork() == 0:  # a new session
        os.setsid()
        forever(ready_w)
    kinds += 1
    if os.fork() == 0:  # a new process group
        os.setpgid(0, 0)
        forever(ready_w)
    kinds += 1
    if os.fork() == 0:  # double fork: an orphan in a new session
        os.setsid()
        if os.fork() == 0:
            forever(ready_w)
        os._exit(0)
    kinds += 1
    # An exec'd program in a new session, with the token in its argv.
    subprocess.Popen(
        [sys.executable, "-I", "-c", f"import os\nos.write({ready_w}, b'x')\n{_FOREVER}", TOKEN],
        start_new_session=True,
        pass_fds=(ready_w,),
    )
    kinds += 1
    os.close(ready_w)
    started = 0
    deadline = time.monotonic() + 20
    while started < kinds and time.monotonic() < deadline:
        readable, _, _ = select.select([ready_r], [], [], deadline - time.monotonic())
        if readable:
            started += len(os.read(ready_r, 16))
    return started


def attempt(action: object) -> str:
    """'ok:<value>' or 'error:<exception name>'."""
    try:
        return f"ok:{action() if callable(action) else action}"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"error:{type(exc).__name__}"


def first(paths: tuple[str, ...]) -> str:
    return next((p for p in paths if os.path.exists(p)), paths[0])


def read(path: str) -> str:
    with open(path, "rb") as file:
        return file.read(4096).decode("utf-8", "replace")


def spy(engine_pid: int, port: int) -> dict[str, object]:
    def connect() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"

    def write_tmp() -> str:
        with open(f"/tmp/{TOKEN}", "w") as file:
            file.write("inside")
        return read(f"/tmp/{TOKEN}")

    return {
        "environ_1": attempt(lambda: read("/proc/1/environ")),
        "engine_cmdline": attempt(lambda: read(f"/proc/{engine_pid}/cmdline")),
        "engine_environ": attempt(lambda: read(f"/proc/{engine_pid}/environ")),
        "engine_mem": attempt(lambda: read(f"/proc/{engine_pid}/mem")),
        "kill_engine": attempt(lambda: os.kill(engine_pid, signal.SIGTERM)),
        "connect": attempt(connect),
        "tmp": attempt(write_tmp),
        "cgroup": attempt(lambda: os.listdir("/sys/fs/cgroup")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "write_sysctl": attempt(
            lambda: os.close(os.open("/proc/sys/kernel/hostname", os.O_WRONLY))
        ),
        "write_sysfs": attempt(lambda: os.close(os.open(first(SYSFS_KNOBS), os.O_WRONLY))),
        "umount": subprocess.run(["umount", "/tmp"], capture_output=True, check=False).returncode,
        "env": dict(os.environ),
    }


def hog(megabytes: int) -> int | None:
    """A child allocates (and touches) this much; returns its exit status."""
    code = f"chunks = [b'\\x01' * (1 << 20) for _ in range({megabytes})]\n{_FOREVER}"
    child = subprocess.Popen([sys.executable, "-I", "-c", code, TOKEN])
    try:
        return child.wait(timeout=60)
    except subprocess.TimeoutExpired:  # it got all it asked for
        child.kill()
        return None


def main() -> None:
    if SCENARIO == "hello":
        send(t="hello", cwd=os.getcwd())
    elif SCENARIO in ("spawn", "spawn_exit"):
        send(t="spawned", started=spawn_descendants())
        if SCENARIO == "spawn":
            while True:
                signal.pause()
        # spawn_exit: exit once the test has seen the descendants (it creates "go" in our
        # folder), so that they are not gone before it could count them.
        deadline = time.monotonic() + 30
        while not os.path.exists("go") and time.monotonic() < deadline:
            time.sleep(0.01)
    elif SCENARIO == "spy":
        send(t="spy", **spy(int(ARGS[0]), int(ARGS[1])))
    elif SCENARIO == "hog":
        send(t="hog", child=hog(int(ARGS[0])))
    elif SCENARIO == "crash":
        send(t="crashing")
        os.kill(os.getpid(), signal.SIGSEGV)
    elif SCENARIO == "idle_hog":  # reports, goes idle, and a child it left grows meanwhile
        code = "chunks = []\nwhile True:\n    chunks.append(b'\\x01' * (1 << 20))"
        subprocess.Popen([sys.executable, "-I", "-c", code, TOKEN], start_new_session=True)
        send(t="idle")
        while True:
            signal.pause()
    else:
        raise SystemExit(f"unknown scenario {SCENARIO!r}")


if __name__ == "__main__":
    main()
