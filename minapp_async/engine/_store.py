"""The engine's durable state: users, sessions, OAuth grants and job records in one SQLite file.

Durability: the file is in WAL mode with ``synchronous=NORMAL`` by default. A committed
transaction is then in the WAL file (the operating system's page cache) before the commit
returns, so it survives the engine being killed, even by SIGKILL; only an operating-system
crash or power loss can take the last commits with it. ``durability="full"`` adds an fsync
per commit for that case too (one per batch, thanks to group commit).

Concurrency: one writer thread owns the only connection. The event loop hands it requests
through a bounded queue; it runs whatever has piled up in one transaction (group commit) and
resolves the waiting futures with one ``call_soon_threadsafe`` per batch, so the loop never
blocks on disk. SQLite's locking is the normal one, so other connections of this process (the
data tables, see :attr:`Store.path` and :meth:`Store.connect_options`) share the file; a second
engine is kept out by an ``flock`` on ``<file>.lock``, held while the store is open, and gets a
clear error instead of a silent share.

What the hot path reads (sessions, tokens, users) is served from memory, kept in step with the
file; job records are read through the writer, so a read sees every write made before it.
Tokens are kept as SHA-256 digests, on disk and in memory: the file never holds a usable token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import attrs

from .._logs import get_logger

if TYPE_CHECKING:
    from typing_extensions import Self

logger = get_logger("minapp_async.engine")

#: The schema version this module writes (``PRAGMA user_version``).
SCHEMA_VERSION: Final = 1
#: Job statuses the store treats as "not finished" (the others are final).
WAITING: Final = "waiting"
EXECUTING: Final = "executing"
FINISHED_STATUSES: Final[frozenset[str]] = frozenset(
    {"fulfilled", "schedule_failed", "execution_rejected", "deadline_exceeded", "execution_failed"}
)
#: Where ``Accounts`` starts numbering users (14 digits, like the platform's ids).
FIRST_USER_ID: Final = 91464885772601

Durability = Literal["normal", "full"]
LoginKind = Literal["username", "email", "phone"]

# Each step upgrades the file from version i to i + 1; never edit a released step.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,              -- username, email, phone or anonymous
        username TEXT UNIQUE,
        email TEXT UNIQUE,
        phone TEXT UNIQUE,
        salt BLOB NOT NULL,
        password_hash BLOB NOT NULL,
        anonymous INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        profile TEXT NOT NULL            -- JSON object
    );
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL,
        expires_at REAL NOT NULL         -- epoch seconds
    ) WITHOUT ROWID;
    CREATE TABLE oauth_codes (
        code_hash BLOB PRIMARY KEY,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE oauth_tokens (
        token_hash BLOB PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        partner_hash BLOB NOT NULL,      -- the other token of the pair
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,         -- acceptance order
        id TEXT NOT NULL UNIQUE,
        function_name TEXT NOT NULL,
        sync INTEGER NOT NULL,
        source TEXT NOT NULL,
        request_id TEXT NOT NULL,
        user_id INTEGER,
        params TEXT NOT NULL,            -- JSON
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,                -- NULL while waiting or executing
        attempts INTEGER NOT NULL DEFAULT 0,
        rerun INTEGER NOT NULL DEFAULT 0,
        result TEXT,                     -- JSON
        log BLOB NOT NULL DEFAULT x'',   -- UTF-8
        error_msg TEXT,
        execution_time_ms REAL NOT NULL DEFAULT 0,
        mem_usage INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL DEFAULT 0  -- bytes of params + result + log, once finished
    );
    CREATE INDEX jobs_by_function ON jobs (function_name, seq);
    CREATE INDEX jobs_active ON jobs (seq) WHERE finished_at IS NULL;
    CREATE INDEX jobs_finished ON jobs (seq) WHERE finished_at IS NOT NULL;
    """,
)

_JOB_COLUMNS: Final = (
    "id, function_name, sync, source, request_id, user_id, status, created_at, started_at, "
    "finished_at, attempts, rerun, error_msg, execution_time_ms, mem_usage, seq"
)
_BODY_COLUMNS: Final = ", params, result, log"
_RERUN_NOTE: Final = "cut off mid-run when the engine stopped; run again"


class _Nothing(Exception):
    """Raised by a request's ``before`` step: there is nothing to write."""


class StoreError(Exception):
    """The state file cannot be used; the message names the file and what to do."""


@attrs.frozen
class StoreBounds:
    """How many finished job records to keep, and how many bytes of them (params, result,
    log); the oldest finished records go first. Waiting and executing jobs are never dropped."""

    max_finished: int = 10_000
    max_finished_bytes: int = 256 * 1024 * 1024
    #: Write requests waiting for the writer thread before new ones wait for room.
    max_pending: int = 10_000
    #: Requests committed in one transaction at most.
    max_batch: int = 2_000


@attrs.frozen
class StoreStats:
    """Counters kept in memory (no query needed to read them). ``waiting`` and ``executing``
    count the calls made so far; ``finished`` and ``finished_bytes`` the records committed
    (after :meth:`Store.flush` they include every finish made before it)."""

    waiting: int
    executing: int
    finished: int
    finished_bytes: int


@attrs.frozen
class UserRecord:
    """One user as stored. ``kind`` says how they registered (or ``anonymous``)."""

    id: int
    kind: str
    created_at: int
    anonymous: bool = False
    username: str | None = None
    email: str | None = None
    phone: str | None = None
    salt: bytes = attrs.field(default=b"", repr=False)
    password_hash: bytes = attrs.field(default=b"", repr=False)
    profile: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class JobRecord:
    """One job as stored. ``params``, ``result`` and ``log`` are empty when the record was
    listed without bodies. ``rerun`` is set when the job was cut off mid-run by an engine
    stop and queued again; ``attempts`` counts its starts."""

    id: str
    function_name: str
    sync: bool
    source: str
    request_id: str
    user_id: int | None
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    rerun: bool
    error_msg: str | None
    execution_time_ms: float
    mem_usage: int
    seq: int
    params: Any = None
    result: Any = None
    log: str = ""

    @property
    def service_type(self) -> str:
        return "time_sensitive" if self.sync else "batch"

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


