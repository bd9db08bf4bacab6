"""Who the Session speaks as: a MinApp user (client API) or the app itself (Open API).

Both kinds share one contract with the Session: ``authorization()`` gives the header value for
the next request (logging in or refreshing first when needed), and ``reauthenticate(stale)``
replaces a credential the server refused. Both are single-flight: however many tasks need a
new token at once, one request is made and the others wait for it, and share its failure too
(``_Flight``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Awaitable
from typing import Any, Final, Protocol

import anyio
import attrs

from ._constants import (
    ACCESS_TOKEN_REFRESH_MARGIN,
    AUTH_COOLDOWN,
    AUTH_COOLDOWN_MAX,
    LIFETIME_MARGIN_SHARE,
    MAX_CREDENTIAL_LIFETIME,
    MIN_CREDENTIAL_USE,
    SESSION_EXPIRY_MARGIN,
)
from ._errors import (
    HError,
    HTTPError,
    InvalidArgumentError,
    ResponseFormatError,
    SessionMissingError,
)
from ._options import check_str
from ._protocol import (
    ACCESS_TOKEN_PATH,
    ANONYMOUS_LOGIN_PATH,
    AUTHORIZE_PATH,
    LOGIN_PATH,
    LOGOUT_PATH,
    REGISTER_PATH,
    SERVER_AUTH_SCHEME,
    USER_AUTH_SCHEME,
    USER_INFO_PATH,
)
from ._secrets import Secret, Secrets, secret_or_none
from ._tokens import MemoryTokenStore, StoredSession, TokenStore
from ._types import NOT_GIVEN, NotGiven

__all__ = ["Auth", "CurrentUser", "UserCredentials"]

_USER_PREFIX: Final = f"{USER_AUTH_SCHEME} "
_SERVER_PREFIX: Final = f"{SERVER_AUTH_SCHEME} "


class Exchange(Protocol):
    """How auth talks to the server: the Session's request path, minus auth itself.

    Sends *payload* as JSON (or nothing), raises ``HTTPError`` on a non-2xx reply and returns
    the reply's JSON object. *authorization* None sends no Authorization header.
    """

    def __call__(
        self,
        method: str,
        path: str,
        payload: Any,
        *,
        authorization: str | None,
        cookies: bool = False,
    ) -> Awaitable[dict[str, Any]]: ...


def _secret_if_str(value: Any) -> Any:
    """A password as a ``Secret`` (anything else is left for the check to refuse)."""
    return secret_or_none(value) or value


def _header(prefix: str, token: str) -> Secret:
    """An Authorization value, as a ``Secret``: frames that hold it show ``'***'``."""
    return Secret(f"{prefix}{token}")


def _usable_for(expires_in: Any, margin: float) -> float | None:
    """Seconds a credential living *expires_in* seconds is used: its lifetime less a margin of
    min(*margin*, 10 % of the lifetime), so a 10 s session is used for 9 s, not treated as
    already expired. None when *expires_in* is not a number."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return None
    try:
        lifetime = float(expires_in)
    except OverflowError:  # an int beyond any float: absurd, and long
        lifetime = MAX_CREDENTIAL_LIFETIME
    if math.isnan(lifetime):
        return None
    lifetime = min(lifetime, MAX_CREDENTIAL_LIFETIME)
    return lifetime - min(margin, max(lifetime, 0.0) * LIFETIME_MARGIN_SHARE)


def _expires_at(expires_in: Any, *, issued: bool) -> float | None:
    """When a user session must be renewed. The JS SDK stores floor(now) + expires_in - 30
    (PROTOCOL.md §5.3); here the margin shrinks for short sessions (``_usable_for``), and a
    session the server has just *issued* is used for at least ``MIN_CREDENTIAL_USE``."""
    usable = _usable_for(expires_in, SESSION_EXPIRY_MARGIN)
    if usable is None:
        return None
    now = time.time()
    expires_at = int(now) + usable
    return max(expires_at, now + MIN_CREDENTIAL_USE) if issued else expires_at


