"""A thin HTTP client for the engine tests: every call is a real request over 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any, Final

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from minapp_async.engine import Engine
from minapp_async.testing import HELLO_WORLD_JS

MISSING: Final[Any] = object()
JOB: Final = "/hserve/v1/cloud-function/job/"
AUTHORIZE: Final = "/api/oauth2/hydrogen/openapi/authorize/"
ACCESS_TOKEN: Final = "/api/oauth2/access_token/"

#: Python functions run by the runtime's real Python workers; helloWorld by real Node.
FUNCTIONS: Final = {
    "helloWorld.js": HELLO_WORLD_JS,
    "echo.py": "def main(event):\n    return event\n",
    "fail.py": "def main(event):\n    raise ValueError('boom')\n",
    "sleepy.py": (
        "import time\n\n"
        "def main(event):\n"
        "    time.sleep(float(event['data']['seconds']))\n"
        "    return 'slept'\n"
    ),
    # Holds its slot until the test creates the file named in data.release (bounded wait).
    "gate.py": (
        "import os, time\n\n"
        "def main(event):\n"
        "    deadline = time.monotonic() + 30\n"
        "    while not os.path.exists(event['data']['release']):\n"
        "        if time.monotonic() > deadline:\n"
        "            raise TimeoutError('never released')\n"
        "        time.sleep(0.01)\n"
        "    return 'released'\n"
    ),
    "crash.py": "import os\n\ndef main(event):\n    os._exit(3)\n",
    "loud.py": "def main(event):\n    print('hello from loud')\n    return 1\n",
}


@attrs.frozen
class Reply:
    """One reply: status, headers, and the body (parsed JSON when it is JSON, else text)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: Any

    @property
    def error_msg(self) -> str:
        assert isinstance(self.body, dict), self.body
        assert self.body.get("status") == "error", self.body
        message = self.body["error_msg"]
        assert isinstance(message, str)
        return message


class Api:
    """Requests against one engine, without cookies (OAuth has its own cookie-jar session)."""

    def __init__(self, engine: Engine, session: aiohttp.ClientSession) -> None:
        self.engine = engine
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = MISSING,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        kwargs: dict[str, Any] = {"headers": headers or {}, "allow_redirects": False}
        if json_body is not MISSING:
            kwargs["json"] = json_body
        elif data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.engine.url + path, **kwargs) as response:
            raw = await response.read()
            return Reply(response.status, response.headers, _parse(raw))

    def hserve_headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        headers = {"X-Hydrogen-Client-ID": self.engine.client_id, **extra}
        if token is not None:
            headers["Authorization"] = f"Hydrogen-r1 {token}"
        return headers

    async def login(self, username: str = "allen", password: str = "secret-pw") -> str:
        """A fresh user's session token (the user is created through the engine's API)."""
        self.engine.create_user(username=username, password=password)
        reply = await self.request(
            "POST",
            "/hserve/v2.1/login/username/",
            json_body={"username": username, "password": password},
            headers=self.hserve_headers(),
        )
        assert reply.status == 201, reply
        token = reply.body["token"]
        assert isinstance(token, str)
        return token

    async def anonymous_token(self) -> str:
        reply = await self.request(
            "POST", "/hserve/v2.0/login/anonymous/", json_body={}, headers=self.hserve_headers()
        )
        assert reply.status == 201, reply
        token = reply.body["token"]
        assert isinstance(token, str)
        return token

    async def invoke(
        self,
        token: str | None,
        function_name: Any,
        data: Any = MISSING,
        sync: Any = MISSING,
        **headers: str,
    ) -> Reply:
        body: dict[str, Any] = {"function_name": function_name}
        if sync is not MISSING:
            body["sync"] = sync
        if data is not MISSING:
            body["data"] = data
        return await self.request(
            "POST", JOB, json_body=body, headers=self.hserve_headers(token, **headers)
        )

    async def authorization_code(self) -> str:
        """Run the authorize redirects with a cookie jar, as the platform requires."""
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: accept cookies from an IP address
        async with (
            aiohttp.ClientSession(cookie_jar=jar) as session,
            session.post(
                self.engine.url + AUTHORIZE,
                json={
                    "client_id": self.engine.client_id,
                    "client_secret": self.engine.client_secret,
                },
            ) as response,
        ):
            assert response.status == 200, await response.text()
            assert [r.status for r in response.history] == [302, 302]
            body = await response.json()
        code = body["code"]
        assert isinstance(code, str)
        return code

    async def token_pair(self) -> dict[str, Any]:
        code = await self.authorization_code()
        reply = await self.request(
            "POST",
            ACCESS_TOKEN,
            json_body={
                "client_id": self.engine.client_id,
                "client_secret": self.engine.client_secret,
                "code": code,
                "grant_type": "authorization_code",
            },
        )
        assert reply.status == 200, reply
        assert isinstance(reply.body, dict)
        return reply.body

    async def access_token(self) -> str:
        token = (await self.token_pair())["access_token"]
        assert isinstance(token, str)
        return token

    async def oserve(
        self, method: str, path: str, token: str, json_body: Any = MISSING, **headers: str
    ) -> Reply:
        return await self.request(
            method,
            path,
            json_body=json_body,
            headers={"Authorization": f"Bearer {token}", **headers},
        )


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
