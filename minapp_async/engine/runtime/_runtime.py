"""The engine's function runtime: runs cloud functions on warm Node.js / Python workers.

Each job gets a worker of its own; idle workers are kept warm per function (like platform
containers) and replaced when the function's file changes, when they misbehave, or after
sitting idle. Each worker is launched contained where the OS allows (engine/_sandbox.py: own
namespaces, private /tmp, no network, its whole process tree in one memory cgroup); what is not
enforced is logged once when the runtime starts. Time limits are enforced by killing the
worker's tree; memory limits by the tree's cgroup where there is one, else by a watchdog reading
/proc (plus V8's heap limit for Node and an address-space backstop for Python).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import attrs

from ..._logs import get_logger
from ..._protocol import JobStatus
from .._sandbox import Containment, Sandbox
from ._worker_process import (
    FD_PLACEHOLDER,
    JOBS_FD_PLACEHOLDER,
    Run,
    WorkerProcess,
    WorkerStartError,
    iso_now,
)

_logger = get_logger("minapp_async.engine")

__all__ = ["BaasHandler", "FunctionFile", "RunOutcome", "Runtime", "timed_out_message"]

#: handler(context, op, payload) -> answer: the engine's side of a function's BaaS call, where
#: context is what run() was given for the calling job (by default its event's jobId). The answer is ``{"status", "data"}``
#: or ``{"error": {"code", "message"}}``; the handler must not raise for bad input.
BaasHandler = Callable[[Any, str, Any], Awaitable[dict[str, Any]]]
#: BaaS calls one job may have in flight; the platform advises fewer than 50 concurrent
#: requests. More wait their turn, up to MAX_QUEUED_CALLS, beyond which calls fail with 429.
MAX_CONCURRENT_CALLS: Final = 50
MAX_QUEUED_CALLS: Final = 1000

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}", re.ASCII)
_HERE = Path(__file__).resolve().parent
_NODE_WORKER = _HERE / "_node_worker.cjs"
_PY_WORKER = _HERE / "_py_worker.py"
_STARTUP_TIMEOUT = 15.0  # a cold start under load; the job's own time limit starts after it
_WATCH_INTERVAL = 0.05  # how often busy workers' RSS is checked against the memory limit
_NODE_OOM_MARKERS = ("JavaScript heap out of memory", "Reached heap limit")
#: What json.dumps(..., allow_nan=False) does, without building an encoder per job.
_encode_job: Final = json.JSONEncoder(allow_nan=False).encode
_MAX_LOCATED: Final = 4096  # functions whose resolution is remembered (a folder rarely has more)
_SENTINEL_NODE: Any = object()  # "node" not given: look it up on PATH
_logger = get_logger("minapp_async.engine")
_STOPPED_BY_SHUTDOWN = "was stopped because the engine shut down"
#: Files and folders of a function watched for hot reload, at most; past that, the rest of a
#: very large tree is not watched (the entry file always is).
MAX_WATCHED_FILES = 1000
#: Folders never watched: installed packages (large, and changed by npm, not by edits),
#: caches, version control, and the engine's own state.
_UNWATCHED_DIRS = frozenset({"node_modules", "__pycache__", ".git", ".minapp", ".hg", ".svn"})
#: A version of a function: its entry file's identity and a fingerprint of its other files.
FunctionKey = tuple[Path, int, int, int, int]


@attrs.frozen
class RunOutcome:
    """How one job ended."""

    #: The job's final status, one of three: fulfilled (result code 0); execution_failed (user
    #: code failed with code 1, or the worker died: crash, memory limit); deadline_exceeded
    #: (killed at the time limit).
    status: JobStatus
    #: The envelope ``{"code", "data", "error"}``; None when the worker died or timed out.
    result: dict[str, Any] | None
    #: For result None: one sentence saying what happened.
    error_msg: str | None
    #: Lines ``"<ISO-8601 UTC> <LOG|INFO|WARN|ERROR> <message>\n"``, at most 1 MiB.
    log: str
    execution_time_ms: float
    #: The worker's peak RSS during the job, in bytes (best effort; 0 when unknown).
    mem_usage: int


@attrs.frozen
class FunctionFile:
    """A function's source file, resolved once when a request names it and used for its run."""

    name: str
    #: The real path (symlinks resolved), always inside the functions folder.
    path: Path
    #: Identifies this version of the function (its entry file and the files next to it): a
    #: warm worker runs only the version it loaded.
    key: FunctionKey

    @property
    def is_node(self) -> bool:
        return self.path.suffix == ".js"