class _Flight:
    """Single-flight for getting a credential, failures included.

    Every task that waited for an attempt (it read ``ended`` before the attempt finished)
    gets a copy of that attempt's ``HError`` instead of sending its own request. A refusal
    (a 4xx other than 408/429: wrong password, bad client secret) also starts a cool-down:
    until it ends, new calls get the same failure without a request; 1 s, doubling with each
    refusal in a row up to 30 s, so a wrong password is not retried in a burst (nor locks the
    account). A transient failure (network, 5xx, 429) is shared with the waiters only.
    """

    __slots__ = ("_failure", "_refusals", "_until", "ended")

    def __init__(self) -> None:
        self.ended = 0  # attempts finished, with or without success
        self._failure: HError | None = None
        self._until = 0.0  # monotonic time the cool-down ends
        self._refusals = 0

    def succeeded_since(self, seen: int) -> bool:
        """An attempt ended well while the task that read *seen* waited: it takes that
        credential as it is (even one said to be over already), never a login of its own."""
        return seen != self.ended and self._failure is None

    def check(self, seen: int) -> None:
        """Raise the last attempt's failure to a task that waited for it (it read *seen*
        before the attempt ended) or that comes during the cool-down."""
        failure = self._failure
        if failure is not None and (seen != self.ended or time.monotonic() < self._until):
            raise copy.copy(failure)  # a copy: each task gets its own traceback

    def succeeded(self) -> None:
        self.ended += 1
        self._failure, self._refusals, self._until = None, 0, 0.0

    def failed(self, err: HError) -> None:
        self.ended += 1
        self._failure = copy.copy(err)
        if isinstance(err, HTTPError) and 400 <= err.code < 500 and err.code not in (408, 429):
            cooldown = min(AUTH_COOLDOWN * 2**self._refusals, AUTH_COOLDOWN_MAX)
            self._refusals += 1
            self._until = time.monotonic() + cooldown
        else:
            self._until = 0.0


@attrs.frozen
class UserCredentials:
    """A user's login, kept so that the Session can log in again when the session expires.

    Give exactly one of *username*, *email* or *phone*. The password never appears in repr.
    """

    password: str = attrs.field(repr=False, converter=_secret_if_str)
    username: str | None = None
    email: str | None = None
    phone: str | None = None

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("username", "email", "phone") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidArgumentError("give exactly one of username, email or phone")
        for name in (*given, "password"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"{name} must be a str")

    @property
    def kind(self) -> str:
        """Which login endpoint: phone first, then email, then username, as the JS SDK."""
        return "phone" if self.phone is not None else "email" if self.email else "username"

    def payload(self) -> dict[str, str]:
        """The login or register body (the password a ``Secret``: its repr is redacted)."""
        return {self.kind: getattr(self, self.kind), "password": self.password}


@attrs.frozen
class CurrentUser:
    """The logged-in user.

    Attributes:
        id: the user id.
        anonymous: a temporary anonymous user.
        expires_at: epoch seconds after which the session is treated as expired.
        info: the user object from ``/hserve/v2.5/user/info/{id}/`` (empty when not fetched).
    """

    id: int | None
    anonymous: bool
    expires_at: float | None
    info: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def expired(self) -> bool:
        """The session's expiry has passed."""
        return self.expires_at is not None and time.time() >= self.expires_at


