"""Python worker for the local engine: runs one cloud function, one job at a time.

Run as a script (``python -I -B _py_worker.py <message fd> <jobs fd> <file> <name> <memory
limit MB>``), never imported by the engine. The protocol is the Node worker's, over two private
pipes (stdin is /dev/null): jobs ``{"t":"job","j":id,"e":event}`` and BaaS answers
``{"t":"baas","id":n,"a":answer}`` come in on the jobs fd; ``ready``, ``log``, ``result``,
``oom`` and BaaS calls ``{"t":"baas","j":id,"id":n,"op":op,"p":payload}`` go out on the message
fd, so nothing the function prints or reads can corrupt it.

The function sees a ``BaaS`` builtin (our extension, the Python counterpart of the Node global):
``await BaaS.table("orders").find(where=..., limit=10)``, ``await BaaS.invoke("fn", params)``,
… — see :class:`_BaaS`.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextvars
import datetime
import importlib.util
import inspect
import io
import itertools
import json
import logging
import os
import queue
import resource
import sys
import threading
import traceback
from collections.abc import Callable, Generator
from types import ModuleType
from typing import Any, TextIO, cast

_MAX_LOG_MESSAGE = 1024 * 1024  # the engine caps the whole log at 1 MiB anyway
_LEVELS = {"DEBUG": "LOG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "ERROR"}


class _Channel:
    """Writes whole JSON lines to the engine; threads in user code may log concurrently."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.current_job: int | None = None
        self.job_var: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            "job", default=None
        )

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message))

    def send_raw(self, line: str) -> None:
        # ASCII JSON (ensure_ascii): lone surrogates in user strings cannot break the encoding.
        data = (line + "\n").encode("ascii")
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def log(self, level: str, text: str) -> None:
        if len(text) > _MAX_LOG_MESSAGE:
            text = text[:_MAX_LOG_MESSAGE] + " [message cut]"
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        job = self.job_var.get()
        self.send(
            {
                "t": "log",
                "j": self.current_job if job is None else job,
                "s": f"{stamp} {level} {text}\n",
            }
        )