class _Listings:
    """The folders of a functions folder, each listed once and listed again only when its
    modification time (or inode) changes, which adding, removing or renaming an entry does.

    Editing a file in place leaves its folder's mtime alone, so the files themselves are
    still stat()ed on every call; what is saved is reading every folder. A folder whose mtime
    is recent is not remembered: an entry added within the same timestamp tick as the
    listing would leave the mtime unchanged (git's "racy" case)."""

    #: A folder's listing is remembered once its mtime is this many seconds old.
    SETTLED: Final = 2.0
    _MAX: Final = 4096  # folders remembered (a very large tree starts over past that)

    def __init__(self) -> None:
        # folder -> ((inode, mtime), its sub-folders, its other entries), full paths
        self._known: dict[str, tuple[tuple[int, int], list[str], list[str]]] = {}

    def get(self, folder: str) -> tuple[list[str], list[str]] | None:
        """*folder*'s sub-folders (watched ones only) and other entries; None if unreadable."""
        try:
            info = os.stat(folder)
        except OSError:
            return None
        key = (info.st_ino, info.st_mtime_ns)
        known = self._known.get(folder)
        if known is not None and known[0] == key:
            return known[1], known[2]
        settled = time.time_ns() - info.st_mtime_ns > self.SETTLED * 1e9
        folders: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in _UNWATCHED_DIRS:
                                folders.append(entry.path)
                            continue
                    except OSError:  # gone meanwhile
                        continue
                    files.append(entry.path)
                    if len(files) + len(folders) >= MAX_WATCHED_FILES:
                        break  # the rest of a huge folder is not watched
        except OSError:
            self._known.pop(folder, None)
            return None
        if settled:
            if len(self._known) >= self._MAX:
                self._known.clear()
            self._known[folder] = (key, folders, files)
        else:
            self._known.pop(folder, None)
        return folders, files

    def fingerprint(self, root: Path, *, skip: Callable[[str], bool]) -> int:
        """A number that changes when any file under *root* is edited, added, removed or
        renamed: a hash of every file's path, size and modification time (stat only, no
        reading), over at most MAX_WATCHED_FILES files and folders in all: the work per call
        is bounded however large the tree. *skip* leaves out sub-folders."""
        entries: list[tuple[str, int, int]] = []
        pending = [str(root)]
        visited = 0
        while pending and len(entries) + visited < MAX_WATCHED_FILES:
            visited += 1
            listing = self.get(pending.pop())
            if listing is None:
                continue
            folders, files = listing
            pending.extend(f for f in folders if not skip(f))
            for path in files[: MAX_WATCHED_FILES - len(entries) - visited]:
                try:
                    info = os.stat(path)
                except OSError:  # gone meanwhile, or a dangling symlink
                    continue
                entries.append((path, info.st_size, info.st_mtime_ns))
        entries.sort()
        return hash(tuple(entries))


def _kill_groups(pgids: set[int]) -> None:
    # Last resort at interpreter exit or garbage collection, when aclose() was never awaited:
    # no worker may outlive the engine.
    for pgid in list(pgids):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


