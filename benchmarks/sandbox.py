"""Cold-start cost of containment: a worker launched plain against one launched contained.

    python benchmarks/sandbox.py [--rounds 30]

Each round starts, in turn, the same program plain and through engine/_sandbox.py, and times
Popen until the program's first byte on its message pipe ("ready"), then until it is reaped and
its tree released. Programs: `true` (the wrapper alone), `python -I -c` and `node -e` writing one
byte to the pipe. Medians in milliseconds; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import _common  # noqa: F401 - puts the checkout first on sys.path
import anyio

from minapp_async.engine._sandbox import Sandbox


def launch_once(sandbox: Sandbox, argv: list[str]) -> tuple[float, float]:
    """(ms to the first byte, ms to reaped and released)."""
    msg_read, msg_write = os.pipe()
    argv = [str(msg_write) if arg == "{fd}" else arg for arg in argv]
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    started = time.perf_counter()
    launch = sandbox.prepare(argv, env=env, pass_fds=(msg_write,), cwd=os.getcwd())
    popen = subprocess.Popen(
        launch.argv, env=launch.env, pass_fds=launch.pass_fds, start_new_session=True
    )
    os.close(msg_write)
    launch.tree.started(popen.pid)
    os.read(msg_read, 1)
    ready = time.perf_counter()
    popen.wait()
    anyio.run(launch.tree.aclose)
    done = time.perf_counter()
    os.close(msg_read)
    return (ready - started) * 1000, (done - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    plain = Sandbox(memory_limit_mb=256, enabled=False)
    contained = Sandbox(memory_limit_mb=256)
    print(f"contained: {contained.report.summary()}")
    write_fd = "import os, sys; os.write(int(sys.argv[1]), b'r')"
    programs = {
        "sh (wrapper alone)": ["sh", "-c", 'printf r >&"$0"', "{fd}"],
        "python -I": [sys.executable, "-I", "-c", write_fd, "{fd}"],
    }
    node = shutil.which("node")
    if node:
        programs["node"] = [node, "-e", "require('fs').writeSync(+process.argv[1], 'r')", "{fd}"]
    print(f"{'program':20} {'mode':10} {'ready ms':>9} {'released ms':>12}")
    for name, argv in programs.items():
        times: dict[str, list[tuple[float, float]]] = {"plain": [], "contained": []}
        for _ in range(args.rounds):
            times["plain"].append(launch_once(plain, argv))
            times["contained"].append(launch_once(contained, argv))
        medians = {}
        for mode, samples in times.items():
            ready = statistics.median(s[0] for s in samples)
            released = statistics.median(s[1] for s in samples)
            medians[mode] = (ready, released)
            print(f"{name:20} {mode:10} {ready:9.1f} {released:12.1f}")
        added = medians["contained"][0] - medians["plain"][0]
        print(f"{name:20} {'added':10} {added:+9.1f}")
    contained.close()


if __name__ == "__main__":
    main()