class Auth:
    """User authentication for the client API: ``session.auth``.

    Logins follow the JS SDK: the token goes into the token store, ``expires_at`` is
    ``now + expires_in - 30 s``, and the user object is fetched after login. A Session made
    with ``credentials=`` logs in by itself when it has no session, when the session expires,
    and once when the server answers 401; without credentials an expired session raises
    ``SessionMissingError`` (604) before anything is sent.
    """

    def __init__(
        self,
        exchange: Exchange,
        *,
        store: TokenStore | None = None,
        credentials: UserCredentials | None = None,
        token: str | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        """*secrets*: where this login's secret values are kept for scrubbing (a view's own,
        made with its Session's as parent); a new one by default."""
        self._exchange = exchange
        self._store: TokenStore = store if store is not None else MemoryTokenStore()
        self._credentials = credentials
        self._initial_token = secret_or_none(token)
        self.secrets = secrets if secrets is not None else Secrets()
        self.secrets.keep(self._initial_token)
        if credentials is not None:
            self.secrets.keep(credentials.password)
        self._session: StoredSession | None = None
        self._loaded = False
        self._lock = anyio.Lock()
        self._flight = _Flight()  # the automatic logins (credentials=)
        self._info: dict[str, Any] = {}
        self._header: tuple[str, Secret] = ("", Secret())  # (token, its Authorization value)

    def __repr__(self) -> str:
        s = self._session
        who = "nobody" if s is None else f"user {s.user_id}{' (anonymous)' if s.anonymous else ''}"
        return f"<Auth {who}>"

    @property
    def can_reauthenticate(self) -> bool:
        """A refused token can be replaced without the caller (credentials were given)."""
        return self._credentials is not None

    async def _load(self) -> StoredSession | None:
        if not self._loaded:
            if self._initial_token is not None:
                self._session = StoredSession(token=self._initial_token)
                await self._store.save(self._session)
            else:
                self._session = await self._store.load()
                self.secrets.add(self._session.token if self._session else None)
            self._loaded = True
        return self._session

    async def _remember(self, session: StoredSession | None) -> None:
        self._session = session
        self._loaded = True
        self.secrets.add(session.token if session else None)
        if session is None:
            await self._store.clear()
        else:
            await self._store.save(session)

    def ready_authorization(self) -> str | None | NotGiven:
        """The Authorization header when it is known without any I/O, else NOT_GIVEN: the
        per-call fast path (``authorization()`` is the general one)."""
        session = self._session
        if not self._loaded or (session is not None and session.expired):
            return NOT_GIVEN
        if session is None:
            return None if self._credentials is None else NOT_GIVEN
        token, header = self._header
        if token is not session.token:  # made once per token: this runs for every call
            header = _header(_USER_PREFIX, session.token)
            self._header = (session.token, header)
        return header

    async def authorization(self) -> str | None:
        """The Authorization header for the next request, logging in first if credentials
        were given and there is no live session. None when there is no session at all: the
        request goes out without one, as the JS SDK does, and the server decides."""
        session = self._session if self._loaded else await self._load()
        if session is None or session.expired:
            if self._credentials is not None:
                session = await self._relogin(session.token if session else None)
            elif session is not None:
                raise SessionMissingError(
                    f"the session of user {session.user_id} expired at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(session.expires_at))}"
                    "; log in again"
                )
            else:
                return None
        return _header(_USER_PREFIX, session.token)

    async def reauthenticate(self, stale: str | None) -> None:
        """The server refused *stale* (an Authorization value): log in again, once."""
        await self._relogin(secret_or_none(stale.removeprefix(_USER_PREFIX)) if stale else None)

    async def _relogin(self, stale_token: str | None) -> StoredSession:
        flight = self._flight
        seen = flight.ended
        async with self._lock:
            current = self._session
            if (
                current is not None
                and current.token != stale_token
                and (not current.expired or flight.succeeded_since(seen))
            ):
                return current  # another task logged in while this one waited
            flight.check(seen)  # it failed while this one waited, or is cooling down
            assert self._credentials is not None
            try:
                session = await self._login(
                    LOGIN_PATH.format(kind=self._credentials.kind),
                    self._credentials.payload(),
                    fetch_info=False,
                )
            except HError as err:
                flight.failed(err)
                raise
            flight.succeeded()
            return session

    async def _login(
        self, path: str, payload: dict[str, Any], *, fetch_info: bool
    ) -> StoredSession:
        current = await self._load()
        # The JS SDK sends the old token along with a login, if one is stored (§2).
        body = await self._exchange(
            "POST",
            path,
            payload,
            authorization=_header(_USER_PREFIX, current.token) if current else None,
        )
        token, user_id = secret_or_none(body.get("token")), body.get("user_id", body.get("id"))
        expires_in = body.get("expires_in")
        del body  # it holds the token in plain text: no frame keeps it
        if token is None:
            raise ResponseFormatError(200, "login reply has no token")
        session = StoredSession(
            token=token,
            user_id=user_id if isinstance(user_id, int) else None,
            expires_at=_expires_at(expires_in, issued=True),
            anonymous="anonymous" in path,
        )
        await self._remember(session)
        self._info = {}
        if fetch_info:
            if session.user_id is None:
                raise SessionMissingError("login reply has no user_id")
            self._info = await self._exchange(
                "GET",
                USER_INFO_PATH.format(user_id=session.user_id),
                None,
                authorization=_header(_USER_PREFIX, token),
            )
        return session

    async def anonymous_login(self) -> CurrentUser:
        """Log in as a new anonymous (temporary) user."""
        return await self._explicit_login(ANONYMOUS_LOGIN_PATH, {})

    async def login(
        self,
        *,
        password: str,
        username: str | None = None,
        email: str | None = None,
        phone: str | None = None,
    ) -> CurrentUser:
        """Log in with a password and one of username, email or phone."""
        # Rebound at once: an error reporter shows this frame's locals, password included.
        password = secret_or_none(password) or password
        creds = UserCredentials(password=password, username=username, email=email, phone=phone)
        self.secrets.add(creds.password)
        return await self._explicit_login(LOGIN_PATH.format(kind=creds.kind), creds.payload())

    async def register(
        self,
        *,
        password: str,
        username: str | None = None,
        email: str | None = None,
        phone: str | None = None,
    ) -> CurrentUser:
        """Create a user and log in as it."""
        # Rebound at once: an error reporter shows this frame's locals, password included.
        password = secret_or_none(password) or password
        creds = UserCredentials(password=password, username=username, email=email, phone=phone)
        self.secrets.add(creds.password)
        return await self._explicit_login(REGISTER_PATH.format(kind=creds.kind), creds.payload())

    async def _explicit_login(self, path: str, payload: dict[str, Any]) -> CurrentUser:
        # As the JS SDK: log in, then fetch the user object to build the current user.
        async with self._lock:
            await self._login(path, payload, fetch_info=True)
        return self._current()

    async def logout(self) -> None:
        """End the session on the server and forget it here. Later requests carry no token."""
        async with self._lock:
            current = await self._load()
            try:
                if current is not None:
                    await self._exchange(
                        "POST", LOGOUT_PATH, {}, authorization=_header(_USER_PREFIX, current.token)
                    )
            finally:
                self._info = {}
                await self._remember(None)

    async def set_token(
        self,
        token: str,
        *,
        user_id: int | None = None,
        expires_in: float | None = None,
        anonymous: bool = False,
    ) -> None:
        """Use a token obtained elsewhere (another service, a web front end)."""
        token = secret_or_none(token) or token
        check_str("token", token, optional=False)  # also no CR/LF: it becomes a header
        await self._remember(
            StoredSession(
                token=token,
                user_id=user_id,
                expires_at=_expires_at(expires_in, issued=False),
                anonymous=anonymous,
            )
        )

    async def current_user(self) -> CurrentUser | None:
        """The current user, or None when nobody is logged in (it may be expired: see
        ``CurrentUser.expired``)."""
        return self._current() if await self._load() is not None else None

    async def get_current_user(self) -> CurrentUser:
        """The current user; ``SessionMissingError`` (604) when there is none or it expired,
        like the JS SDK's ``auth.getCurrentUser()``."""
        user = await self.current_user()
        if user is None or user.id is None or user.expires_at is None or user.expired:
            raise SessionMissingError()
        return user

    def _current(self) -> CurrentUser:
        s = self._session
        assert s is not None
        return CurrentUser(
            id=s.user_id, anonymous=s.anonymous, expires_at=s.expires_at, info=dict(self._info)
        )


class ServerAuth:
    """Server credentials (Open API): ``client_id`` + ``client_secret`` → access token.

    The code flow follows two 302 redirects with a cookie jar; the token is refreshed before it
    expires, and once when the server answers 401, with the refresh grant (which invalidates the
    old pair), falling back to a new code when the refresh is refused.
    """

    def __init__(self, exchange: Exchange, client_id: str, client_secret: str) -> None:
        self._exchange = exchange
        self._client_id = client_id
        self._client_secret = Secret(client_secret)
        self._access: Secret | None = None
        self._refresh: Secret | None = None
        self._header = Secret()
        self.secrets = Secrets()
        self.secrets.keep(self._client_secret)
        self._refresh_at = 0.0
        self._lock = anyio.Lock()
        self._flight = _Flight()

    def __repr__(self) -> str:
        return f"<ServerAuth client_id={self._client_id!r}>"

    can_reauthenticate = True

    def ready_authorization(self) -> str | NotGiven:
        """``Bearer <access token>`` while it needs no refresh, else NOT_GIVEN."""
        if self._access is None or time.time() >= self._refresh_at:
            return NOT_GIVEN
        return self._header

    async def authorization(self) -> str:
        """``Bearer <access token>``, fetching or refreshing the token first when needed."""
        if self._access is None or time.time() >= self._refresh_at:
            await self._renew(self._access)
        return self._header

    async def reauthenticate(self, stale: str | None) -> None:
        """The server refused *stale*: get a new token, once for all waiting tasks."""
        await self._renew(
            secret_or_none(stale.removeprefix(_SERVER_PREFIX)) if stale else None, force=True
        )

    async def _renew(self, stale: str | None, *, force: bool = False) -> None:
        flight = self._flight
        seen = flight.ended
        async with self._lock:
            if self._access is not None and self._access != stale:
                return  # renewed by another task meanwhile
            if (
                not force
                and self._access is not None
                and (time.time() < self._refresh_at or flight.succeeded_since(seen))
            ):
                return
            flight.check(seen)  # it failed while this one waited, or is cooling down
            try:
                await self._get_token()
            except HError as err:
                flight.failed(err)
                raise
            flight.succeeded()

    async def _get_token(self) -> None:
        """A new access token: the refresh grant, else the code flow."""
        if self._refresh is not None:
            try:
                await self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh})
                return
            except HError:
                self._access = self._refresh = None  # refused: start over with a code
        await self._code_flow()

    async def _code_flow(self) -> None:
        creds = {"client_id": self._client_id, "client_secret": self._client_secret}
        # No local holds the reply: it carries the code in plain text.
        code = secret_or_none(
            (
                await self._exchange(
                    "POST", AUTHORIZE_PATH, creds, authorization=None, cookies=True
                )
            ).get("code")
        )
        if code is None:
            raise ResponseFormatError(200, "authorize reply has no code")
        self.secrets.add(code)
        await self._grant({"grant_type": "authorization_code", "code": code})

    async def _grant(self, grant: dict[str, str]) -> None:
        payload = {"client_id": self._client_id, "client_secret": self._client_secret, **grant}
        reply = await self._exchange("POST", ACCESS_TOKEN_PATH, payload, authorization=None)
        access, expires_in = secret_or_none(reply.get("access_token")), reply.get("expires_in")
        refresh = secret_or_none(reply.get("refresh_token"))
        del reply  # it holds the tokens in plain text: no frame keeps it
        self.secrets.add(access)
        self.secrets.add(refresh)
        if access is None:
            raise ResponseFormatError(200, "access_token reply has no access_token")
        usable = _usable_for(expires_in, ACCESS_TOKEN_REFRESH_MARGIN)
        self._access = access
        self._header = Secret(f"{_SERVER_PREFIX}{access}")
        self._refresh = refresh
        # The same margin rule as user sessions, and the same floor against a token that
        # is said to be over as soon as it is issued.
        default = 3600.0 * (1 - LIFETIME_MARGIN_SHARE)  # no lifetime given: an hour's
        self._refresh_at = time.time() + max(
            default if usable is None else usable, MIN_CREDENTIAL_USE
        )