@attrs.frozen
class JobPage:
    """One page of a job list and the number of jobs matching the filters."""

    total: int
    jobs: list[JobRecord]


class EndedJob(NamedTuple):
    """A job that has already ended, as :meth:`Store.record` writes it in one go.
    ``finished_at`` defaults to the time the record is made."""

    id: str
    function_name: str
    sync: bool
    source: str
    request_id: str
    params: Any
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None = None
    user_id: int | None = None
    result: Any = None
    log: str = ""
    error_msg: str | None = None
    execution_time_ms: float = 0.0
    mem_usage: int = 0


def _ended_row(job: EndedJob) -> tuple[Any, ...]:
    """The ``jobs`` row of an :class:`EndedJob` (the INSERT of a "record" request)."""
    if job.status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)}")
    params_json = _json(job.params)
    result_json = None if job.result is None else _json(job.result)
    log_bytes = job.log.encode("utf-8", "backslashreplace")  # lone surrogates stay readable
    started_at = job.started_at
    return (
        job.id,
        job.function_name,
        job.sync,
        job.source,
        job.request_id,
        job.user_id,
        params_json,
        job.status,
        job.created_at,
        started_at,
        time.time() if job.finished_at is None else job.finished_at,
        0 if started_at is None else 1,
        result_json,
        log_bytes,
        job.error_msg,
        job.execution_time_ms,
        job.mem_usage,
        len(params_json) + len(result_json or "") + len(log_bytes),
    )


def new_job_id() -> str:
    """32 hex digits like the engine's job ids, but in time order: microseconds since the
    epoch, a random number per process, a counter. Ordered ids keep the id index
    append-only, so accepting a job costs the same at 100,000 records as at 1 (random ids
    touch a random index page per insert, and the cost grows with the index). Job ids are
    not secrets (reading a job needs the Open API token); this one needs no system call."""
    return f"{time.time_ns() // 1000:014x}{_ID_SALT:08x}{next(_ID_COUNTER) & _ID_MASK:010x}"


class RawJSON(str):
    """Params or a result already encoded as JSON text (say, as a worker sent it): stored
    as they are instead of encoded again. The caller vouches that the text is valid JSON."""

    __slots__ = ()


def _json(value: Any) -> str:
    return value if isinstance(value, RawJSON) else _to_json(value)


_ID_SALT: Final = secrets.randbits(32)
_ID_COUNTER: Final = itertools.count()
_ID_MASK: Final = (1 << 40) - 1
# json.dumps() builds a new encoder per call when given options: build the compact one once.
_to_json: Final = json.JSONEncoder(separators=(",", ":")).encode


