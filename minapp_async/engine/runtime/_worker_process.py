"""One worker subprocess (Node.js or Python): spawning, its pipes, one job at a time, reaping.

The worker talks JSON lines over two private pipes whose fd numbers are passed in argv, never
over stdin/stdout, so user code can neither read a job request nor corrupt a reply; its stdin is
/dev/null. To the worker (the "jobs" pipe): ``{"t":"job","j":<run id>,"e":<event>}`` and the
answers to its BaaS calls, ``{"t":"baas","id":<call id>,"a":<answer>}``. From the worker (the
"messages" pipe): ``ready``, ``log``, ``result``, ``recycle``, ``oom`` and BaaS calls,
``{"t":"baas","j":<run id>,"id":<call id>,"op":<op>,"p":<payload>}``. Whatever still reaches the
real stdout/stderr (child processes, native code, Node's fatal errors) is captured line by line
into the running job's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import anyio

from ..._logs import get_logger
from .._sandbox import ProcessTree, Sandbox, decode_returncode

_logger = get_logger("minapp_async.engine")

LOG_CAP = 1024 * 1024  # bytes of log kept per job
_MESSAGE_CAP = 32 * 1024 * 1024  # one protocol line (a result) may not be larger
_RAW_LINE_CAP = 64 * 1024  # raw stdout/stderr lines are split at this length
_STDERR_TAIL = 8 * 1024  # kept to recognise Node's "heap out of memory" death
_REAP_TIMEOUT = 5.0  # a SIGKILLed process exits at once; this only bounds the pathological case
_DRAIN_CHUNK = 64 * 1024  # a pipe's usual capacity
_DRAIN_READS = 16  # 1 MiB: the most an unprivileged process can make its pipe hold
_PIPE_EOF_TIMEOUT = 1.0  # after the process died, how long its pipes may take to report EOF
FD_PLACEHOLDER = "{fd}"  # in argv, replaced by the number of the worker's message pipe
JOBS_FD_PLACEHOLDER = "{jobs_fd}"  # in argv, replaced by the number of the worker's jobs pipe
#: on_baas(worker, message): a BaaS call the worker made (``message`` as sent, already parsed).
BaasCallback = Callable[["WorkerProcess", dict[str, Any]], None]


def iso_now() -> str:
    """The log's timestamp format, the same as Node's Date.toISOString()."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class WorkerStartError(Exception):
    """The worker process could not be started or died before it was ready."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log = log


class RunLog:
    """A run's log, capped at LOG_CAP bytes; the cut is announced by a final line."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._dropped = 0

    def add(self, line: str) -> None:
        size = len(line.encode("utf-8", "replace"))
        if self._dropped or self._size + size > LOG_CAP:
            self._dropped += size
            return
        self._parts.append(line)
        self._size += size

    def text(self) -> str:
        text = "".join(self._parts)
        if self._dropped:
            text += (
                f"{iso_now()} WARN log truncated: it exceeded {LOG_CAP // 1024} KiB and "
                f"{self._dropped} more bytes were dropped\n"
            )
        return text


