"""Users, login sessions, and the Open API's OAuth codes and tokens, all in memory."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import secrets
import string
import time
from collections.abc import Callable
from typing import Any, Final

import attrs

from .._protocol import SERVER_AUTH_SCHEME, LoginKind

INVALID_LOGIN: Final = "Invalid username/email or password."
#: Lifetime of an OAuth authorization code (PROTOCOL.md §6.1: about 10 minutes).
CODE_TTL: Final = 600
#: The authorize flow's cookie must come back within this many seconds.
AUTHORIZE_STATE_TTL: Final = 60
#: Refresh tokens outlive access tokens; the platform does not document their lifetime.
REFRESH_TOKEN_TTL_FACTOR: Final = 2

_TOKEN_ALPHABET: Final = string.ascii_lowercase + string.digits
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9]{5,20}")
_PBKDF2_ROUNDS: Final = 10_000  # a local emulator: enough to not keep passwords in clear


class AccountError(Exception):
    """A request about accounts or tokens was refused; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def user_token() -> str:
    """A user session token: 32 lowercase alphanumerics, like the platform's."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(32))


def _utf8(text: str) -> bytes:
    # JSON bodies may hold lone surrogates ("\ud800") and headers undecodable bytes; both
    # must compare unequal, not crash the request.
    return text.encode("utf-8", "surrogatepass")


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", _utf8(password), salt, _PBKDF2_ROUNDS)


@attrs.define
class User:
    """One app user. Anonymous users have no identifiers and no password."""

    id: int
    created_at: int
    anonymous: bool = False
    username: str | None = None
    email: str | None = None
    phone: str | None = None
    _salt: bytes = attrs.field(default=b"", repr=False)
    _password_hash: bytes = attrs.field(default=b"", repr=False)

    def check_password(self, password: str) -> bool:
        if not self._password_hash:
            return False
        return hmac.compare_digest(self._password_hash, _hash_password(password, self._salt))

    def public(self) -> dict[str, Any]:
        """The user object as ``/hserve/v2.5/user/info/`` and the logins return it."""
        return {
            "id": self.id,
            "_username": self.username,
            "_email": self.email,
            "_email_verified": False,
            "_phone": self.phone,
            "_phone_verified": False,
            "_provider": {},
            "_anonymous": self.anonymous,
            "nickname": self.username or "",
            "avatar": "",
            "is_authorized": not self.anonymous,
            "created_at": self.created_at,
            "created_by": self.id,
            "updated_at": self.created_at,
        }


@attrs.frozen
class TokenPair:
    """What ``/api/oauth2/access_token/`` returns."""

    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    expires_in: int

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": SERVER_AUTH_SCHEME,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": "write",
        }


@attrs.define
class _Grant:
    expires_at: float
    # For an access token: its refresh token (so a refresh can revoke both); and vice versa.
    partner: str = attrs.field(repr=False)


class Accounts:
    """The engine's identity store. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        *,
        client_id: str | None,
        client_secret: str,
        session_ttl: int,
        access_token_ttl: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self.session_ttl = session_ttl
        self.access_token_ttl = access_token_ttl
        self._clock = clock
        # Ids look like the platform's 14-digit user ids, but are predictable per engine.
        self._ids = itertools.count(91464885772601)
        self._users: dict[int, User] = {}
        self._by_login: dict[tuple[LoginKind, str], int] = {}
        self._sessions: dict[str, tuple[int, float]] = {}  # token -> (user id, expires_at)
        self._authorize_states: dict[str, tuple[int, float]] = {}  # cookie -> (step, expires)
        self._codes: dict[str, float] = {}  # code -> expires_at
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        #: Told about each new user (the engine mirrors users into the _userprofile table).
        self.on_new_user: Callable[[User], None] | None = None

    def __repr__(self) -> str:
        return f"<Accounts users={len(self._users)} sessions={len(self._sessions)}>"

    # ---- users and sessions (hserve) ----

    def create_user(
        self,
        *,
        password: str,
        username: str | None = None,
        email: str | None = None,
        phone: str | None = None,
    ) -> User:
        """Register a user; raises AccountError(400) naming the bad or duplicate field."""
        candidates: tuple[tuple[LoginKind, str | None], ...] = (
            ("username", username),
            ("email", email),
            ("phone", phone),
        )
        given = [(kind, value) for kind, value in candidates if value]
        if not given:
            raise AccountError(400, "one of username, email or phone is required")
        if not isinstance(password, str) or not password:
            raise AccountError(400, "password must be a non-empty string")
        keys: list[tuple[LoginKind, str]] = []
        for kind, value in given:
            assert value is not None
            key = _login_key(kind, value)
            if key in self._by_login:
                raise AccountError(400, f"{kind} {value!r} is already registered")
            keys.append(key)
        salt = secrets.token_bytes(16)
        user = User(
            id=next(self._ids),
            created_at=int(time.time()),
            username=username or None,
            email=email.lower() if email else None,
            phone=phone or None,
            salt=salt,
            password_hash=_hash_password(password, salt),
        )
        self._users[user.id] = user
        for key in keys:
            self._by_login[key] = user.id
        if self.on_new_user is not None:
            self.on_new_user(user)
        return user

    def users(self) -> list[User]:
        """Every user, oldest first."""
        return list(self._users.values())

    def create_anonymous_user(self) -> User:
        user = User(id=next(self._ids), created_at=int(time.time()), anonymous=True)
        self._users[user.id] = user
        if self.on_new_user is not None:
            self.on_new_user(user)
        return user

    def login(self, kind: LoginKind, identifier: object, password: object) -> User:
        """The user those credentials name; AccountError(401) if they name nobody."""
        if not isinstance(identifier, str) or not identifier:
            raise AccountError(400, f"{kind} must be a non-empty string")
        if not isinstance(password, str) or not password:
            raise AccountError(400, "password must be a non-empty string")
        try:
            key = _login_key(kind, identifier)
        except AccountError:
            raise AccountError(401, INVALID_LOGIN) from None
        user_id = self._by_login.get(key)
        user = self._users.get(user_id) if user_id is not None else None
        if user is None or not user.check_password(password):
            raise AccountError(401, INVALID_LOGIN)
        return user

    def open_session(self, user: User) -> str:
        token = user_token()
        self._sessions[token] = (user.id, self._clock() + self.session_ttl)
        return token

    def session_user(self, token: str) -> User | None:
        """The user a live session token belongs to; None if unknown, destroyed or expired."""
        entry = self._sessions.get(token)
        if entry is None:
            return None
        user_id, expires_at = entry
        if self._clock() >= expires_at:
            return None
        return self._users.get(user_id)

    def destroy_session(self, token: str) -> None:
        self._sessions.pop(token, None)

    def user(self, user_id: int) -> User | None:
        return self._users.get(user_id)

    def expire_all(self) -> None:
        """Every issued session token and access token is expired from now on (for tests)."""
        for token, (user_id, _) in self._sessions.items():
            self._sessions[token] = (user_id, float("-inf"))
        for grant in self._access.values():
            grant.expires_at = float("-inf")

    # ---- Open API OAuth (oserve) ----

    def check_client(self, client_id: object, client_secret: object) -> bool:
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            return False
        # Compare both, always, so the timing does not say which one was wrong. The secret is
        # what proves the caller is the app; the id must match only when one is pinned.
        id_ok = self.is_client_id(client_id) and bool(client_id.strip())
        secret_ok = hmac.compare_digest(_utf8(client_secret), _utf8(self._client_secret))
        return id_ok and secret_ok

    def is_client_id(self, client_id: str) -> bool:
        """Whether the engine serves *client_id*: any id, unless one is pinned."""
        if self._client_id is None:
            return True
        return hmac.compare_digest(_utf8(client_id), _utf8(self._client_id))

    def begin_authorization(self) -> str:
        """Step 1 of the authorize redirects: a state the client must send back as a cookie."""
        self._prune()
        state = secrets.token_hex(16)
        self._authorize_states[state] = (1, self._clock() + AUTHORIZE_STATE_TTL)
        return state

    def advance_authorization(self, state: str | None, step: int) -> bool:
        """Move *state* from ``step`` to ``step + 1``; False if it is not at that step."""
        entry = self._authorize_states.get(state) if state else None
        if entry is None or entry[0] != step or self._clock() >= entry[1]:
            return False
        assert state is not None
        self._authorize_states[state] = (step + 1, entry[1])
        return True

    def finish_authorization(self, state: str | None, step: int) -> str | None:
        """The authorization code, once per state; None if the state is not at *step*."""
        entry = self._authorize_states.get(state) if state else None
        if entry is None or entry[0] != step or self._clock() >= entry[1]:
            return None
        assert state is not None
        del self._authorize_states[state]
        code = secrets.token_hex(20)
        self._codes[code] = self._clock() + CODE_TTL
        return code

    def exchange_code(self, code: object) -> TokenPair:
        """Trade a code for tokens; a code works once and only until it expires."""
        if not isinstance(code, str) or not code:
            raise AccountError(400, "code is required for grant_type authorization_code")
        expires_at = self._codes.pop(code, None)
        if expires_at is None or self._clock() >= expires_at:
            raise AccountError(400, "the authorization code is invalid, used or expired")
        return self._issue_pair()

    def refresh(self, refresh_token: object) -> TokenPair:
        """New tokens for a refresh token; the old access and refresh tokens stop working."""
        if not isinstance(refresh_token, str) or not refresh_token:
            raise AccountError(400, "refresh_token is required for grant_type refresh_token")
        grant = self._refresh.pop(refresh_token, None)
        if grant is None or self._clock() >= grant.expires_at:
            raise AccountError(400, "the refresh token is invalid, used or expired")
        self._access.pop(grant.partner, None)
        return self._issue_pair()

    def access_token_valid(self, token: str) -> bool:
        grant = self._access.get(token)
        return grant is not None and self._clock() < grant.expires_at

    def _issue_pair(self) -> TokenPair:
        access, refresh = secrets.token_hex(20), secrets.token_hex(20)
        now = self._clock()
        self._access[access] = _Grant(now + self.access_token_ttl, refresh)
        self._refresh[refresh] = _Grant(
            now + self.access_token_ttl * REFRESH_TOKEN_TTL_FACTOR, access
        )
        return TokenPair(access, refresh, self.access_token_ttl)

    def _prune(self) -> None:
        # Abandoned authorize flows and codes would otherwise pile up in a long-lived engine.
        now = self._clock()
        for state in [s for s, (_, exp) in self._authorize_states.items() if now >= exp]:
            del self._authorize_states[state]
        for code in [c for c, exp in self._codes.items() if now >= exp]:
            del self._codes[code]


def _login_key(kind: LoginKind, value: str) -> tuple[LoginKind, str]:
    """The lookup key for a login identifier, validating its shape."""
    if not isinstance(value, str) or not value:
        raise AccountError(400, f"{kind} must be a non-empty string")
    if len(value) > 128:
        raise AccountError(400, f"{kind} is too long (at most 128 characters)")
    if kind == "email":
        if not _EMAIL.fullmatch(value):
            raise AccountError(400, "email is not a valid email address")
        return kind, value.lower()
    if kind == "phone" and not _PHONE.fullmatch(value):
        raise AccountError(400, "phone must be 5 to 20 digits, optionally starting with +")
    return kind, value