def token_digest(token: str) -> bytes:
    """How a token is keyed on disk and in memory: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# A request to the writer thread: (operation, arguments, future or None).
_Op = tuple[str, tuple[Any, ...], "asyncio.Future[Any] | None"]
_STOP: Final = "stop"
# What the writer hands back per request: (future, result or error, failed, id of the job
# an "accept" request was for, so a failed accept can be forgotten).
_Outcome = tuple["asyncio.Future[Any] | None", Any, bool, "str | None"]


class Store:
    """The engine's state in one SQLite file, or ``":memory:"`` for a throw-away engine.

    Open with ``await Store.open(path)`` and close with ``await store.aclose()`` (or use
    ``async with``). Methods are called from the event loop that opened the store.
    """

    def __init__(self, path: str, *, _token: object) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("use `await Store.open(path)`")
        self.path = path
        self.bounds = StoreBounds()
        #: How long a connection waits for another one's write lock (seconds); another
        #: connection to :attr:`path` (the data tables) should use the same.
        self.busy_timeout = 5.0
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests made during one turn of the loop go to the writer together.
        self._outbox: list[_Op] = []
        self._outbox_urgent = False  # it holds a request that carries a future
        # Handed over, not yet taken by the writer; guarded by _mutex, as is _writer_state.
        # The loop rings _bell only when the writer must wake: it is idle, or it lingers
        # and a request carrying a future arrived (or a full batch). Requests nobody waits
        # for join a lingering batch without waking the writer (no GIL taken per call).
        self._pending: list[_Op] = []
        self._pending_urgent = False
        self._mutex = threading.Lock()
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._writer_state = _WRITING
        self._room = _Room(self.bounds.max_pending)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        # In memory, in step with the file.
        self._users: dict[int, UserRecord] = {}
        self._by_login: dict[tuple[str, str], int] = {}
        self._sessions: dict[bytes, tuple[int, float]] = {}
        self._codes: dict[bytes, float] = {}
        self._tokens: dict[bytes, tuple[str, bytes, float]] = {}  # -> (kind, partner, expiry)
        # job id -> [waiting or executing, bytes of its params]
        self._active: dict[str, tuple[str, int]] = {}
        self._executing = 0
        self._next_user_id = FIRST_USER_ID
        # Owned by the writer thread; read from the loop (plain ints).
        self._finished = 0
        self._finished_bytes = 0

    def __repr__(self) -> str:
        return f"<Store {self.path!r} users={len(self._users)} active jobs={len(self._active)}>"

    # ---- life cycle ----

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        bounds: StoreBounds | None = None,
        durability: Durability = "normal",
        busy_timeout: float = 5.0,
        on_statement: Callable[[str], None] | None = None,
    ) -> Store:
        """Open (creating or upgrading) the state file at *path*; StoreError if it cannot be.

        *on_statement* sees every SQL statement the store runs (for tests and profiling);
        it is called on the writer thread.
        """
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        store = cls(str(path), _token=_OPEN_TOKEN)
        store.busy_timeout = busy_timeout
        if bounds is not None:
            store.bounds = bounds
            store._room = _Room(bounds.max_pending)
        store._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = store._loop.create_future()
        store._thread = threading.Thread(
            target=store._writer,
            args=(ready, durability, busy_timeout, on_statement),
            name=f"minapp state writer {store.path}",
            daemon=True,  # committed data is safe even if the interpreter exits without aclose
        )
        store._thread.start()
        try:
            await asyncio.shield(ready)
        except asyncio.CancelledError:
            # Cancelled while opening: close the file once the writer has it open.
            ready.add_done_callback(store._close_after_open)
            raise
        return store

    def _close_after_open(self, ready: asyncio.Future[None]) -> None:
        if ready.exception() is None:
            self._closing = True
            self._outbox.append((_STOP, (), None))
            self._outbox_urgent = True
            self._hand_over()

    @property
    def in_memory(self) -> bool:
        """True for a throw-away store (``":memory:"``): no other connection can see it."""
        return self.path == ":memory:"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit what is pending and close the file. Idempotent."""
        if self._closed is None:
            assert self._loop is not None
            self._closing = True
            self._closed = self._loop.create_future()
            self._outbox.append((_STOP, (), self._closed))
            self._outbox_urgent = True
            self._hand_over()
        await asyncio.shield(self._closed)
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def flush(self) -> None:
        """Return once every write made before this call is committed."""
        await self._submit("noop", (), wait=True)

    @property
    def stats(self) -> StoreStats:
        return StoreStats(
            waiting=len(self._active) - self._executing,
            executing=self._executing,
            finished=self._finished,
            finished_bytes=self._finished_bytes,
        )

    # ---- jobs ----

    async def accept(
        self,
        job_id: str,
        function_name: str,
        *,
        sync: bool,
        source: str,
        request_id: str,
        params: Any,
        user_id: int | None = None,
        created_at: float | None = None,
        wait: bool | None = None,
    ) -> None:
        """Record a new waiting job. By default an async job's record is committed before
        this returns (``wait=True``) and a sync job's is not (its caller is still there).

        Cancelled while it waits for the commit, the job is still recorded (a write cannot
        be taken back): the caller should treat it as accepted, e.g. shield accept + queue.
        """
        request = self._accept_request(
            job_id, function_name, sync, source, request_id, params, user_id, created_at
        )
        await self._submit(*request, wait=not sync if wait is None else wait)

    async def accept_queued(
        self,
        job_id: str,
        function_name: str,
        *,
        source: str,
        request_id: str,
        params: Any,
        user_id: int | None = None,
        created_at: float | None = None,
    ) -> asyncio.Future[None]:
        """Record a new waiting async job, returning once the write is queued (which may
        wait for room): the future is its commit. Callbacks added to it run even if the
        caller stops waiting, so the caller can act on the commit without a task of its own.
        Cancelled before it returns, nothing was recorded."""
        request = self._accept_request(
            job_id, function_name, False, source, request_id, params, user_id, created_at
        )
        future = await self._queue(*request)
        assert future is not None  # record() never skips
        return future

    def _accept_request(
        self,
        job_id: str,
        function_name: str,
        sync: bool,
        source: str,
        request_id: str,
        params: Any,
        user_id: int | None,
        created_at: float | None,
    ) -> tuple[str, tuple[Any, ...], Callable[[], None]]:
        params_json = _json(params)
        created = time.time() if created_at is None else created_at
        row = (job_id, function_name, sync, source, request_id, user_id, params_json, created)

        def record() -> None:
            if job_id in self._active:
                raise ValueError(f"job {job_id} is already waiting or executing")
            self._active[job_id] = (WAITING, len(params_json))  # ASCII: chars are bytes

        return "accept", row, record

    async def start(
        self, job_id: str, *, started_at: float | None = None, wait: bool = False
    ) -> None:
        """Mark a waiting job executing and count the attempt."""
        await self._submit(*self._start_request(job_id, started_at), wait=wait)

    def start_nowait(self, job_id: str, *, started_at: float | None = None) -> None:
        """:meth:`start` without waiting, for the event loop's hot path."""
        self._submit_nowait(*self._start_request(job_id, started_at))

    def _start_request(
        self, job_id: str, started_at: float | None
    ) -> tuple[str, tuple[Any, ...], Callable[[], None]]:
        started = time.time() if started_at is None else started_at

        def record() -> None:
            entry = self._active.get(job_id)
            if entry is None or entry[0] != WAITING:
                raise KeyError(f"job {job_id} is not waiting")
            self._active[job_id] = (EXECUTING, entry[1])
            self._executing += 1

        return "start", (job_id, started), record

    async def finish(
        self,
        job_id: str,
        *,
        status: str,
        result: Any = None,
        log: str = "",
        error_msg: str | None = None,
        execution_time_ms: float = 0.0,
        mem_usage: int = 0,
        finished_at: float | None = None,
        wait: bool = False,
    ) -> None:
        """Record a job's end. Not waiting for the commit is safe: a job whose end was lost
        with the process is still waiting or executing in the file, so it runs again."""
        request = self._finish_request(
            job_id, status, result, log, error_msg, execution_time_ms, mem_usage, finished_at
        )
        await self._submit(*request, wait=wait)

    def finish_nowait(
        self,
        job_id: str,
        *,
        status: str,
        result: Any = None,
        log: str = "",
        error_msg: str | None = None,
        execution_time_ms: float = 0.0,
        mem_usage: int = 0,
        finished_at: float | None = None,
    ) -> None:
        """:meth:`finish` without waiting, for the event loop's hot path: it takes room in
        the writer's queue even past its bound (finishes are bounded by the jobs run)."""
        self._submit_nowait(
            *self._finish_request(
                job_id, status, result, log, error_msg, execution_time_ms, mem_usage, finished_at
            )
        )

    def _finish_request(
        self,
        job_id: str,
        status: str,
        result: Any,
        log: str,
        error_msg: str | None,
        execution_time_ms: float,
        mem_usage: int,
        finished_at: float | None,
    ) -> tuple[str, list[Any], Callable[[], None]]:
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)}")
        result_json = None if result is None else _json(result)
        log_bytes = log.encode("utf-8", "backslashreplace")  # lone surrogates stay readable
        ended = time.time() if finished_at is None else finished_at
        row = [job_id, status, result_json, log_bytes, error_msg, execution_time_ms, mem_usage]

        def record() -> None:
            entry = self._active.pop(job_id, None)
            if entry is None:
                raise KeyError(f"job {job_id} is not waiting or executing")
            if entry[0] == EXECUTING:
                self._executing -= 1
            row.extend((ended, entry[1] + len(result_json or "") + len(log_bytes)))

        return "finish", row, record

    async def record(self, job: EndedJob, *, wait: bool = False) -> None:
        """Record a job that has already ended, in one write: for a sync call, whose whole
        life happened while its caller waited (accept + start + finish cost three writes).
        Such a job is not in the file while it runs, so a crash cannot leave it behind."""
        await self._submit("record", _ended_row(job), wait=wait)

    def record_nowait(self, job: EndedJob) -> None:
        """:meth:`record` without waiting, for the event loop's hot path (sync calls are
        bounded by the engine's concurrency, so they may take room past the bound)."""
        self._submit_nowait("record", _ended_row(job), None)

    async def get(self, job_id: str) -> JobRecord | None:
        """One job with its params, result and log; None if unknown or pruned."""
        record: JobRecord | None = await self._submit("get", (job_id,), wait=True)
        return record

    async def list_jobs(
        self,
        *,
        function_name: str | None = None,
        status: str | None = None,
        source: str | None = None,
        sync: bool | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        offset: int = 0,
        limit: int = 20,
        newest_first: bool = True,
        bodies: bool = False,
    ) -> JobPage:
        """Jobs matching every filter given (``created_*`` inclusive, epoch seconds), in
        acceptance order or its reverse, paged. ``bodies`` loads params, result and log."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must not be negative")
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("function_name = ?", function_name),
            ("status = ?", status),
            ("source = ?", source),
            ("sync = ?", sync),
            ("created_at >= ?", created_from),
            ("created_at <= ?", created_to),
        ):
            if value is not None:
                where.append(column)
                args.append(value)
        query = (" WHERE " + " AND ".join(where)) if where else ""
        order = "DESC" if newest_first else "ASC"
        page: JobPage = await self._submit(
            "list", (query, tuple(args), order, offset, limit, bodies), wait=True
        )
        return page

    async def recover(self) -> list[JobRecord]:
        """At start-up, before new jobs: the async jobs the file still has waiting or
        executing, in acceptance order, to be run again. Those that were executing are set
        back to waiting and marked ``rerun``. Sync jobs are finished as failed (their callers
        are gone) and not returned."""
        jobs: list[JobRecord]
        ended: list[str]
        jobs, ended = await self._submit("recover", (), wait=True)
        for job_id in ended:
            entry = self._active.pop(job_id, None)
            if entry is not None and entry[0] == EXECUTING:
                self._executing -= 1
        for job in jobs:
            entry = self._active.get(job.id)
            if entry is not None and entry[0] == EXECUTING:
                self._active[job.id] = (WAITING, entry[1])
                self._executing -= 1
        return jobs

    # ---- users and sessions: read from memory, written through ----

    def user(self, user_id: int) -> UserRecord | None:
        return self._users.get(user_id)

    def users(self) -> list[UserRecord]:
        """Every user, in id order (the order they were made)."""
        return [self._users[user_id] for user_id in sorted(self._users)]

    def user_by_login(self, kind: LoginKind, value: str) -> UserRecord | None:
        """The user registered with that (already normalised) username, email or phone."""
        user_id = self._by_login.get((kind, value))
        return None if user_id is None else self._users.get(user_id)

    def new_user_id(self) -> int:
        """A user id never handed out before, in this file."""
        user_id = self._next_user_id
        self._next_user_id += 1
        return user_id

    async def add_user(self, user: UserRecord) -> None:
        """Store a new user, committed before this returns. ValueError if the id or a login
        is taken (checked before anything is written)."""
        await self._submit("add_user", (user,), wait=True, before=self._user_adder(user))

    def add_user_nowait(self, user: UserRecord) -> None:
        """:meth:`add_user` for synchronous callers (the Python API): in memory at once,
        committed on the next turn of the loop."""
        self._submit_nowait("add_user", (user,), self._user_adder(user))

    def _user_adder(self, user: UserRecord) -> Callable[[], None]:
        logins = [(k, v) for k, v in _logins(user) if v is not None]

        def record() -> None:
            if user.id in self._users:
                raise ValueError(f"user {user.id} already exists")
            for key in logins:
                if key in self._by_login:
                    raise ValueError(f"{key[0]} {key[1]!r} is already registered")
            self._users[user.id] = user
            for key in logins:
                self._by_login[key] = user.id
            self._next_user_id = max(self._next_user_id, user.id + 1)

        return record

    async def update_profile(self, user_id: int, profile: Mapping[str, Any]) -> None:
        """Replace a user's profile (KeyError for an unknown user)."""
        profile_json = _to_json(dict(profile))

        def record() -> None:
            self._users[user_id] = attrs.evolve(self._users[user_id], profile=dict(profile))

        await self._submit("profile", (user_id, profile_json), wait=True, before=record)

    def session(self, token: str) -> tuple[int, float] | None:
        """``(user id, expires_at)`` of a session token, expired or not; None if unknown."""
        return self._sessions.get(token_digest(token))

    async def add_session(self, token: str, user_id: int, expires_at: float) -> None:
        digest = token_digest(token)

        def record() -> None:
            self._sessions[digest] = (user_id, expires_at)

        await self._submit("add_session", (digest, user_id, expires_at), wait=True, before=record)

    async def remove_session(self, token: str) -> None:
        digest = token_digest(token)

        def record() -> None:
            self._sessions.pop(digest, None)

        await self._submit("remove_session", (digest,), wait=True, before=record)

    # ---- Open API OAuth grants ----

    async def add_code(self, code: str, expires_at: float) -> None:
        digest = token_digest(code)

        def record() -> None:
            self._codes[digest] = expires_at

        await self._submit("add_code", (digest, expires_at), wait=True, before=record)

    async def take_code(self, code: str) -> float | None:
        """The code's expiry, removing it (a code works once); None if unknown or used."""
        digest = token_digest(code)
        taken: list[float] = []

        def record() -> None:
            expires_at = self._codes.pop(digest, None)
            if expires_at is None:
                raise _Nothing
            taken.append(expires_at)

        await self._submit("take_code", (digest,), wait=True, before=record)
        return taken[0] if taken else None

    async def add_token_pair(
        self, access: str, refresh: str, *, access_expires_at: float, refresh_expires_at: float
    ) -> None:
        a, r = token_digest(access), token_digest(refresh)

        def record() -> None:
            self._tokens[a] = ("access", r, access_expires_at)
            self._tokens[r] = ("refresh", a, refresh_expires_at)

        args = (a, r, access_expires_at, refresh_expires_at)
        await self._submit("add_pair", args, wait=True, before=record)

    def access_expiry(self, access_token: str) -> float | None:
        """When an access token expires (epoch seconds); None if unknown or revoked."""
        entry = self._tokens.get(token_digest(access_token))
        return entry[2] if entry is not None and entry[0] == "access" else None

    async def take_refresh(self, refresh_token: str) -> float | None:
        """The refresh token's expiry, removing it and its access token; None if unknown."""
        digest = token_digest(refresh_token)
        args: list[bytes] = [digest]
        taken: list[float] = []

        def record() -> None:
            entry = self._tokens.get(digest)
            if entry is None or entry[0] != "refresh":
                raise _Nothing
            del self._tokens[digest]
            self._tokens.pop(entry[1], None)
            args.append(entry[1])
            taken.append(entry[2])

        await self._submit("take_pair", args, wait=True, before=record)
        return taken[0] if taken else None

    async def expire_all(self, *, at: float = float("-inf")) -> None:
        """Every session and access token expires at *at* (for tests)."""
        await self._submit("expire_all", (at,), wait=True, before=self._expirer(at))

    def expire_all_nowait(self, *, at: float = float("-inf")) -> None:
        """:meth:`expire_all` for synchronous callers: in memory at once, committed soon."""
        self._submit_nowait("expire_all", (at,), self._expirer(at))

    def _expirer(self, at: float) -> Callable[[], None]:
        def record() -> None:
            self._sessions = {d: (uid, min(exp, at)) for d, (uid, exp) in self._sessions.items()}
            self._tokens = {
                d: (kind, partner, min(exp, at) if kind == "access" else exp)
                for d, (kind, partner, exp) in self._tokens.items()
            }

        return record

    async def prune_expired(self, now: float | None = None) -> None:
        """Forget sessions, codes and tokens that expired before *now* (epoch seconds).
        Linear in their number: call it now and then, not per request."""
        cutoff = time.time() if now is None else now

        def record() -> None:
            self._sessions = {d: e for d, e in self._sessions.items() if e[1] > cutoff}
            self._codes = {d: e for d, e in self._codes.items() if e > cutoff}
            self._tokens = {d: e for d, e in self._tokens.items() if e[2] > cutoff}

        await self._submit("prune_expired", (cutoff,), wait=True, before=record)

    # ---- the loop side of the writer ----

    async def _submit(
        self,
        op: str,
        args: Sequence[Any],
        before: Callable[[], None] | None = None,
        *,
        wait: bool,
    ) -> Any:
        """Queue one request once there is room (see :meth:`_queue`) and, with *wait*, return
        its result once committed."""
        future = await self._queue(op, args, before)
        if future is None:
            return None
        if not wait:
            future.add_done_callback(self._log_failure)
            return None
        return await future

    async def _queue(
        self, op: str, args: Sequence[Any], before: Callable[[], None] | None = None
    ) -> asyncio.Future[Any] | None:
        """Queue one request once there is room; its future, None if skipped. *before* runs
        just before it is queued, with no await in between, so memory changes only for
        requests really queued (not for one cancelled while it waited for room); raising
        _Nothing there skips it."""
        if self._closing:
            raise RuntimeError(f"the state store {self.path!r} is closed")
        await self._room.acquire()  # no suspension while there is room
        try:
            if self._closing:  # closed while this waited for room: the writer is gone
                raise RuntimeError(f"the state store {self.path!r} is closed")
            if before is not None:
                before()
        except _Nothing:
            self._room.release()
            return None
        except BaseException:
            self._room.release()
            raise
        assert self._loop is not None
        if not self._outbox:
            self._loop.call_soon(self._hand_over)
        # Every request that took room carries a future (the writer counts room by them),
        # also when nobody awaits it; a failure is then logged.
        future: asyncio.Future[Any] = self._loop.create_future()
        self._outbox.append((op, tuple(args), future))
        self._outbox_urgent = True
        return future

    def _log_failure(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.error("state store %s: a write failed: %s", self.path, future.exception())

    def _submit_nowait(
        self, op: str, args: Sequence[Any], before: Callable[[], None] | None
    ) -> None:
        """Queue one request without waiting and without taking room (the callers' own
        bounds limit these: jobs running, the Python API). A batch of only such requests
        that all succeed costs no wake-up of the loop."""
        if self._closing:
            raise RuntimeError(f"the state store {self.path!r} is closed")
        if before is not None:
            before()
        assert self._loop is not None
        if not self._outbox:
            self._loop.call_soon(self._hand_over)
        self._outbox.append((op, tuple(args), None))

    def _hand_over(self) -> None:
        outbox = self._outbox
        if not outbox:
            return
        urgent = self._outbox_urgent
        self._outbox = []
        self._outbox_urgent = False
        with self._mutex:
            pending = self._pending
            pending += outbox
            self._pending_urgent = self._pending_urgent or urgent
            state = self._writer_state
            if state == _IDLE or (
                state == _LINGERING and (urgent or len(pending) >= self.bounds.max_batch)
            ):
                self._writer_state = _WRITING
                self._bell.put(None)  # under the mutex: a ring the writer sees is in the bell

    def _batch_done(self, outcomes: list[_Outcome], queued: int) -> None:
        """On the loop: hand out one batch's results and make room for *queued* requests."""
        for future, value, failed, accepted in outcomes:
            if failed and accepted is not None:
                entry = self._active.pop(accepted, None)  # the record was never written
                if entry is not None and entry[0] == EXECUTING:
                    self._executing -= 1
            if future is None:
                if failed:
                    logger.error("state store %s: a write failed: %s", self.path, value)
            elif not future.done():  # the awaiting caller may have been cancelled
                if failed:
                    future.set_exception(value)
                else:
                    future.set_result(value)
        self._room.release(queued)

    def _post(self, outcomes: list[_Outcome], queued: int = 0) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            self._loop.call_soon_threadsafe(self._batch_done, outcomes, queued)

    # ---- the writer thread ----

    def _writer(
        self,
        ready: asyncio.Future[None],
        durability: Durability,
        busy_timeout: float,
        on_statement: Callable[[str], None] | None,
    ) -> None:
        try:
            conn = self._connect(durability, busy_timeout)
            self._load(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the opener
            self._unlock()
            self._post([(ready, exc, True, None)])
            return
        if on_statement is not None:
            conn.set_trace_callback(on_statement)
        self._post([(ready, None, False, None)])
        stopping = False
        stop: asyncio.Future[Any] | None = None  # None: a stop nobody waits for
        while not stopping:
            batch = self._take_batch()
            outcomes: list[_Outcome] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                records: list[tuple[tuple[Any, ...], asyncio.Future[Any] | None]] = []
                for op, args, future in batch:
                    if op == "record":  # written together, before the next other request
                        records.append((args, future))
                        continue
                    if records:
                        self._insert_records(conn, records, outcomes)
                        records = []
                    if op == _STOP:
                        stopping, stop = True, future
                        continue
                    accepted = args[0] if op == "accept" else None
                    try:
                        outcomes.append((future, self._apply(conn, op, args), False, accepted))
                    except Exception as exc:  # noqa: BLE001 - that request fails, not the batch
                        outcomes.append((future, self._error(exc), True, accepted))
                if records:
                    self._insert_records(conn, records, outcomes)
                self._prune_jobs(conn)
                conn.execute("COMMIT")
            except Exception as exc:  # noqa: BLE001 - the writer must outlive a failed batch
                error = self._error(exc)
                outcomes = [
                    (future, error, True, args[0] if op == "accept" else None)
                    for op, args, future in batch
                    if op != _STOP
                ]
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                self._reload_counters(conn)
            # Room is counted by the requests that carry a future; a batch of only
            # no-wait requests that all landed needs no word back to the loop.
            counted = sum(1 for outcome in outcomes if outcome[0] is not None)
            if counted or any(outcome[2] for outcome in outcomes):
                self._post(outcomes, counted)
        conn.close()
        self._unlock()
        self._post([(stop, None, False, None)])

    def _insert_records(
        self,
        conn: sqlite3.Connection,
        records: list[tuple[tuple[Any, ...], asyncio.Future[Any] | None]],
        outcomes: list[_Outcome],
    ) -> None:
        """Write ended jobs ("record" requests) with one multi-row INSERT per
        ``_ROWS_PER_INSERT``: SQLite runs it in one step, so the writer hands the GIL back
        once per statement, not once per row. A statement that fails has changed nothing
        (SQLite undoes it whole): its rows are then written one by one, so only the bad one
        fails, as if each had been written alone. Outcomes are added for the requests that
        carry a future and for failures (a silent success needs no word back)."""
        for start in range(0, len(records), _ROWS_PER_INSERT):
            chunk = records[start : start + _ROWS_PER_INSERT]
            try:
                conn.execute(_records_insert(len(chunk)), [v for row, _ in chunk for v in row])
            except Exception:  # noqa: BLE001 - find the failing row below
                for row, future in chunk:
                    try:
                        self._apply(conn, "record", row)
                    except Exception as exc:  # noqa: BLE001 - that request fails, not the batch
                        outcomes.append((future, self._error(exc), True, None))
                    else:
                        if future is not None:
                            outcomes.append((future, None, False, None))
                continue
            self._finished += len(chunk)
            self._finished_bytes += sum(row[-1] for row, _ in chunk)
            outcomes.extend(
                (future, None, False, None) for _, future in chunk if future is not None
            )

    def _take_batch(self) -> list[_Op]:
        """On the writer: wait for requests and take the next batch. A batch that nobody
        waits for (sync calls' records, job starts and ends) waits ``_LINGER`` seconds for
        more, so a steady stream of sync calls costs one commit per many calls, not one
        each; a request someone awaits (or a full batch) ends the wait. Only those ring the
        bell meanwhile: the writer wakes about twice per batch, not once per hand-over."""
        max_batch = self.bounds.max_batch
        with self._mutex:
            idle = not self._pending
            self._writer_state = _IDLE if idle else _WRITING
        if idle:
            self._bell.get()  # the ringer set _WRITING
        with self._mutex:
            linger = not self._pending_urgent and len(self._pending) < max_batch
            if linger:
                self._writer_state = _LINGERING
        if linger:
            try:
                self._bell.get(timeout=_LINGER)
            except queue.Empty:
                with self._mutex:
                    rung = self._writer_state != _LINGERING  # rung as the wait ended
                    self._writer_state = _WRITING
                if rung:
                    self._bell.get()  # put under the mutex, so already there
        with self._mutex:
            batch = self._pending
            if len(batch) > max_batch:
                self._pending = batch[max_batch:]
                batch = batch[:max_batch]
                self._pending_urgent = any(f is not None for _, _, f in self._pending)
            else:
                self._pending = []
                self._pending_urgent = False
            self._writer_state = _WRITING
        return batch

    def _lock(self) -> None:
        """Hold an flock on ``<file>.lock`` while open: one engine per state file. (SQLite's
        own locks cannot say this: the data tables open a second connection to the file.)"""
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot open the state file's lock {lock_path!r} ({exc.strerror}); check that "
                "its folder is writable, or choose another file with --state PATH"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"state file {self.path!r} is in use by another engine (its lock "
                f"{lock_path!r} is held); stop that engine or choose another file with "
                "--state PATH"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _connect(self, durability: Durability, busy_timeout: float) -> sqlite3.Connection:
        where = self.path
        if where != ":memory:":
            try:
                Path(where).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder for the state file {where!r} ({exc.strerror}); "
                    "choose another place with --state PATH, or --state :memory:"
                ) from None
            self._lock()
        try:
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(self._advice(exc)) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode not in ("wal", "memory"):
                raise StoreError(f"state file {where!r}: cannot switch it to WAL mode ({mode})")
            conn.execute(f"PRAGMA synchronous = {durability.upper()}")
            conn.execute("PRAGMA foreign_keys = OFF")
            # KiB: the indexes of 100,000 jobs stay in memory, yet bodies written (params,
            # results) do not pile up in the engine's memory.
            conn.execute("PRAGMA cache_size = -16384")
            conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, not at first write
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"state file {where!r} was written by a newer minapp_async "
                    f"(schema {version}, this one reads up to {SCHEMA_VERSION}); upgrade "
                    "minapp_async, or choose another file with --state PATH"
                )
            for step in range(version, SCHEMA_VERSION):
                _run_script(conn, _MIGRATIONS[step])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(self._advice(exc)) from None
        return conn

    def _advice(self, exc: sqlite3.Error) -> str:
        where, text = self.path, str(exc)
        if "not a database" in text or "malformed" in text:
            return (
                f"state file {where!r} is not a minapp_async state database or is damaged "
                f"({text}); move it aside or delete it to start with empty state, or choose "
                "another file with --state PATH"
            )
        if "locked" in text or "busy" in text:
            return (
                f"state file {where!r} is in use by another engine ({text}); stop that engine "
                "or choose another file with --state PATH"
            )
        return (
            f"cannot open the state file {where!r} for writing ({text}); check that its folder "
            "exists and is writable, or choose another file with --state PATH, or --state :memory:"
        )

    def _error(self, exc: Exception) -> StoreError:
        text = str(exc) if isinstance(exc, sqlite3.Error) else repr(exc)
        if "full" in text or "disk" in text or "readonly" in text or "I/O" in text:
            return StoreError(
                f"state file {self.path!r}: write failed ({text}); free disk space "
                "or fix the file's permissions"
            )
        return StoreError(f"state file {self.path!r}: {text}")

    def _load(self, conn: sqlite3.Connection) -> None:
        """Read what is served from memory, and the counters, once at open."""
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM oauth_codes WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM oauth_tokens WHERE expires_at <= ?", (now,))
        conn.execute("COMMIT")
        for row in conn.execute(
            "SELECT id, kind, created_at, anonymous, username, email, phone, salt, "
            "password_hash, profile FROM users"
        ):
            user = UserRecord(
                id=row[0],
                kind=row[1],
                created_at=row[2],
                anonymous=bool(row[3]),
                username=row[4],
                email=row[5],
                phone=row[6],
                salt=row[7],
                password_hash=row[8],
                profile=json.loads(row[9]),
            )
            self._users[user.id] = user
            for key in _logins(user):
                if key[1] is not None:
                    self._by_login[(key[0], key[1])] = user.id
        if self._users:
            self._next_user_id = max(self._users) + 1
        self._sessions = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT token_hash, user_id, expires_at FROM sessions")
        }
        self._codes = dict(conn.execute("SELECT code_hash, expires_at FROM oauth_codes"))
        self._tokens = {
            row[0]: (row[1], row[2], row[3])
            for row in conn.execute(
                "SELECT token_hash, kind, partner_hash, expires_at FROM oauth_tokens"
            )
        }
        self._active = {
            row[0]: (row[1], row[2])
            for row in conn.execute(
                "SELECT id, status, length(params) FROM jobs WHERE finished_at IS NULL ORDER BY seq"
            )
        }
        self._executing = sum(1 for status, _ in self._active.values() if status == EXECUTING)
        self._reload_counters(conn)

    def _reload_counters(self, conn: sqlite3.Connection) -> None:
        # At open, and after a rolled-back batch (whose finishes were counted): one query.
        with contextlib.suppress(sqlite3.Error):
            count, size = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM jobs WHERE finished_at IS NOT NULL"
            ).fetchone()
            self._finished, self._finished_bytes = count, size

    def _apply(self, conn: sqlite3.Connection, op: str, args: tuple[Any, ...]) -> Any:
        if op == "accept":
            conn.execute(
                "INSERT INTO jobs (id, function_name, sync, source, request_id, user_id, "
                "params, created_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting')",
                args,
            )
        elif op == "record":
            conn.execute(_records_insert(1), args)
            self._finished += 1
            self._finished_bytes += args[-1]
        elif op == "start":
            conn.execute(
                "UPDATE jobs SET status = 'executing', started_at = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (args[1], args[0]),
            )
        elif op == "finish":
            job_id, status, result, log, error_msg, exec_ms, mem, ended, size = args
            updated = conn.execute(
                "UPDATE jobs SET status = ?, result = ?, log = ?, error_msg = ?, "
                "execution_time_ms = ?, mem_usage = ?, finished_at = ?, size = ? "
                "WHERE id = ? AND finished_at IS NULL",
                (status, result, log, error_msg, exec_ms, mem, ended, size, job_id),
            ).rowcount
            if updated:
                self._finished += 1
                self._finished_bytes += size
        elif op == "get":
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS}{_BODY_COLUMNS} FROM jobs WHERE id = ?", args
            ).fetchone()
            return None if row is None else _job(row, bodies=True)
        elif op == "list":
            self._prune_jobs(conn)  # a list sees the bounds kept, also mid-batch
            query, params, order, offset, limit, bodies = args
            total = conn.execute(f"SELECT count(*) FROM jobs{query}", params).fetchone()[0]
            columns = _JOB_COLUMNS + (_BODY_COLUMNS if bodies else "")
            rows = conn.execute(
                f"SELECT {columns} FROM jobs{query} ORDER BY seq {order} LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return JobPage(total, [_job(row, bodies=bodies) for row in rows])
        elif op == "recover":
            return self._recover(conn)
        elif op == "add_user":
            user: UserRecord = args[0]
            conn.execute(
                "INSERT INTO users (id, kind, username, email, phone, salt, password_hash, "
                "anonymous, created_at, profile) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.id,
                    user.kind,
                    user.username,
                    user.email,
                    user.phone,
                    user.salt,
                    user.password_hash,
                    user.anonymous,
                    user.created_at,
                    _to_json(dict(user.profile)),
                ),
            )
        elif op == "profile":
            conn.execute("UPDATE users SET profile = ? WHERE id = ?", (args[1], args[0]))
        elif op == "add_session":
            conn.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)", args)
        elif op == "remove_session":
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", args)
        elif op == "add_code":
            conn.execute("INSERT OR REPLACE INTO oauth_codes VALUES (?, ?)", args)
        elif op == "take_code":
            conn.execute("DELETE FROM oauth_codes WHERE code_hash = ?", args)
        elif op == "add_pair":
            access, refresh, access_exp, refresh_exp = args
            conn.execute(
                "INSERT OR REPLACE INTO oauth_tokens VALUES (?, 'access', ?, ?), "
                "(?, 'refresh', ?, ?)",
                (access, refresh, access_exp, refresh, access, refresh_exp),
            )
        elif op == "take_pair":
            conn.execute("DELETE FROM oauth_tokens WHERE token_hash IN (?, ?)", args)
        elif op == "expire_all":
            conn.execute("UPDATE sessions SET expires_at = min(expires_at, ?)", args)
            conn.execute(
                "UPDATE oauth_tokens SET expires_at = min(expires_at, ?) WHERE kind = 'access'",
                args,
            )
        elif op == "prune_expired":
            for table in ("sessions", "oauth_codes", "oauth_tokens"):
                conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", args)
        elif op != "noop":
            raise AssertionError(f"unknown store operation {op!r}")
        return None

    def _recover(self, conn: sqlite3.Connection) -> tuple[list[JobRecord], list[str]]:
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS}{_BODY_COLUMNS} FROM jobs WHERE finished_at IS NULL ORDER BY seq"
        ).fetchall()
        now = time.time()
        jobs: list[JobRecord] = []
        ended: list[str] = []
        for row in rows:
            job = _job(row, bodies=True)
            if job.sync:
                ended.append(job.id)
                was_waiting = job.status == WAITING
                self._apply(
                    conn,
                    "finish",
                    (
                        job.id,
                        "execution_rejected" if was_waiting else "execution_failed",
                        None,
                        b"",
                        "the engine stopped before the call finished",
                        0.0,
                        0,
                        now,
                        len(_to_json(job.params)),
                    ),
                )
                continue
            if job.status == EXECUTING:
                conn.execute(
                    "UPDATE jobs SET status = 'waiting', rerun = 1, error_msg = ? WHERE seq = ?",
                    (_RERUN_NOTE, job.seq),
                )
                job = attrs.evolve(job, status=WAITING, rerun=True, error_msg=_RERUN_NOTE)
            jobs.append(job)
        return jobs, ended

    def _prune_jobs(self, conn: sqlite3.Connection) -> None:
        """Drop the oldest finished records while over a bound; O(records dropped)."""
        bounds = self.bounds
        while self._finished > bounds.max_finished or (
            self._finished_bytes > bounds.max_finished_bytes and self._finished > 0
        ):
            excess = max(self._finished - bounds.max_finished, 1)
            rows = conn.execute(
                "SELECT seq, size FROM jobs WHERE finished_at IS NOT NULL ORDER BY seq LIMIT ?",
                (min(excess, 500),),
            ).fetchall()
            if not rows:
                return
            if self._finished <= bounds.max_finished:
                # Over in bytes only: drop just enough of the oldest.
                over, keep = self._finished_bytes - bounds.max_finished_bytes, []
                for seq, size in rows:
                    keep.append((seq, size))
                    over -= size
                    if over <= 0:
                        break
                rows = keep
            conn.execute(
                f"DELETE FROM jobs WHERE seq IN ({','.join('?' * len(rows))})",
                [seq for seq, _ in rows],
            )
            self._finished -= len(rows)
            self._finished_bytes -= sum(size for _, size in rows)


