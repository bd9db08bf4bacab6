"""A small Open API client for the management commands (``functions``, ``timers``): the OAuth
code flow for an access token, then JSON requests with ``Authorization: Bearer``.

Plain ``aiohttp`` client calls, no Session: these are one-off admin requests whose replies
(201, 202, 204 without a body) the invoke machinery is not built for. No engine import.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from .._constants import OPEN_API_HOST
from .._protocol import ACCESS_TOKEN_PATH, AUTHORIZE_PATH, ENV_ID_HEADER, ERROR_MSG_FIELD
from ._options import AppSettings

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["OpenApiClient", "OpenApiError"]

#: One admin request, login included, must answer within this (a deploy is a small upload).
REQUEST_TIMEOUT: Final = 30.0


class OpenApiError(Exception):
    """A request failed: the HTTP status (0: no reply) and the server's error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class OpenApiClient:
    """``async with OpenApiClient(settings) as api: await api.request(...)``."""

    def __init__(self, settings: AppSettings) -> None:
        if settings.client_secret is None:
            raise ValueError("the Open API needs the app's client secret")
        self._settings = settings
        self._base = (settings.base_url or OPEN_API_HOST).rstrip("/")
        self._token: str | None = None
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<OpenApiClient {self._base!r} client_id={self._settings.client_id!r}>"

    async def __aenter__(self) -> Self:
        # unsafe: the authorize flow's cookie must be kept for an IP address (127.0.0.1) too.
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def _send(
        self, method: str, path: str, body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        assert self._http is not None, "use 'async with OpenApiClient(...)'"
        url = f"{self._base}/{path.lstrip('/')}"
        try:
            async with self._http.request(
                method, url, json=body, headers=headers, allow_redirects=True
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OpenApiError(0, f"{method} {url} failed: {exc or type(exc).__name__}") from None
        try:
            reply = json.loads(raw) if raw.strip() else None
        except ValueError:
            reply = raw.decode("utf-8", "replace")
        if status >= 400:
            message = reply.get(ERROR_MSG_FIELD) if isinstance(reply, dict) else None
            raise OpenApiError(status, str(message or reply or f"{method} {path} failed"))
        return status, reply

    async def _access_token(self) -> str:
        if self._token is None:
            settings = self._settings
            creds = {"client_id": settings.client_id, "client_secret": settings.client_secret}
            _, reply = await self._send("POST", AUTHORIZE_PATH, creds, {})
            code = reply.get("code") if isinstance(reply, dict) else None
            if not isinstance(code, str):
                raise OpenApiError(0, "the authorize reply has no code")
            grant = {**creds, "grant_type": "authorization_code", "code": code}
            _, reply = await self._send("POST", ACCESS_TOKEN_PATH, grant, {})
            token = reply.get("access_token") if isinstance(reply, dict) else None
            if not isinstance(token, str):
                raise OpenApiError(0, "the access_token reply has no access_token")
            self._token = token
        return self._token

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One authenticated request: its status and JSON reply (None for an empty body)."""
        headers = {"Authorization": f"Bearer {await self._access_token()}"}
        if self._settings.env_id is not None:
            headers[ENV_ID_HEADER] = self._settings.env_id
        return await self._send(method, path, body, headers)
