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

from ._accounts import AccountError, Accounts, public_user
from ._baas import BaasService, EngineOutbox, EngineTables
from ._config import DEFAULT_CLIENT_ID, EngineConfig
from ._console import JobConsole
from ._faults import Faults
from ._jobs import EngineStats, Job, JobBoard
from ._sandbox import Containment
from ._schedule import TimerStatus, TriggerRunner, platform_now
from ._store import Store, StoreBounds
from ._table_triggers import TableTriggers
from ._trigger_file import load as load_triggers
from .http import TRIGGERS, AppState, EngineSite, create_app
from .http._invoking import build_event
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
        self._store: Store | None = None
        self._accounts: Accounts | None = None
        self._console = JobConsole(job_output) if job_output is not None else None
        self._runtime: Runtime | None = None
        self._baas: BaasService | None = None
        self._board: JobBoard | None = None
        self._app_state: AppState | None = None
        self._runner: web.AppRunner | None = None
        self._site: EngineSite | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._triggers: TriggerRunner | None = None
        self._table_triggers: TableTriggers | None = None
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
        config = self.config
        try:
            self._store = await Store.open(
                config.state,
                bounds=StoreBounds(
                    max_finished=config.max_finished_jobs,
                    max_finished_bytes=config.max_finished_bytes,
                ),
            )
            self._accounts = Accounts(
                self._store,
                client_id=config.client_id,
                client_secret=config.client_secret,
                session_ttl=config.session_ttl,
                access_token_ttl=config.access_token_ttl,
            )
            # The data tables share the state file (their own connection; the store holds
            # the file's engine lock).
            self._baas = BaasService(config.state, strict_tables=config.strict_tables)
            self._baas.load_schema_file(functions_dir)
            baas = self._baas
            for user in self._accounts.users():  # kept from an earlier run of the engine
                baas.add_user(public_user(user))
            self._accounts.on_new_user = lambda user: baas.add_user(public_user(user))
            self._runtime = Runtime(
                functions_dir,
                memory_limit_mb=config.memory_limit_mb,
                node=config.node or shutil.which("node"),
                max_idle=config.idle_workers_bound,
                contain=config.contain_functions,
                # The engine's state folder (when it lives there): hidden from functions.
                hidden_dirs=[functions_dir / ".minapp"],
                baas=self._baas.handle,
            )
            await self._runtime.start()  # decides containment and logs what it cannot enforce
            self._board = JobBoard(
                self._runtime,
                self._store,
                concurrency=config.concurrency,
                schedule_wait=config.schedule_wait,
                sync_time_limit=config.sync_time_limit,
                async_time_limit=config.async_time_limit,
                max_queued_jobs=config.max_queued_jobs,
                max_queued_bytes=config.max_queued_bytes,
                console=self._console,
            )
            self._baas.bind(
                self._board,
                self._runtime.locate,
                miniapp_id=config.miniapp_id,
                memory_limit_mb=config.memory_limit_mb,
            )
            await self._resume_jobs()
            self._serve_task = asyncio.get_running_loop().create_task(
                self._board.serve(), name="minapp-engine-async-jobs"
            )
            if self.config.prestart:
                self._runtime.prestart(self._runtime.names())
            self._app_state = AppState(
                config=self.config,
                accounts=self._accounts,
                board=self._board,
                store=self._store,
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
            self._table_triggers = table_triggers = TableTriggers(
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
            if self._table_triggers is not None:
                await self._table_triggers.aclose()  # jobs being stored end first
            if self._board is not None:
                self._board.close()
            if self._serve_task is not None:
                self._serve_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._serve_task
            if self._board is not None:
                await self._board.aclose()
            if self._runtime is not None:
                await self._runtime.aclose()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._baas is not None:
                # After the workers: no call is in flight any more. Off the loop: the thread
                # may be finishing a statement.
                await anyio.to_thread.run_sync(self._baas.close)
            if self._store is not None:
                await self._store.aclose()  # after every job record was handed to it

    async def _resume_jobs(self) -> None:
        """Queue again the async jobs an earlier run of the engine accepted but did not
        finish (those cut off mid-run are marked ``rerun``), before serving requests."""
        assert self._store is not None and self._board is not None
        assert self._runtime is not None and self._accounts is not None
        for record in await self._store.recover():
            user = self._accounts.user(record.user_id) if record.user_id is not None else None
            job = Job.from_record(record)
            event = build_event(
                self.config,
                job,
                time_limit=self._board.async_time_limit,
                user=user,
            )
            self._board.resume(record, self._runtime.locate(record.function_name), event)

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
        accounts = self._accounts
        if accounts is None:
            raise RuntimeError("the engine has not been started")
        try:
            return accounts.create_user_nowait(
                username=username, email=email, phone=phone, password=password
            ).id
        except AccountError as exc:
            raise ValueError(exc.message) from None

    def expire_sessions(self) -> None:
        """Expire every user token and access token issued so far (refresh tokens still work)."""
        if self._accounts is None:
            raise RuntimeError("the engine has not been started")
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

    async def jobs(self, function_name: str | None = None) -> list[Job]:
        """Every job kept (or one function's) in the order they were created: those in
        flight, and the finished records the state keeps (see ``max_finished_jobs``)."""
        return await self._need_board().jobs(function_name)

    async def job(self, job_id: str) -> Job:
        """One job's current state; KeyError if there is no such job."""
        job = await self._need_board().get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

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
            queued_jobs=board.queued_jobs,
            queued_bytes=board.queued_bytes,
            idle_workers=self._runtime.idle_workers if self._runtime is not None else 0,
        )

    # ---- timers ----

    def timers(self) -> list[TimerStatus]:
        """The timers of the triggers file (``minapp.triggers.json``) with their next run."""
        return self._need_triggers().statuses()

    async def fire_timer(self, name: str) -> Job:
        """Run timer *name*'s function now, as its schedule would (an async job with the
        timer's event); returns the job (wait for it with :meth:`wait_job`). LookupError for
        an unknown timer or a function that is not in the folder."""
        return await self._need_triggers().fire_timer(name)

    async def tick_timers(self, now: datetime.datetime) -> list[Job]:
        """Fire every timer due at *now* (an aware datetime), as the scheduler does when its
        clock reads *now*; the jobs started. For tests: no need to wait for a real minute."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (e.g. in Asia/Shanghai, UTC+8)")
        return await self._need_triggers().tick(now)

    def _need_triggers(self) -> TriggerRunner:
        if self._triggers is None or self._state is not _State.OPEN:
            raise RuntimeError("the engine is not serving: start it first")
        return self._triggers

    def _need_board(self) -> JobBoard:
        if self._board is None:
            raise RuntimeError("the engine has not been started")
        return self._board