class Runtime:
    """Finds and runs the cloud functions in one folder."""

    def __init__(
        self,
        functions_dir: Path,
        *,
        memory_limit_mb: int = 256,
        node: str | None = _SENTINEL_NODE,
        python: str = sys.executable,
        max_idle_per_function: int = 10,
        max_idle: int = 20,
        idle_timeout: float = 60.0,
        contain: bool = True,
        hidden_dirs: Sequence[str | os.PathLike[str]] = (),
        baas: BaasHandler | None = None,
    ) -> None:
        if memory_limit_mb < 16:
            raise ValueError(f"memory_limit_mb must be at least 16, got {memory_limit_mb!r}")
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {max_idle!r}")
        if max_idle_per_function < 0:
            raise ValueError(f"max_idle_per_function must be >= 0, got {max_idle_per_function!r}")
        self._dir = Path(functions_dir).resolve()
        self._dir_text = str(self._dir)
        self._memory_limit_mb = memory_limit_mb
        self._node_given = node if node is not _SENTINEL_NODE else None
        # Resolved once; None when there is no usable node, so .js jobs fail with a clear message.
        self._node = shutil.which("node" if node is _SENTINEL_NODE else node) if node else None
        self._python = python
        # Default 10 = the engine's default concurrency, so a steady stream of concurrent
        # invocations finds every worker warm instead of killing and respawning some.
        self._max_idle = max_idle_per_function
        # Across all functions: idle workers hold memory, so a folder of many functions
        # must not keep a pool per function. Least recently used first.
        self._max_idle_total = max_idle
        self._idle_lru: dict[WorkerProcess, None] = {}
        self._idle_timeout = idle_timeout
        # Containment is decided once (a ~30 ms probe), on start() or before the first spawn.
        self._contain = contain
        self._hidden_dirs = [os.fspath(d) for d in hidden_dirs]
        self._sandbox: Sandbox | None = None
        self._sandbox_lock = asyncio.Lock()
        self._run_ids = itertools.count(1)
        self._workers: set[WorkerProcess] = set()
        self._idle: dict[Path, list[WorkerProcess]] = {}
        self._latest_key: dict[Path, FunctionKey] = {}
        # name -> (what locate() found, the path it was found at, its device, the names that
        # would take precedence): revalidated by _still_valid on each call.
        self._located: dict[str, tuple[FunctionFile, str, int, tuple[str, ...]]] = {}
        self._listings = _Listings()
        self._pgids: set[int] = set()
        self._finalizer = weakref.finalize(self, _kill_groups, self._pgids)
        self._housekeeper: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._watching_busy = False  # the watchdog polls often, no need to wake it
        self._baas = baas
        self._calls: set[asyncio.Task[None]] = set()  # BaaS calls being answered, all jobs
        self._prestarts: set[asyncio.Task[None]] = set()
        self._prestarts_by_path: dict[Path, asyncio.Task[None]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<Runtime {str(self._dir)!r} workers={len(self._workers)}>"

    # -- containment -----------------------------------------------------------------------

    async def start(self) -> Containment:
        """Decide how workers are contained here and log, once, what is not enforced.

        Optional: the first job does it otherwise. Returns the report."""
        return (await self._get_sandbox()).report

    async def _get_sandbox(self) -> Sandbox:
        if self._sandbox is not None:
            return self._sandbox
        async with self._sandbox_lock:
            if self._sandbox is None:
                if self._closed:
                    raise WorkerStartError("the engine is shutting down")
                contain, limit, hidden = self._contain, self._memory_limit_mb, self._hidden_dirs
                # Only the probe runs on a thread; workers are forked on the loop's thread.
                sandbox = await anyio.to_thread.run_sync(
                    lambda: Sandbox(memory_limit_mb=limit, enabled=contain, hidden=hidden)
                )
                if self._closed:  # aclose() ran meanwhile
                    sandbox.close()
                    raise WorkerStartError("the engine is shutting down")
                self._sandbox = sandbox
                report = sandbox.report
                if report.complete:
                    _logger.info("%s", report.summary())
                else:
                    _logger.warning("%s", report.summary())
            return self._sandbox

    @property
    def containment(self) -> Containment | None:
        """What containment enforces here; None until start() or the first job."""
        return self._sandbox.report if self._sandbox is not None else None

    @property
    def idle_workers(self) -> int:
        """Warm workers kept idle now, across all functions."""
        return len(self._idle_lru)

    # -- lookup ----------------------------------------------------------------------------

    def locate(self, name: str) -> FunctionFile | None:
        """The function's source file, or None (also for any name that is not valid)."""
        if not isinstance(name, str):
            return None
        cached = self._located.get(name)
        if cached is not None:
            found = cached[0]
            if self._still_there(*cached):
                # The entry file is the same; the other files it may load are checked anew.
                version = self._files_version(found.path)
                if version != found.key[4]:
                    found = FunctionFile(name, found.path, (*found.key[:4], version))
                    self._located[name] = (found, *cached[1:])
                return found
            del self._located[name]
        if _NAME.fullmatch(name) is None:
            return None
        candidates = (f"{name}.js", f"{name}/index.js", f"{name}.py")
        for i, candidate in enumerate(candidates):
            path = self._dir / candidate
            try:
                real = path.resolve(strict=True)
                info = real.stat()
            except (OSError, RuntimeError):  # missing, or a symlink loop
                continue
            # Never outside the folder, whatever a symlink says.
            if stat.S_ISREG(info.st_mode) and real.is_relative_to(self._dir):
                key = (real, info.st_ino, info.st_mtime_ns, info.st_size, self._files_version(real))
                found = FunctionFile(name, real, key)
                if len(self._located) >= _MAX_LOCATED:
                    self._located.clear()
                earlier = tuple(str(self._dir / c) for c in candidates[:i])
                self._located[name] = (found, str(path), info.st_dev, earlier)
                return found
        return None

    @staticmethod
    def _still_there(found: FunctionFile, path: str, dev: int, earlier: tuple[str, ...]) -> bool:
        """Whether a function resolved before still resolves to the same version of the same
        file: one stat of its path (following symlinks, so a re-pointed link or a replaced
        folder shows as another inode), and none of the names that take precedence appeared.
        The full resolution (a ``realpath`` walk, an ``lstat`` per component) cost about a
        sixth of the engine's CPU per sync call."""
        try:
            info = os.stat(path)
        except OSError:
            return False
        if (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size) != (dev, *found.key[1:4]):
            return False
        for other in earlier:
            try:
                os.lstat(other)
            except FileNotFoundError:
                continue
            except OSError:
                pass
            return False  # something is there now: resolve again
        return True

    def _files_version(self, entry: Path) -> int:
        """The fingerprint of the files an entry file may load: for ``name/index.js`` its
        folder; for ``name.js`` and ``name.py`` the functions folder, without the folders
        of ``name/index.js`` functions (helpers such as ``util.py`` or ``lib/`` live there,
        and every single-file function may import them). Checked on every call: a stat()
        per file and per folder (folders are read again only when they changed), no file
        is read."""
        if os.path.dirname(entry) != self._dir_text:  # (no Path built and compared)
            return self._listings.fingerprint(entry.parent, skip=lambda _: False)
        top = self._dir_text

        def other_function(folder: str) -> bool:
            return os.path.dirname(folder) == top and os.path.isfile(
                os.path.join(folder, "index.js")
            )

        return self._listings.fingerprint(self._dir, skip=other_function)

    def find(self, name: str) -> Path | None:
        """The path of the function's source file, or None."""
        found = self.locate(name)
        return found.path if found is not None else None

    def names(self) -> list[str]:
        """The functions currently in the folder, sorted."""
        try:
            entries = os.listdir(self._dir)
        except OSError:
            return []
        found = set()
        for entry in entries:
            stem = entry[:-3] if entry.endswith((".js", ".py")) else entry
            if stem not in found and self.find(stem) is not None:
                found.add(stem)
        return sorted(found)

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        function: str | FunctionFile,
        event: dict[str, Any],
        *,
        time_limit: float,
        data_json: str | None = None,
        context: object = None,
        on_log: Callable[[str], None] | None = None,
    ) -> RunOutcome:
        """Run one job of a function: a :class:`FunctionFile` found by :meth:`locate`, or a name
        to look up (LookupError when there is no such function). *context* is passed to the
        BaaS handler with each call the job makes; by default the event's ``jobId``. *on_log*
        is told each line of the job's log as it arrives.

        *data_json*, when given, is ``event.data`` already encoded as JSON (as the engine keeps
        it): it is spliced into the request as it is, not parsed and encoded again."""
        if self._closed:
            raise RuntimeError("the runtime is closed")
        if not (isinstance(time_limit, (int, float)) and math.isfinite(time_limit)) or (
            time_limit <= 0
        ):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        if isinstance(function, str):
            found = self.locate(function)
            if found is None:
                raise LookupError(f"cloud function {function!r} not found")
            function = found
        name = function.name
        run_id = next(self._run_ids)
        try:
            line = _encode_job({"t": "job", "j": run_id, "e": event})
            if data_json is not None:  # '..."e": {...}}' -> '..."e": {...,"data":<json>}}'
                line = f'{line[:-2]}{"," if event else ""}"data":{data_json}}}}}'
            request = (line + "\n").encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the event for cloud function {name!r} is not JSON: {exc}") from None
        if function.is_node and not self._node:
            return _failed(self._node_missing_message())
        self._latest_key[function.path] = function.key
        worker = await self._take_idle(function.path, function.key)
        starting = self._prestarts_by_path.get(function.path) if worker is None else None
        if starting is not None:
            # Its pre-started worker is on its way: wait for it rather than start a second one
            # (asyncio.wait: a cancelled call leaves the start to finish for the next one).
            await asyncio.wait([starting])
            worker = await self._take_idle(function.path, function.key)
        if worker is None:
            try:
                worker = await self._spawn(function)
            except WorkerStartError as exc:
                if self._closed:  # (its start may have failed because of the shutdown)
                    return _failed(f"cloud function {name!r} {_STOPPED_BY_SHUTDOWN}", exc.log)
                return _failed(f"cloud function {name!r} could not run: {exc.message}", exc.log)
        return await self._run_on(
            worker,
            name,
            Run(
                run_id,
                asyncio.get_running_loop(),
                event.get("jobId") if context is None else context,
                on_log,
            ),
            request,
            time_limit,
        )

    def prestart(self, names: Iterable[str]) -> None:
        """Start one warm worker for each named function, in the background: the cold start
        (a new interpreter, the function's module loaded) is then paid before the first
        call, not by it. A worker that cannot start is only logged: the first call reports it."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        for name in names:
            function = self.locate(name)
            if function is None or (function.is_node and not self._node):
                continue
            if function.path in self._prestarts_by_path:
                continue
            task = loop.create_task(self._prestart(function), name=f"minapp-prestart-{name}")
            self._prestarts.add(task)
            self._prestarts_by_path[function.path] = task
            task.add_done_callback(self._prestarts.discard)
            task.add_done_callback(functools.partial(self._prestarted, function.path))

    def _prestarted(self, path: Path, _task: asyncio.Task[None]) -> None:
        self._prestarts_by_path.pop(path, None)

    async def _prestart(self, function: FunctionFile) -> None:
        try:
            worker = await self._spawn(function)
        except WorkerStartError as exc:
            _logger.info("no warm worker for %r: %s", function.name, exc.message)
            return
        # A call that came meanwhile may have seen a newer version: then this one is stale.
        self._latest_key.setdefault(function.path, function.key)
        await self._release(worker)

    async def _run_on(
        self, worker: WorkerProcess, name: str, run: Run, request: bytes, time_limit: float
    ) -> RunOutcome:
        started = time.perf_counter()
        try:
            worker.begin(run, request)
            self._watch_busy()
            # A timer that ends the run costs less per job than a cancel scope and a shield
            # (a cancellation here only cancels the run's own future; the worker then goes).
            timer = asyncio.get_running_loop().call_later(time_limit, run.expire)
            try:
                envelope = await run.finished
            finally:
                timer.cancel()
            elapsed_ms = (time.perf_counter() - started) * 1000
            run.peak_rss = max(run.peak_rss, worker.peak_rss())
            if envelope is not None:
                worker.end()
                await self._release(worker)
                return RunOutcome(
                    status="fulfilled" if envelope.get("code") == 0 else "execution_failed",
                    result=envelope,
                    error_msg=None,
                    log=run.log.text(),
                    execution_time_ms=elapsed_ms,
                    mem_usage=run.peak_rss,
                )
            if run.timed_out:
                worker.kill("timeout")
        except BaseException:
            # Cancelled (or worse) mid-job: the worker's state is unknown, so it goes.
            _cancel_calls(run)
            worker.kill("cancelled")
            with anyio.CancelScope(shield=True):
                await self._discard(worker)
            raise
        _cancel_calls(run)  # nobody is left to read their answers
        with anyio.CancelScope(shield=True):
            await self._discard(worker)  # reaped, and its last stderr lines are in the log
        worker.end()
        return RunOutcome(
            status="deadline_exceeded" if worker.kill_reason == "timeout" else "execution_failed",
            result=None,
            error_msg=self._death_message(worker, name, time_limit),
            log=run.log.text(),
            execution_time_ms=elapsed_ms,
            mem_usage=run.peak_rss,
        )

    def _death_message(self, worker: WorkerProcess, name: str, time_limit: float) -> str:
        reason = worker.kill_reason
        if reason == "timeout":
            return timed_out_message(name, time_limit)
        if (
            reason == "memory"
            or worker.oom_reported
            or worker.oom_killed()
            or any(marker in worker.stderr_tail for marker in _NODE_OOM_MARKERS)
        ):
            return (
                f"cloud function {name!r} exceeded its memory limit of "
                f"{self._memory_limit_mb} MB and was killed"
            )
        if reason == "shutdown":
            return f"cloud function {name!r} {_STOPPED_BY_SHUTDOWN}"
        if reason == "protocol":
            return f"cloud function {name!r} failed: {worker.kill_message}"
        return f"cloud function {name!r} crashed: its {worker.exit_description()}"

    def _node_missing_message(self) -> str:
        if self._node_given:
            return (
                f"node was not found at {self._node_given!r}: install Node.js to run .js cloud "
                "functions, or give the path of a node executable"
            )
        return "node was not found on PATH: install Node.js to run .js cloud functions"

    # -- BaaS calls from functions --------------------------------------------------------

    def _on_baas(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        call_id, op, payload = message["id"], message["op"], message.get("p")
        run = worker.current_run
        if run is None or message.get("j") != run.id:
            # Work a finished job left running (a stray timer): it has no caller any more.
            error = {"code": 400, "message": f"{op}: the job that made this call has finished"}
            worker.answer(call_id, {"error": error})
            return
        if self._baas is None or self._closed:
            error = {"code": 501, "message": f"not supported by the local engine: {op}"}
            worker.answer(call_id, {"error": error})
            return
        if len(run.calls) >= MAX_QUEUED_CALLS:
            text = (
                f"{op}: too many BaaS calls in flight ({MAX_QUEUED_CALLS}); the platform "
                f"advises fewer than {MAX_CONCURRENT_CALLS} at once"
            )
            worker.answer(call_id, {"error": {"code": 429, "message": text}})
            return
        if run.call_slots is None:
            run.call_slots = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        task = asyncio.get_running_loop().create_task(
            self._answer(worker, run, run.call_slots, call_id, op, payload),
            name=f"minapp BaaS {op}",
        )
        # A nested invoke is a job of its own, bounded by its own limit: it outlives a caller
        # that dies or times out (only the engine's shutdown cancels it).
        owners = (self._calls,) if op == "function.invoke" else (run.calls, self._calls)
        for tasks in owners:
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _answer(
        self,
        worker: WorkerProcess,
        run: Run,
        slots: asyncio.Semaphore,
        call_id: object,
        op: str,
        payload: Any,
    ) -> None:
        assert self._baas is not None
        try:
            async with slots:
                answer = await self._baas(run.context, op, payload)
        except Exception as exc:  # a bug in the handler: the call still gets an answer
            _logger.exception("BaaS call %s failed inside the engine", op)
            answer = {"error": {"code": 500, "message": f"{op}: the engine failed: {exc}"}}
        worker.answer(call_id, answer)

    # -- the worker pool -------------------------------------------------------------------

    async def _take_idle(self, path: Path, key: FunctionKey) -> WorkerProcess | None:
        idle = self._idle.get(path)
        if not idle:
            return None
        good = [w for w in idle if w.key == key and w.alive and not w.recycle]
        # Anything else is stale: the file changed (hot reload), or the worker went bad.
        stale = [w for w in idle if w not in good]
        found = good.pop() if good else None  # the most recently used; the rest may expire
        while found is not None and found.oom_killed():
            # Its tree hit the memory limit while idle (a child it left running): replaced.
            stale.append(found)
            found = good.pop() if good else None
        self._idle[path] = good
        if found is not None:
            self._idle_lru.pop(found, None)
        if stale:
            with anyio.CancelScope(shield=True):
                for worker in stale:
                    await self._discard(worker)
        return found

    async def _spawn(self, function: FunctionFile) -> WorkerProcess:
        name, path, is_node = function.name, function.path, function.is_node
        sandbox = await self._get_sandbox()
        if is_node:
            assert self._node is not None
            heap_mb = self._memory_limit_mb
            if sandbox.report.tree_memory_limit:
                # Under the tree limit, so that V8's clear "heap out of memory" comes before the
                # kernel's silent kill when the heap is the culprit.
                heap_mb -= max(heap_mb // 8, 8)
            argv = [
                self._node,
                f"--max-old-space-size={heap_mb}",
                str(_NODE_WORKER),
                FD_PLACEHOLDER,
                JOBS_FD_PLACEHOLDER,
                str(path),
                name,
            ]
        else:
            # -I: no PYTHON* variables, no user site, no script folder on sys.path;
            # -B: no __pycache__ written into the functions folder.
            argv = [
                self._python,
                "-I",
                "-B",
                "-X",
                "utf8",
                str(_PY_WORKER),
                FD_PLACEHOLDER,
                JOBS_FD_PLACEHOLDER,
                str(path),
                name,
                str(self._memory_limit_mb),
            ]
        # A clean environment: nothing of the engine's (tokens, secrets) reaches user code.
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
        if self._closed:
            raise WorkerStartError("the engine is shutting down")
        try:
            worker = await WorkerProcess.start(
                argv,
                cwd=str(path.parent),
                env=env,
                path=path,
                key=function.key,
                name=name,
                startup_timeout=_STARTUP_TIMEOUT,
                sandbox=sandbox,
            )
        except OSError as exc:
            if is_node and exc.filename == self._node:  # (not a cgroup the sandbox made)
                raise WorkerStartError(self._node_missing_message()) from None
            raise WorkerStartError(f"its worker could not be started: {exc}") from None
        worker.on_baas = self._on_baas
        self._workers.add(worker)
        self._pgids.add(worker.pid)
        if self._closed:  # aclose() ran while this worker was starting
            worker.kill("shutdown")
            with anyio.CancelScope(shield=True):
                await self._discard(worker)
            raise WorkerStartError("the engine is shutting down")
        return worker

    async def _release(self, worker: WorkerProcess) -> None:
        """Back to the idle pool if it is still good and wanted; otherwise gone."""
        path = worker.path
        idle = self._idle.setdefault(path, [])
        if (
            self._closed
            or not worker.alive
            or worker.recycle
            or worker.key != self._latest_key.get(path)
            or len(idle) >= self._max_idle
            or self._max_idle_total == 0
        ):
            with anyio.CancelScope(shield=True):
                await self._discard(worker)
            return
        worker.idle_since = time.monotonic()
        idle.append(worker)
        self._idle_lru[worker] = None
        if len(self._idle_lru) > self._max_idle_total:
            oldest = next(iter(self._idle_lru))
            del self._idle_lru[oldest]
            with contextlib.suppress(ValueError):
                self._idle[oldest.path].remove(oldest)  # out of the pool before any await
            with anyio.CancelScope(shield=True):
                await self._discard(oldest)
        if self._housekeeper is None or self._housekeeper.done():
            self._start_housekeeper()  # to expire it after idle_timeout

    async def _discard(self, worker: WorkerProcess) -> None:
        """Kill and reap a worker (call shielded)."""
        with contextlib.suppress(ValueError):
            self._idle.get(worker.path, []).remove(worker)
        self._idle_lru.pop(worker, None)
        await worker.close()
        self._workers.discard(worker)
        self._pgids.discard(worker.pid)

    # -- the watchdog: memory limit and idle expiry ----------------------------------------

    def _start_housekeeper(self) -> None:
        self._wake = asyncio.Event()
        self._watching_busy = False
        self._housekeeper = asyncio.get_running_loop().create_task(
            self._housekeep(), name="minapp_async runtime watchdog"
        )

    def _watch_busy(self) -> None:
        """A job started: make sure the watchdog checks memory every _WATCH_INTERVAL."""
        if self._housekeeper is None or self._housekeeper.done():
            self._start_housekeeper()
        elif not self._watching_busy and self._wake is not None:
            self._wake.set()  # it is in a long idle-expiry sleep

    async def _housekeep(self) -> None:
        assert self._wake is not None
        limit = self._memory_limit_mb * 1024 * 1024
        while not self._closed:
            now = time.monotonic()
            expired: list[WorkerProcess] = []
            for workers in self._idle.values():
                # Out of the pool before any await, so run() cannot take one of them meanwhile.
                keep = [w for w in workers if now - w.idle_since < self._idle_timeout and w.alive]
                expired.extend(w for w in workers if w not in keep)
                workers[:] = keep
            for worker in expired:
                self._idle_lru.pop(worker, None)
            for worker in expired:
                with anyio.CancelScope(shield=True):
                    await self._discard(worker)
            # No await from here to the wait below, so no job can start unseen in between.
            busy = [w for w in self._workers if w.current_run is not None and w.alive]
            # Idle workers too: a timer left running by an earlier job may still allocate.
            for worker in self._workers if busy else ():
                if not worker.alive:
                    continue
                rss = worker.rss()
                if worker.current_run is not None:
                    worker.current_run.peak_rss = max(worker.current_run.peak_rss, rss)
                if rss > limit or worker.oom_killed():
                    # A busy worker's run() sees the death and reports it; an idle one is
                    # no longer alive, so the pool drops it.
                    worker.kill("memory")
            idle_since = [w.idle_since for ws in self._idle.values() for w in ws]
            if busy:
                timeout = _WATCH_INTERVAL
            elif idle_since:
                timeout = max(min(idle_since) + self._idle_timeout - now, _WATCH_INTERVAL)
            else:
                return  # nothing to watch; the next job starts a new watchdog
            self._watching_busy = bool(busy)
            self._wake.clear()
            with anyio.move_on_after(timeout):
                await self._wake.wait()

    # -- shutdown --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Kill every worker and reap it. Idempotent."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            prestarts = list(self._prestarts)
            for task in prestarts:
                task.cancel()
            if prestarts:
                await asyncio.wait(prestarts)
            for worker in list(self._workers):
                worker.kill("shutdown")
            calls = list(self._calls)
            for task in calls:
                task.cancel()
            if calls:
                await asyncio.wait(calls)
            if self._housekeeper is not None:
                self._housekeeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._housekeeper
                self._housekeeper = None
            async with anyio.create_task_group() as tg:
                for worker in list(self._workers):
                    tg.start_soon(self._discard, worker)
            self._idle.clear()
            self._idle_lru.clear()
            async with self._sandbox_lock:  # a probe in flight ends first
                if self._sandbox is not None:
                    self._sandbox.close()
        self._finalizer.detach()


def timed_out_message(name: str, time_limit: float) -> str:
    """What a job stopped at its time limit reports."""
    return f"cloud function {name!r} timed out after {time_limit * 1000:.0f} ms"


def _cancel_calls(run: Run) -> None:
    for task in list(run.calls):
        task.cancel()


def _failed(message: str, log: str = "") -> RunOutcome:
    """An outcome for a job that never reached user code."""
    return RunOutcome(
        status="execution_failed",
        result=None,
        error_msg=message,
        log=log + f"{iso_now()} ERROR {message}\n",
        execution_time_ms=0.0,
        mem_usage=0,
    )