_OPEN_TOKEN: Final = object()
#: Rows per multi-row INSERT of ended jobs: 50 x 18 values stays under 999, the bound on
#: a statement's parameters of SQLite before 3.32.
_ROWS_PER_INSERT: Final = 50
_RECORD_INSERT: Final = (
    "INSERT INTO jobs (id, function_name, sync, source, request_id, user_id, params, status, "
    "created_at, started_at, finished_at, attempts, result, log, error_msg, execution_time_ms, "
    "mem_usage, size) VALUES "
)
_RECORD_VALUES: Final = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


@functools.cache
def _records_insert(rows: int) -> str:
    """The INSERT of *rows* ended jobs (at most ``_ROWS_PER_INSERT`` distinct texts, each
    prepared once by the connection's statement cache)."""
    return _RECORD_INSERT + ", ".join([_RECORD_VALUES] * rows)


#: How long the writer holds a batch of no-wait writes for more (seconds).
_LINGER: Final = 0.02
# The writer's states, as the loop sees them when it hands requests over.
_WRITING: Final = 0  # writing, or about to look at _pending: no ring needed
_IDLE: Final = 1  # waiting for any request
_LINGERING: Final = 2  # holding a batch nobody waits for, for more


class _Room:
    """Room in the writer's queue: a counting semaphore that frees a whole batch at once."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1  # the common case: no suspension
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(1)  # handed room just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self, count: int = 1) -> None:
        self._free += count
        while self._free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._free -= 1
                waiter.set_result(None)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first; run the statements inside the open transaction.
    for statement in script.split(";"):
        lines = [line.split("--", 1)[0] for line in statement.splitlines()]
        sql = "\n".join(lines).strip()
        if sql:
            conn.execute(sql)


def _logins(user: UserRecord) -> Sequence[tuple[str, str | None]]:
    return (("username", user.username), ("email", user.email), ("phone", user.phone))


def _job(row: Sequence[Any], *, bodies: bool) -> JobRecord:
    params: Any = None
    result: Any = None
    log = ""
    if bodies:
        params = json.loads(row[16])
        result = None if row[17] is None else json.loads(row[17])
        log = bytes(row[18]).decode("utf-8", "replace")
    return JobRecord(
        id=row[0],
        function_name=row[1],
        sync=bool(row[2]),
        source=row[3],
        request_id=row[4],
        user_id=row[5],
        status=row[6],
        created_at=row[7],
        started_at=row[8],
        finished_at=row[9],
        attempts=row[10],
        rerun=bool(row[11]),
        error_msg=row[12],
        execution_time_ms=row[13],
        mem_usage=row[14],
        seq=row[15],
        params=params,
        result=result,
        log=log,
    )
