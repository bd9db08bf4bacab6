"""The client API (hserve), as the JS SDK calls it: logins, the user's info, logout and the
cloud-function job route. Every request names the app in the client-id header; a logged-in
user sends ``Authorization: Hydrogen-r1 <token>`` (PROTOCOL.md §2)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from ..._protocol import (
    ANONYMOUS_LOGIN_PATH,
    CLIENT_ID_HEADER,
    CLIENT_JOB_PATH,
    LATEST_SDK_VERSION_PATH,
    LOGIN_KINDS,
    LOGIN_PATH,
    LOGOUT_PATH,
    REGISTER_PATH,
    USER_AUTH_SCHEME,
    USER_INFO_PATH,
    LoginKind,
)
from .._accounts import AccountError, Accounts, User, public_user
from ._invoking import encode_data, invoke, lookup
from ._middleware import CLIENT_JOB_ROUTE, STATE, ApiError, json_reply, safe_name
from ._parsing import json_body, sync_flag, uint

_SCHEME: Final = USER_AUTH_SCHEME.lower()  # schemes are case-insensitive (RFC 9110 §11.1)


# ---------------------------------------------------------------- who is calling


def _check_client_id(request: web.Request) -> None:
    client_id = request.headers.get(CLIENT_ID_HEADER)
    if client_id is None or not client_id.strip():
        raise ApiError(400, f"the {CLIENT_ID_HEADER} header is missing")
    if not (client_id.isascii() and client_id.isprintable()):
        raise ApiError(400, f"the {CLIENT_ID_HEADER} header must be printable ASCII text")
    if not request.app[STATE].accounts.is_client_id(client_id.strip()):
        pinned = request.app[STATE].config.client_id
        raise ApiError(
            401,
            f"the {CLIENT_ID_HEADER} header does not match this engine's client id "
            f"{pinned!r} (pinned with --client-id; leave the flag out to serve any client id)",
        )


def _user_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != _SCHEME or not token.strip():
        raise ApiError(401, f"the Authorization header must be '{USER_AUTH_SCHEME} <token>'")
    return token.strip()


def _current_user(request: web.Request) -> tuple[User, str]:
    """The logged-in caller and their token, or 401."""
    token = _user_token(request)
    if token is None:
        raise ApiError(401, f"not logged in: send Authorization: {USER_AUTH_SCHEME} <token>")
    user = request.app[STATE].accounts.session_user(token)
    if user is None:
        raise ApiError(401, "the session token is invalid or expired: log in again")
    return user, token


# ---------------------------------------------------------------- accounts


async def _anonymous_login(request: web.Request) -> web.Response:
    _check_client_id(request)
    await json_body(request)  # the SDK sends {}; still refuse garbage
    accounts = request.app[STATE].accounts
    user = await accounts.create_anonymous_user()
    token = await accounts.open_session(user)
    return json_reply(
        {"token": token, "user_id": user.id, "expires_in": accounts.session_ttl}, status=201
    )


async def _login_reply(accounts: Accounts, user: User) -> web.Response:
    token = await accounts.open_session(user)
    return json_reply(
        {
            **public_user(user),
            "token": token,
            "expires_in": accounts.session_ttl,
            "user_id": user.id,
        },
        status=201,
    )


def _login(kind: LoginKind) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def login(request: web.Request) -> web.Response:
        _check_client_id(request)
        body = await json_body(request)
        accounts = request.app[STATE].accounts
        try:
            user = accounts.login(kind, body.get(kind), body.get("password"))
        except AccountError as exc:
            raise ApiError(exc.status, exc.message) from None
        return await _login_reply(accounts, user)

    return login


def _register(kind: LoginKind) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def register(request: web.Request) -> web.Response:
        _check_client_id(request)
        body = await json_body(request)
        value, password = body.get(kind), body.get("password")
        if not isinstance(value, str) or not value:
            raise ApiError(400, f"{kind} must be a non-empty string")
        if not isinstance(password, str) or not password:
            raise ApiError(400, "password must be a non-empty string")
        accounts = request.app[STATE].accounts
        try:
            user = await accounts.create_user(password=password, **{kind: value})
        except AccountError as exc:
            raise ApiError(exc.status, exc.message) from None
        return await _login_reply(accounts, user)

    return register


async def _user_info(request: web.Request) -> web.Response:
    _check_client_id(request)
    _current_user(request)
    raw = request.match_info["user_id"]
    user_id = uint(raw)
    user = request.app[STATE].accounts.user(user_id) if user_id is not None else None
    if user is None:
        raise ApiError(404, f"user {safe_name(raw)} not found")
    return json_reply(public_user(user))


async def _destroy_session(request: web.Request) -> web.Response:
    _check_client_id(request)
    _, token = _current_user(request)
    await request.app[STATE].accounts.destroy_session(token)
    return json_reply({"message": "Destroy succeed.", "status": "ok"}, status=201)


async def _latest_sdk_version(request: web.Request) -> web.Response:
    # The WeChat build asks this once a day and reads a field named after its platform; the
    # reply's shape is undocumented. An empty object reads as "no newer version".
    return json_reply({})


# ---------------------------------------------------------------- the job route


async def _job(request: web.Request) -> web.Response:
    _check_client_id(request)
    user, _ = _current_user(request)
    if user.anonymous and not request.app[STATE].config.allow_anonymous:
        raise ApiError(
            403,
            "anonymous users may not invoke cloud functions "
            "(the engine's allow_anonymous / --allow-anonymous switch allows it)",
        )
    body = await json_body(request)
    sync = sync_flag(body)
    function = lookup(request, body.get("function_name"))
    # A missing data is passed as {} so "event.data.x" works, as in the seed's helloWorld.
    data_json = encode_data(body.get("data", {}))
    del body  # from here on the params live as JSON text only (bounded memory per job)
    return await invoke(request, function, data_json=data_json, sync=sync, source="sdk", user=user)


def add_client_api_routes(router: web.UrlDispatcher) -> None:
    """Route the client API's paths to their handlers."""
    router.add_post("/" + ANONYMOUS_LOGIN_PATH, _anonymous_login)
    kinds: tuple[LoginKind, ...] = LOGIN_KINDS
    for kind in kinds:
        router.add_post("/" + LOGIN_PATH.format(kind=kind), _login(kind))
        router.add_post("/" + REGISTER_PATH.format(kind=kind), _register(kind))
    router.add_get("/" + USER_INFO_PATH, _user_info)  # its {user_id} is the route's variable
    router.add_post("/" + LOGOUT_PATH, _destroy_session)
    router.add_post("/" + CLIENT_JOB_PATH, _job, name=CLIENT_JOB_ROUTE)
    router.add_get("/" + LATEST_SDK_VERSION_PATH, _latest_sdk_version)
