"""An engine stand-in for the sandbox tests: launches one worker the way the engine does.

Run as ``python sandbox_engine.py on|off MEMORY_MB WORKER_ARGV...`` (``{fd}`` in the worker's
argv becomes its message descriptor, ``{engine}`` this process's pid). It prints JSON lines on stdout: first ``{"report": ...}``,
then ``{"worker": message}`` for each message, and ``{"exit": status, "oom": bool}`` once the
worker is gone. A line ``status`` on stdin gets ``{"status": {"memory", "peak", "oom"}}``;
``kill`` (or stdin closing) kills the worker's tree as the engine does at a time limit or when
it retires a worker. The test SIGKILLs this process to play
an engine that dies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import anyio
import attrs

from minapp_async.engine._sandbox import Sandbox, decode_returncode

_lock = threading.Lock()


def emit(**message: object) -> None:
    with _lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def main() -> None:
    mode, memory_mb, *worker_argv = sys.argv[1:]
    sandbox = Sandbox(memory_limit_mb=int(memory_mb), enabled=mode == "on")
    emit(report=attrs.asdict(sandbox.report), summary=sandbox.report.summary(), pid=os.getpid())
    msg_read, msg_write = os.pipe()
    named = {"{fd}": str(msg_write), "{engine}": str(os.getpid())}
    argv = [named.get(arg, arg) for arg in worker_argv]
    # A clean environment, as the runtime gives its workers.
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    launch = sandbox.prepare(argv, env=env, pass_fds=(msg_write,), cwd=os.getcwd())
    popen = subprocess.Popen(
        launch.argv,
        env=launch.env,
        pass_fds=launch.pass_fds,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,  # stdout carries this stand-in's own report
        start_new_session=True,
    )
    os.close(msg_write)
    tree = launch.tree
    tree.started(popen.pid)

    def relay() -> None:
        with os.fdopen(msg_read, "rb") as messages:
            for line in messages:
                emit(worker=json.loads(line))

    relayer = threading.Thread(target=relay, daemon=True)
    relayer.start()
    waiter = threading.Thread(target=popen.wait, daemon=True)
    waiter.start()

    def on_command() -> None:
        for line in sys.stdin:
            if line.strip() != "status":
                break
            status = {"memory": tree.memory(), "peak": tree.peak(), "oom": tree.oom_killed()}
            emit(status=status)
        tree.kill()  # "kill", or end of input: either way the worker goes

    threading.Thread(target=on_command, daemon=True).start()
    waiter.join()
    returncode = decode_returncode(popen.returncode)
    oom = tree.oom_killed()
    anyio.run(tree.aclose)
    sandbox.close()
    relayer.join(timeout=10)
    emit(exit=returncode, oom=oom)


if __name__ == "__main__":
    main()