class _LogStream(io.TextIOBase):
    """sys.stdout / sys.stderr replacement: every complete line becomes one log line."""

    def __init__(self, channel: _Channel, level: str, name: str) -> None:
        super().__init__()
        self._channel = channel
        self._level = level
        self._name = name
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only in io.TextIOBase too
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            self._pending += s
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._channel.log(self._level, line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            rest, self._pending = self._pending, ""
        if rest:
            self._channel.log(self._level, rest)


class _LogHandler(logging.Handler):
    """logging -> the job log, DEBUG->LOG, INFO, WARNING->WARN, ERROR/CRITICAL->ERROR."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(logging.DEBUG)
        self._channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.name != "root":  # say which library logged it
                text = f"{record.name}: {text}"
            self._channel.log(_LEVELS.get(record.levelname, "LOG"), text)
        except Exception:  # noqa: BLE001 - logging must never raise into user code
            self.handleError(record)


def _describe(err: object) -> dict[str, str]:
    if isinstance(err, BaseException):
        stack = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return {"message": str(err), "stack": stack, "type": type(err).__name__}
    # callback("some text"): documented for Node; type "Error" like the Node worker.
    return {"message": str(err), "stack": "", "type": "Error"}


def _takes_callback(main: Callable[..., Any]) -> bool:
    """True for ``main(event, callback)``: two positional parameters, or *args."""
    try:
        params = list(inspect.signature(main).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


class _Inbox:
    """Reads the jobs pipe on a thread: jobs queue up for the main thread; BaaS answers go
    straight to the call waiting for them (its job is running on the main thread meanwhile)."""

    def __init__(self, fd: int) -> None:
        self._file = open(fd, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        # SimpleQueue: its put and get are C calls, where Queue takes Python-level locks and a
        # Condition for each job handed to the main thread.
        self.jobs: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._pending: dict[int, Callable[[Any], None]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="minapp-jobs", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._file:
                if not line.strip():
                    continue
                message = json.loads(line)
                if message.get("t") == "baas":
                    with self._lock:
                        deliver = self._pending.pop(message.get("id"), None)
                    if deliver is not None:
                        deliver(message.get("a"))
                else:
                    self.jobs.put(message)
        finally:
            self.jobs.put(None)  # the engine went away

    def expect(self, call_id: int, deliver: Callable[[Any], None]) -> None:
        with self._lock:
            self._pending[call_id] = deliver

    def forget(self, call_id: int) -> None:
        with self._lock:
            self._pending.pop(call_id, None)


class BaaSError(Exception):
    """A failed BaaS call: ``code`` is the platform's HTTP-like status (400, 404, …)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Reply:
    """One BaaS call, sent when it was made: ``await reply`` in an ``async def main``, or
    ``reply.result()`` in a plain ``def main`` (it blocks until the engine answers, which it
    always does before the job's time limit). Either gives the answer's data or raises
    ``BaaS.Error``."""

    def __init__(
        self, op: str, answer: concurrent.futures.Future[Any], shape: Callable[[Any], Any]
    ) -> None:
        self._op = op
        self._answer = answer
        self._shape = shape

    def _unwrap(self, answer: Any) -> Any:
        if not isinstance(answer, dict):
            raise BaaSError(500, f"no answer from the engine for {self._op}")
        error = answer.get("error")
        if isinstance(error, dict):
            raise BaaSError(int(error.get("code") or 500), str(error.get("message") or "error"))
        return self._shape(answer.get("data"))

    def result(self, timeout: float | None = None) -> Any:
        return self._unwrap(self._answer.result(timeout))

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        return self._unwrap(await asyncio.wrap_future(self._answer))


def _same(data: Any) -> Any:
    return data


class _Calls:
    """Sends BaaS calls on the message pipe; the inbox thread resolves their answers."""

    def __init__(self, channel: _Channel, inbox: _Inbox) -> None:
        self._channel = channel
        self._inbox = inbox
        self._ids = itertools.count(1)

    def call(self, op: str, payload: dict[str, Any], shape: Callable[[Any], Any] = _same) -> Reply:
        call_id = next(self._ids)
        job = self._channel.job_var.get()
        try:
            line = json.dumps(
                {
                    "t": "baas",
                    "j": self._channel.current_job if job is None else job,
                    "id": call_id,
                    "op": op,
                    "p": payload,
                },
                allow_nan=False,
            )
        except (TypeError, ValueError, RecursionError) as exc:  # (nested too deeply)
            raise BaaSError(605, f"invalid argument: {op} payload is not JSON: {exc}") from None
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.expect(call_id, answer.set_result)  # set on the inbox thread
        self._channel.send_raw(line)
        return Reply(op, answer, shape)


class _Table:
    """One data table. Records are dicts; ``where`` is the platform's JSON query
    (``{"status": {"$eq": "pending"}}``); ``update`` is its update document (a plain value sets
    a field, ``{"$incr_by": 1}``, ``{"$append": [...]}``, ``{"$unset": ""}`` … are atomic)."""

    def __init__(self, calls: _Calls, table: str | int) -> None:
        self._calls = calls
        self.name = table

    def _op(self, op: str, **payload: Any) -> Reply:
        return self._calls.call(op, {"table": self.name, **payload})

    def create(self, record: dict[str, Any]) -> Reply:
        """The stored row (with ``id``, ``created_at`` …)."""
        return self._op("table.create", data=record)

    def create_many(self, records: list[dict[str, Any]], *, enable_trigger: bool = True) -> Reply:
        return self._op("table.create_many", items=records, enable_trigger=enable_trigger)

    def get(self, record_id: str | int, *, select: Any = None, expand: Any = None) -> Reply:
        return self._op("table.get", id=record_id, select=select, expand=expand)

    def find(
        self,
        where: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
        order_by: str | list[str] | None = None,
        select: Any = None,
        expand: Any = None,
        with_count: bool = False,
    ) -> Reply:
        """``{"meta": {...}, "objects": [...]}``."""
        return self._op(
            "table.find",
            where=where,
            limit=limit,
            offset=offset,
            order_by=order_by,
            select=select,
            expand=expand,
            with_count=with_count,
        )

    def count(self, where: dict[str, Any] | None = None) -> Reply:
        return self._op("table.count", where=where)

    def update(
        self, record_id: str | int, update: dict[str, Any], *, enable_trigger: bool = True
    ) -> Reply:
        """The whole updated row."""
        return self._op("table.update", id=record_id, update=update, enable_trigger=enable_trigger)

    def update_many(
        self,
        where: dict[str, Any] | None,
        update: dict[str, Any],
        *,
        limit: int | None = None,
        offset: int | None = None,
        order_by: str | list[str] | None = None,
        enable_trigger: bool = True,
    ) -> Reply:
        return self._op(
            "table.update_many",
            where=where,
            update=update,
            limit=limit,
            offset=offset,
            order_by=order_by,
            enable_trigger=enable_trigger,
        )

    def delete(self, record_id: str | int, *, enable_trigger: bool = True) -> Reply:
        return self._calls.call(
            "table.delete",
            {"table": self.name, "id": record_id, "enable_trigger": enable_trigger},
            lambda _data: None,
        )

    def delete_many(
        self,
        where: dict[str, Any] | None,
        *,
        limit: int | None = None,
        offset: int | None = None,
        enable_trigger: bool = True,
    ) -> Reply:
        return self._op(
            "table.delete_many",
            where=where,
            limit=limit,
            offset=offset,
            enable_trigger=enable_trigger,
        )


class _BaaS:
    """The ``BaaS`` builtin of Python functions (our extension): the same engine calls as the
    Node ``BaaS`` global. Each call returns a :class:`Reply`: ``await`` it (``async def
    main``) or call ``.result()`` (plain ``def main``) for the reply's data; it raises
    ``BaaS.Error`` (code + message) where Node's SDK rejects with an HError."""

    Error = BaaSError

    def __init__(self, calls: _Calls) -> None:
        self._calls = calls
        self.users = _Table(calls, "_userprofile")

    def table(self, table: str | int) -> _Table:
        """A data table by name or id."""
        if isinstance(table, bool) or not isinstance(table, (str, int)) or table == "":
            raise BaaSError(605, "invalid argument: a table is a name or an integer id")
        return _Table(self._calls, table)

    def invoke(self, name: str, params: Any = None, sync: bool = True) -> Reply:
        """Run another cloud function: its ``{code, data, error}`` envelope (``{"status":
        "ok"}`` for sync=False). A failing callee does not raise; a missing one does (404)."""
        if not isinstance(name, str) or not name:
            raise BaaSError(605, "invalid argument: function name must be a non-empty string")
        return self._calls.call(
            "function.invoke", {"name": name, "params": params, "sync": bool(sync)}
        )

    def create_table(self, name: str, fields: list[dict[str, Any]] | None = None) -> Reply:
        """Create a table (``BaaS.TableSchema().createSchema`` in Node)."""
        return self._calls.call("schema.create", {"name": name, "schema": {"fields": fields or []}})

    def _send(self, kind: str, data: dict[str, Any]) -> Reply:
        return self._calls.call("message.send", {"kind": kind, "data": data})

    def send_template_message(self, data: dict[str, Any]) -> Reply:
        return self._send("wechat.template_message", data)

    def send_subscribe_message(self, data: dict[str, Any]) -> Reply:
        return self._send("wechat.subscribe_message", data)

    def send_sms_message(self, data: dict[str, Any]) -> Reply:
        return self._send("sms_message", data)

    def send_email(self, data: dict[str, Any]) -> Reply:
        return self._send("email", data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unsupported(f"BaaS.{name}")


class _Unsupported:
    """What the engine does not provide: reading it is fine (feature checks), calling it or
    anything reached through it raises ``BaaS.Error`` 501 naming it, as in Node."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unsupported(f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise BaaSError(501, f"not supported by the local engine: {self._name}")

    def __repr__(self) -> str:
        return f"<not supported by the local engine: {self._name}>"


class _Worker:
    def __init__(self, channel: _Channel, inbox: _Inbox, file: str, name: str) -> None:
        self._channel = channel
        self._inbox = inbox
        self._file = file
        self._name = name
        self._module: ModuleType | None = None
        self._loop = asyncio.new_event_loop()
        self._main: Callable[..., Any] | None = None
        self._callback_style = False
        self._loop.set_exception_handler(self._loop_exception)
        self._stdout = _LogStream(channel, "LOG", "<stdout>")
        self._stderr = _LogStream(channel, "ERROR", "<stderr>")
        builtins.BaaS = _BaaS(_Calls(channel, inbox))  # type: ignore[attr-defined]

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        detail = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else ""
        self._channel.log("ERROR", f"{context.get('message', 'error in the event loop')}\n{detail}")

    def _load(self) -> Callable[..., Any]:
        if self._module is None:
            spec = importlib.util.spec_from_file_location("cloud_function_main", self._file)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load cloud function {self._name!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickle look the module up here
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[spec.name]
                raise
            self._module = module
        main = getattr(self._module, "main", None)
        if not callable(main):
            raise TypeError(f"cloud function {self._name!r} does not define a main(event) function")
        return main  # type: ignore[no-any-return]

    async def _call(self, event: Any) -> Any:
        main = self._load()
        if main is not self._main:  # inspect.signature costs more than a small job's own work
            self._main, self._callback_style = main, _takes_callback(main)
        if not self._callback_style:
            result = main(event)
            return await result if inspect.isawaitable(result) else result
        # main(event, callback): the callback decides, whatever main returns; it may be called
        # later from another thread or task. Never called -> the engine's time limit applies.
        done: asyncio.Future[Any] = self._loop.create_future()

        def settle(err: object = None, data: Any = None) -> None:
            if done.done():
                return
            if err:
                done.set_exception(_CallbackError(err))
            else:
                done.set_result(data)

        def callback(err: object = None, data: Any = None) -> None:
            if threading.current_thread() is threading.main_thread():
                settle(err, data)
            else:
                self._loop.call_soon_threadsafe(settle, err, data)

        try:
            result = main(event, callback)
            if inspect.isawaitable(result):
                await result
        except Exception:
            if not done.done():
                raise
            # The callback answered first; like the Node worker, the first answer stands.
        return await done

    async def _job(self, job: int, event: Any) -> dict[str, Any]:
        self._channel.job_var.set(job)
        try:
            data = await self._call(event)
        except _CallbackError as exc:
            return {"code": 1, "data": None, "error": _describe(exc.err)}
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of user code is the job's result
            return {"code": 1, "data": None, "error": _describe(exc)}
        return {"code": 0, "data": data, "error": {}}

    def run_job(self, job: int, event: Any) -> None:
        self._channel.current_job = job
        recycle = False
        try:
            envelope = self._loop.run_until_complete(self._job(job, event))
        except MemoryError:
            # The address-space backstop tripped: report it as the memory limit, not a crash.
            self._channel.send({"t": "oom", "j": job})
            os._exit(1)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. a CancelledError escaping user code
            envelope = {"code": 1, "data": None, "error": _describe(exc)}
            recycle = True
        self._stdout.flush()
        self._stderr.flush()
        self._channel.current_job = None
        # "recycle" rides on the result itself, so the engine knows before it reuses us.
        message: dict[str, Any] = {"t": "result", "j": job, "r": envelope}
        if recycle:
            message["recycle"] = True
        try:
            line = json.dumps(message, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:  # (nested too deeply)
            reason = f"the cloud function's result is not JSON-serialisable: {exc}"
            error = {"message": reason, "stack": "", "type": type(exc).__name__}
            message["r"] = {"code": 1, "data": None, "error": error}
            line = json.dumps(message)
        self._channel.send_raw(line)

    def serve(self) -> None:
        sys.stdout = cast(TextIO, self._stdout)
        sys.stderr = cast(TextIO, self._stderr)
        root = logging.getLogger()
        root.addHandler(_LogHandler(self._channel))
        # Decision: INFO, so logging.info() shows in the job log as console.info does in Node.
        root.setLevel(logging.INFO)
        threading.excepthook = self._thread_exception
        self._channel.send({"t": "ready"})
        while (request := self._inbox.jobs.get()) is not None:
            self.run_job(request["j"], request["e"])
        # The jobs pipe closed: the engine went away.

    def _thread_exception(self, args: threading.ExceptHookArgs) -> None:
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        self._channel.log(
            "ERROR", f"Exception in thread {getattr(args.thread, 'name', '?')}:\n{text}"
        )


class _CallbackError(Exception):
    """Carries what user code passed as callback(err, ...)."""

    def __init__(self, err: object) -> None:
        super().__init__(err)
        self.err = err


def _main() -> None:
    msg_fd, jobs_fd = int(sys.argv[1]), int(sys.argv[2])
    file, name, limit_mb = sys.argv[3], sys.argv[4], int(sys.argv[5])
    for fd in (msg_fd, jobs_fd):  # programs the function runs must not hold the protocol
        os.set_inheritable(fd, False)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The engine's RSS watchdog enforces the limit; this backstop turns one huge allocation
    # into a MemoryError (reported as the limit) before it can take the machine's memory.
    # Virtual, not resident, memory: generous, so thread stacks and malloc arenas never hit it.
    backstop = (limit_mb + 4096) * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > backstop:
        resource.setrlimit(resource.RLIMIT_AS, (backstop, hard))
    sys.path.insert(0, os.path.dirname(file))
    channel = _Channel(msg_fd)
    _Worker(channel, _Inbox(jobs_fd), file, name).serve()


if __name__ == "__main__":
    _main()
