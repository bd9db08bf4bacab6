"""The Engine: binds the app to a port, owns the runtime and the job board, shuts down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import shutil
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TextIO

import anyio
import attrs
from aiohttp import web

from ._accounts import AccountError, Accounts
from ._baas import BaasService, EngineOutbox, EngineTables
from ._config import DEFAULT_CLIENT_ID, EngineConfig
from ._console import JobConsole
from ._faults import Faults
from ._jobs import EngineStats, Job, JobBoard
from ._sandbox import Containment
from ._schedule import TimerStatus, TriggerRunner, platform_now
from ._table_triggers import TableTriggers
from ._trigger_file import load as load_triggers
from .http import TRIGGERS, AppState, EngineSite, create_app
from .runtime import Runtime

#: In-flight HTTP handlers get this long to finish at shutdown before they are cancelled.
#: Running jobs are cancelled first, so only fault-delayed replies can take that long.
SHUTDOWN_GRACE: Final = 2.0

if TYPE_CHECKING:
    from typing_extensions import Self


class _State(enum.Enum):
    UNOPENED = "unopened"  # built, not started
    OPEN = "open"  # serving
    CLOSED = "closed"  # shut down; cannot be restarted


class Engine:
    """A local 知晓云 server: the client API (hserve), the Open API (oserve), real functions.

    Use it as an async context manager, or call :meth:`start` and :meth:`aclose`::

        async with Engine(functions_dir="examples/functions") as engine:
            print(engine.url)

    Args:
        config: An :class:`EngineConfig`; keyword *overrides* replace its fields (or build one
            from scratch when *config* is omitted, e.g. ``Engine(functions_dir=...)``).
        job_output: A text stream that gets each job's log lines as they arrive and a line
            when it ends (function, request id, status, duration); ``serve`` passes stdout.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        /,
        *,
        job_output: TextIO | None = None,
        **overrides: Any,
    ) -> None:
        self.config = (
            EngineConfig(**overrides) if config is None else attrs.evolve(config, **overrides)
        )
        self._state = _State.UNOPENED
        self.faults = Faults()
        self._accounts = Accounts(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            session_ttl=self.config.session_ttl,
            access_token_ttl=self.config.access_token_ttl,
        )
        self._console = JobConsole(job_output) if job_output is not None else None
        self._runtime: Runtime | None = None
        self._baas: BaasService | None = None
        self._board: JobBoard | None = None
        self._app_state: AppState | None = None
        self._runner: web.AppRunner | None = None
        self._site: EngineSite | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._triggers: TriggerRunner | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        where = self._url or f"{self.config.host}:{self.config.port}"
        return f"<Engine {self._state.value} {where} functions={str(self.config.functions_dir)!r}>"

    # ---- lifecycle ----

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> None:
        raise TypeError("Engine is an async context manager: use 'async with Engine(...)'")

    def __exit__(self, *args: object) -> None:  # pragma: no cover - __enter__ always raises
        pass

    async def start(self) -> None:
        """Start serving; afterwards :attr:`url` says where."""
        if self._state is not _State.UNOPENED:
            raise RuntimeError(
                "this engine is already started"
                if self._state is _State.OPEN
                else "this engine is closed; create a new Engine"
            )
        functions_dir = self.config.functions_dir
        if not functions_dir.is_dir():
            raise FileNotFoundError(f"functions_dir is not a directory: {str(functions_dir)!r}")
        # A bad triggers file stops the start, naming the file and line (TriggerFileError).
        triggers = load_triggers(functions_dir)
        self._state = _State.OPEN
        try:
            self._baas = BaasService(self.config.state, strict_tables=self.config.strict_tables)
            self._baas.load_schema_file(functions_dir)
            baas = self._baas
            for user in self._accounts.users():  # made with create_user() before start()
                baas.add_user(user.public())
            self._accounts.on_new_user = lambda user: baas.add_user(user.public())
            self._runtime = Runtime(
                functions_dir,
                memory_limit_mb=self.config.memory_limit_mb,
                node=self.config.node or shutil.which("node"),
                contain=self.config.contain_functions,
                # The engine's state folder (when it lives there): hidden from functions.
                hidden_dirs=[functions_dir / ".minapp"],
                baas=self._baas.handle,
            )
            await self._runtime.start()  # decides containment and logs what it cannot enforce
            self._board = JobBoard(
                self._runtime,
                concurrency=self.config.concurrency,
                schedule_wait=self.config.schedule_wait,
                sync_time_limit=self.config.sync_time_limit,
                async_time_limit=self.config.async_time_limit,
                console=self._console,
            )
            self._baas.bind(
                self._board,
                self._runtime.locate,
                miniapp_id=self.config.miniapp_id,
                memory_limit_mb=self.config.memory_limit_mb,
            )
            self._serve_task = asyncio.get_running_loop().create_task(
                self._board.serve(), name="minapp-engine-async-jobs"
            )
            self._app_state = AppState(
                config=self.config,
                accounts=self._accounts,
                board=self._board,
                locate_function=self._runtime.locate,
                faults=self.faults,
                function_names=self._runtime.names,
            )
            self._runner = web.AppRunner(
                create_app(self._app_state),
                handle_signals=False,
                shutdown_timeout=SHUTDOWN_GRACE,
            )
            self._triggers = TriggerRunner(
                triggers, self._board, self._runtime.locate, self.config, now=platform_now()
            )
            self._runner.app[TRIGGERS] = self._triggers  # for the webhook and timer routes
            table_triggers = TableTriggers(
                triggers.tables, self._triggers, self._baas, asyncio.get_running_loop()
            )
            self._baas.on_nested = table_triggers.inherit
            self._baas.tables.on_change = table_triggers.on_change  # before any function runs
            self._timer_task = asyncio.get_running_loop().create_task(
                self._triggers.run(), name="minapp-engine-timers"
            )
            await self._runner.setup()
            self._site = EngineSite(
                self._runner,
                self.config.host,
                self.config.port,
                idle_timeout=self.config.idle_timeout,
            )
            await self._site.start()
            port = self._runner.addresses[0][1]
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        host = self.config.host
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def aclose(self) -> None:
        """Stop serving, cancel running jobs, kill the workers. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        with anyio.CancelScope(shield=True):
            if self._site is not None:
                await self._site.stop()  # no new connections from here on
            if self._timer_task is not None:
                self._timer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._timer_task
            if self._board is not None:
                self._board.close()
            if self._serve_task is not None:
                self._serve_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._serve_task
            if self._board is not None:
                self._board.close_queue()
            if self._runtime is not None:
                await self._runtime.aclose()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._baas is not None:
                # After the workers: no call is in flight any more. Off the loop: the thread
                # may be finishing a statement.
                await anyio.to_thread.run_sync(self._baas.close)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", None) is _State.OPEN:
            _warn(
                f"unclosed {self!r}: use 'async with Engine(...)' or await engine.aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    # ---- where and who ----

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the engine is not serving: start it first")
        return self._url

    @property
    def containment(self) -> Containment | None:
        """What containment of functions enforces here (and what not, with the reason); None
        before :meth:`start`."""
        return self._runtime.containment if self._runtime is not None else None

    @property
    def client_id(self) -> str:
        """The pinned client id, or the documented default (any id works unless pinned)."""
        return self.config.client_id or DEFAULT_CLIENT_ID

    @property
    def client_secret(self) -> str:
        return self.config.client_secret

    def function_names(self) -> list[str]:
        """The functions in the folder now, sorted."""
        if self._runtime is None:
            raise RuntimeError("the engine has not been started")
        return self._runtime.names()

    # ---- accounts ----

    def create_user(
        self,
        *,
        username: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        password: str,
    ) -> int:
        """Register a user who can then log in; returns the user id."""
        try:
            return self._accounts.create_user(
                username=username, email=email, phone=phone, password=password
            ).id
        except AccountError as exc:
            raise ValueError(exc.message) from None

    def expire_sessions(self) -> None:
        """Expire every user token and access token issued so far (refresh tokens still work)."""
        self._accounts.expire_all()

    # ---- data tables and the outbox ----

    @property
    def tables(self) -> EngineTables:
        """The data tables functions use: seed, read and reset them from tests
        (``engine.tables.seed("orders", rows)``, ``.rows("orders")``, ``.reset()`` …)."""
        return EngineTables(self._need_baas())

    @property
    def outbox(self) -> EngineOutbox:
        """Messages functions sent (``engine.outbox.messages("wechat.template_message")``)."""
        return EngineOutbox(self._need_baas())

    def _need_baas(self) -> BaasService:
        if self._baas is None or self._state is not _State.OPEN:
            raise RuntimeError("the engine is not serving: start it first")
        return self._baas

    # ---- jobs ----

    def jobs(self, function_name: str | None = None) -> list[Job]:
        """Every job (or one function's) in the order they were created."""
        return self._need_board().jobs(function_name)

    def job(self, job_id: str) -> Job:
        """One job's current state; KeyError if there is no such job."""
        return self._need_board().job(job_id)

    # The public API takes a timeout, like asyncio.wait_for: a job wait must always be bounded.
    async def wait_job(self, job_id: str, timeout: float) -> Job:  # noqa: ASYNC109
        """The job once it has finished; TimeoutError if that takes over *timeout* seconds."""
        return await self._need_board().wait(job_id, timeout)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until no job is waiting or executing; TimeoutError after *timeout* seconds."""
        await self._need_board().drain(timeout)

    def executions(self, function_name: str) -> int:
        """How many times the runtime started *function_name*."""
        return self._need_board().executions(function_name)

    def stats(self) -> EngineStats:
        """A snapshot of the per-function and HTTP counters."""
        board, state = self._need_board(), self._app_state
        assert state is not None
        return EngineStats(
            functions=board.function_stats(),
            requests_served=state.requests_served,
            requests_in_flight=state.requests_in_flight,
            peak_concurrent_requests=state.peak_concurrent_requests,
        )

    # ---- timers ----

    def timers(self) -> list[TimerStatus]:
        """The timers of the triggers file (``minapp.triggers.json``) with their next run."""
        return self._need_triggers().statuses()

    async def fire_timer(self, name: str) -> Job:
        """Run timer *name*'s function now, as its schedule would (an async job with the
        timer's event); returns the job (wait for it with :meth:`wait_job`). LookupError for
        an unknown timer or a function that is not in the folder."""
        return self._need_triggers().fire_timer(name)

    async def tick_timers(self, now: datetime.datetime) -> list[Job]:
        """Fire every timer due at *now* (an aware datetime), as the scheduler does when its
        clock reads *now*; the jobs started. For tests: no need to wait for a real minute."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (e.g. in Asia/Shanghai, UTC+8)")
        return self._need_triggers().tick(now)

    def _need_triggers(self) -> TriggerRunner:
        if self._triggers is None or self._state is not _State.OPEN:
            raise RuntimeError("the engine is not serving: start it first")
        return self._triggers

    def _need_board(self) -> JobBoard:
        if self._board is None:
            raise RuntimeError("the engine has not been started")
        return self._board