class Run:
    """One run of a function in flight on a worker: its log and the envelope it ends with.

    The engine's job record (``minapp_async.engine.Job``) is what callers see; a Run is the
    worker's side of executing it once.
    """

    def __init__(
        self,
        run_id: int,
        loop: asyncio.AbstractEventLoop,
        context: object = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.id = run_id
        self.context = context  # what the runtime's BaaS handler is told about the caller
        self.log = RunLog()
        self.calls: set[asyncio.Task[None]] = set()  # its BaaS calls being answered
        self.call_slots: asyncio.Semaphore | None = None  # made at its first BaaS call
        # Told each log line as it arrives (the engine's terminal output), not only at the end.
        self._on_log = on_log
        # The result envelope, or None when the worker died first.
        self.finished: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.timed_out = False  # ended by its time limit (finished then holds None)
        self.peak_rss = 0

    def add_log(self, line: str) -> None:
        self.log.add(line)
        if self._on_log is not None:
            self._on_log(line)

    def settle(self, envelope: dict[str, Any] | None) -> None:
        if not self.finished.done():
            self.finished.set_result(envelope)

    def expire(self) -> None:
        """Its time limit passed: it ends now, without a result (unless it already ended)."""
        if not self.finished.done():
            self.timed_out = True
            self.finished.set_result(None)


class _LineReader(asyncio.Protocol):
    """Splits a read pipe into lines; an over-long line goes to on_overflow."""

    def __init__(
        self,
        on_line: Callable[[bytes], None],
        max_line: int,
        on_overflow: Callable[[bytes], None],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._on_line = on_line
        self._max_line = max_line
        self._on_overflow = on_overflow
        self._on_close = on_close
        # The unfinished line's chunks: joined once when its newline arrives, so reading a
        # long line (a big result) is linear in its size, not quadratic.
        self._parts: list[bytes] = []
        self._size = 0
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        newline = data.find(b"\n")
        if newline < 0:
            self._parts.append(data)
            self._size += len(data)
        else:
            self._parts.append(data[:newline])
            first = b"".join(self._parts)
            *lines, rest = data[newline + 1 :].split(b"\n")
            self._parts, self._size = [rest], len(rest)
            self._on_line(first)
            for line in lines:
                self._on_line(line)
        if self._size > self._max_line:
            rest = b"".join(self._parts)
            self._parts, self._size = [], 0
            self._on_overflow(rest)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._size:
            rest = b"".join(self._parts)
            self._parts, self._size = [], 0
            self._on_line(rest)
        self.closed.set()
        if self._on_close is not None:
            self._on_close()


class _Sink(asyncio.Protocol):
    """Protocol for the jobs write pipe: nothing to read."""


class WorkerProcess:
    """A started worker process. Not thread-safe; use from the event loop only."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        tree: ProcessTree,
        path: Path,
        key: object,
        name: str,
    ) -> None:
        self._popen = popen
        # The whole process tree: its memory figures and its end. Contained, popen.pid is the
        # launcher (unshare), so per-process /proc figures would measure the wrong process.
        self._tree = tree
        self.path = path  # the function's file
        self.key = key  # identifies the file's version; the pool compares it
        self.name = name
        self.pid = popen.pid
        try:  # readable once the process has exited (Linux >= 5.3)
            self._pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._process_gone = asyncio.Event()
        self._exit_fallback: asyncio.TimerHandle | None = None
        self.current_run: Run | None = None
        self.recycle = False  # replace after the current job (the worker said its state is bad)
        self.kill_reason: str | None = None  # "timeout" | "memory" | "shutdown" | "protocol"
        self.kill_message: str | None = None
        self.oom_reported = False  # the Python worker hit its address-space backstop
        self._oom_killed = False
        self.idle_since = 0.0
        self._ready = asyncio.Event()  # set on "ready", and also when the worker dies
        self._is_ready = False
        self._startup_log = RunLog()
        self._stderr_tail = b""
        self._exited = False  # the message pipe closed: no more replies will come
        self._closing: asyncio.Task[None] | None = None
        self._readers: list[_LineReader] = []
        self._output: list[tuple[int, _LineReader]] = []  # stdout and stderr: (fd, reader)
        self._transports: list[asyncio.BaseTransport] = []
        self._jobs: asyncio.WriteTransport | None = None
        self.on_baas: BaasCallback | None = None  # None: BaaS calls are answered "unsupported"

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        path: Path,
        key: object,
        name: str,
        startup_timeout: float,
        sandbox: Sandbox,
    ) -> WorkerProcess:
        """Spawn a worker (contained as *sandbox* can) and wait until it says it is ready;
        raises WorkerStartError, or OSError when it could not be launched."""
        msg_read, msg_write = os.pipe()
        jobs_read, jobs_write = os.pipe()
        fds = {FD_PLACEHOLDER: str(msg_write), JOBS_FD_PLACEHOLDER: str(jobs_read)}
        launch = None
        try:
            launch = sandbox.prepare(
                [fds.get(arg, arg) for arg in argv],
                env=env,
                pass_fds=(msg_write, jobs_read),
                cwd=cwd,
            )
            # On the event loop's thread, never a worker thread: the launcher's parent-death
            # signal fires when the thread that forked it exits.
            popen = subprocess.Popen(  # noqa: ASYNC220 - fork/exec is quick; the wait is async
                launch.argv,
                # Issue 12: user code that reads (or pauses) stdin sees an empty stream, never
                # the engine's job requests.
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=launch.pass_fds,
                cwd=cwd,
                env=launch.env,
                start_new_session=True,  # its own process group: a kill takes its children too
            )
        except BaseException:
            os.close(msg_read)
            os.close(jobs_write)
            if launch is not None:
                with anyio.CancelScope(shield=True):
                    await launch.tree.aclose()
            raise
        finally:
            os.close(msg_write)
            os.close(jobs_read)
        launch.tree.started(popen.pid)
        worker = cls(popen, launch.tree, path, key, name)
        try:
            with anyio.CancelScope(shield=True):
                await worker._connect(
                    os.fdopen(msg_read, "rb", buffering=0), os.fdopen(jobs_write, "wb", buffering=0)
                )
            with anyio.move_on_after(startup_timeout):
                await worker._ready.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await worker.close()
            raise
        if not worker._is_ready:
            timed_out = not worker._exited
            with anyio.CancelScope(shield=True):
                await worker.close()
            reason = (
                f"did not start within {startup_timeout:g} s"
                if timed_out
                else f"failed to start: {worker.exit_description()}"
            )
            raise WorkerStartError(f"its worker {reason}", worker._startup_log.text())
        return worker

    async def _connect(self, msg_pipe: IO[bytes], jobs_pipe: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        assert self._popen.stdout and self._popen.stderr
        pipes: list[tuple[IO[bytes], _LineReader]] = [
            (
                msg_pipe,
                _LineReader(
                    self._on_message, _MESSAGE_CAP, self._on_message_overflow, self._on_exit
                ),
            ),
            (self._popen.stdout, self._raw_reader("LOG")),
            (self._popen.stderr, self._raw_reader("ERROR", keep_tail=True)),
        ]
        try:
            for pipe, reader in pipes:
                transport, _ = await loop.connect_read_pipe(lambda r=reader: r, pipe)  # type: ignore[misc]
                self._transports.append(transport)
                self._readers.append(reader)
            self._output = [(pipe.fileno(), reader) for pipe, reader in pipes[1:]]
            jobs, _ = await loop.connect_write_pipe(_Sink, jobs_pipe)
            self._jobs = jobs
            self._transports.append(jobs)
        finally:
            # Pipes that were never handed to a transport are closed here, not leaked.
            for pipe, reader in pipes:
                if reader not in self._readers:
                    pipe.close()
            if self._jobs is None:
                jobs_pipe.close()
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_process_exit)

    def _on_process_exit(self) -> None:
        # The process itself exited. Its message pipe normally reports EOF at once, but a
        # descendant that inherited the pipe (a fork) would hold it open: kill the group (the
        # leader is an unreaped zombie, so its group id is still ours) and stop waiting soon.
        assert self._pidfd is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        self._process_gone.set()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if not self._exited:
            self._exit_fallback = loop.call_later(_PIPE_EOF_TIMEOUT, self._on_exit)

    def _on_exit(self) -> None:
        # The message pipe closed: the worker is gone (or going), no more replies will come.
        if self._exited:
            return
        self._exited = True
        self._ready.set()
        if self.current_run is not None:
            self.current_run.settle(None)

    def kill(self, reason: str, message: str | None = None) -> None:
        """SIGKILL the worker's whole process tree at once (idempotent)."""
        if self.kill_reason is None:
            self.kill_reason = reason
            self.kill_message = message
        if self._popen.returncode is None:  # not reaped: the group id is still ours
            self._tree.kill()

    async def close(self) -> None:
        """Kill, reap and close every pipe. Idempotent. The work runs in a task of its own, so
        it reaches its end even when the caller is cancelled, also by a plain task.cancel(),
        which goes through anyio's shields; any later close() waits for that same work."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name=f"minapp close worker {self.pid}"
            )
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.kill(self.kill_reason or "closed")
        await self._reap()
        if self._exit_fallback is not None:
            self._exit_fallback.cancel()
        if self._pidfd is not None:
            if not self._process_gone.is_set():  # the reap timed out
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # Children the function spawned share the group; the group id cannot be reused while
        # any of them lives, so this kill cannot hit a stranger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.oom_killed()  # read before the cgroup goes, for the death message
        await self._tree.aclose()  # what is left of the tree, and its memory cgroup
        if self._jobs is not None and not self._jobs.is_closing():
            self._jobs.abort()  # (it closes itself when it sees the worker's end go away)
        with anyio.move_on_after(_PIPE_EOF_TIMEOUT):
            for reader in self._readers:
                await reader.closed.wait()
        for transport in self._transports:
            transport.close()
        for reader in self._readers:  # close() finishes on the next loop iteration
            await reader.closed.wait()

    async def _reap(self) -> None:
        if self._popen.poll() is not None:
            return
        with anyio.move_on_after(_REAP_TIMEOUT):
            if self._pidfd is not None:
                await self._process_gone.wait()
            # Without a pidfd there is nothing to wait on but the exit status itself.
            while self._popen.poll() is None:  # noqa: ASYNC110 - bounded by the deadline
                await anyio.sleep(0.01)
        if self._popen.poll() is None:
            _logger.warning(
                "worker pid %d did not exit within %g s of SIGKILL", self.pid, _REAP_TIMEOUT
            )
            # Reaped whenever it does exit, by a thread that holds nothing else.
            threading.Thread(target=self._popen.wait, daemon=True, name="minapp reaper").start()

    # -- state -----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not (self._exited or self._closing is not None or self.kill_reason is not None)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    @property
    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace")

    def exit_description(self) -> str:
        code = decode_returncode(self._popen.returncode)
        if code is None:
            return "it stopped answering"
        if code < 0:
            try:
                return f"worker was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"worker was killed by signal {-code}"
        return f"worker exited with code {code}"

    def rss(self) -> int:
        """Memory of the whole tree in bytes (its cgroup, else its processes' RSS), 0 when
        unknown."""
        return self._tree.memory()

    def peak_rss(self) -> int:
        """The tree's peak memory in bytes since the current job began (with a cgroup; else
        its current figure), or 0 when unknown."""
        return self._tree.peak()

    @property
    def memory_enforced(self) -> bool:
        """The kernel holds the whole tree to the memory limit (a memory cgroup)."""
        return self._tree.memory_enforced

    def oom_killed(self) -> bool:
        """The kernel killed a process of the tree for exceeding the tree's memory limit
        (remembered past close(), which removes the tree's cgroup)."""
        if not self._oom_killed:
            self._oom_killed = self._tree.oom_killed()
        return self._oom_killed

    # -- jobs ------------------------------------------------------------------------------

    def begin(self, run: Run, request: bytes) -> None:
        """Hand the worker a job (one JSON line, already encoded)."""
        assert self.current_run is None and self._jobs is not None
        self.current_run = run
        self._tree.reset_peak()
        self._jobs.write(request)
        if self._exited:  # died while idle, after the caller checked
            run.settle(None)

    def answer(self, call_id: object, answer: dict[str, Any]) -> None:
        """Send the answer to a BaaS call; dropped when the worker is gone."""
        if self._jobs is None or self._jobs.is_closing() or not self.alive:
            return
        try:
            line = json.dumps({"t": "baas", "id": call_id, "a": answer}, allow_nan=False)
        except (TypeError, ValueError) as exc:  # an engine bug; the caller still gets an answer
            error = {"code": 500, "message": f"the engine's answer is not JSON: {exc}"}
            line = json.dumps({"t": "baas", "id": call_id, "a": {"error": error}})
        self._jobs.write(line.encode() + b"\n")

    def end(self) -> None:
        self.current_run = None

    # -- pipe callbacks --------------------------------------------------------------------

    def _on_message(self, line: bytes) -> None:
        try:
            self._handle(json.loads(line))
        except RecursionError:
            # A result nested deeper than Python's parser can go: the job fails, clearly.
            self.kill("protocol", "its result is nested too deeply for the engine to read")
        except (ValueError, KeyError, TypeError, AttributeError):
            # Only a bug in the worker script could cause this; the worker cannot be trusted.
            self.kill("protocol", "its worker sent a message the engine could not read")

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        run = self.current_run
        if kind == "log":
            if run is not None and message.get("j") == run.id:
                run.add_log(message["s"])
            elif run is None and not self._is_ready:
                self._startup_log.add(message["s"])
            # Otherwise a late line from a finished job (a stray timer): dropped.
        elif kind == "result":
            if message.get("recycle"):
                self.recycle = True
            if run is not None and message.get("j") == run.id:
                self._drain_output()
                run.settle(message["r"])
        elif kind == "baas":
            if self.on_baas is not None:
                self.on_baas(self, message)
            else:
                error = {"code": 501, "message": "not supported by the local engine: BaaS"}
                self.answer(message["id"], {"error": error})
        elif kind == "ready":
            self._is_ready = True
            self._ready.set()
        elif kind == "recycle":
            self.recycle = True
        elif kind == "oom":
            self.oom_reported = True

    def _on_message_overflow(self, _partial: bytes) -> None:
        self.kill(
            "protocol",
            f"its result is larger than {_MESSAGE_CAP // (1024 * 1024)} MiB, the most the "
            "engine accepts",
        )

    def _drain_output(self) -> None:
        """Read what the worker wrote to its stdout and stderr before it sent its result: those
        pipes are read apart from the message pipe, and their lines belong to this job."""
        for fd, reader in self._output:
            # At most what a pipe can hold (a function may enlarge its own to 1 MiB): a child
            # left writing without end must not keep the loop here.
            for _ in range(_DRAIN_READS):
                if reader.closed.is_set():  # (once closed, the fd may be someone else's)
                    break
                try:
                    data = os.read(fd, _DRAIN_CHUNK)  # the transport made it non-blocking
                except OSError:  # nothing more now (EAGAIN), or the pipe is gone
                    break
                if not data:  # end of file: its transport sees it too, and closes
                    break
                reader.data_received(data)

    def _raw_reader(self, level: str, *, keep_tail: bool = False) -> _LineReader:
        def on_line(raw: bytes) -> None:
            if keep_tail:
                self._stderr_tail = (self._stderr_tail + raw + b"\n")[-_STDERR_TAIL:]
            text = raw.decode("utf-8", "replace").rstrip("\r")
            line = f"{iso_now()} {level} {text}\n"
            if self.current_run is not None:
                self.current_run.add_log(line)
            elif not self._is_ready or self._exited:
                self._startup_log.add(line)

        return _LineReader(on_line, _RAW_LINE_CAP, on_line)
