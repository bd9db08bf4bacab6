"""The client API (hserve): logins, sessions, user info and invoking functions."""

from __future__ import annotations

import re

import aiohttp
import pytest
from engine_api import FUNCTIONS, JOB, Api

from minapp_async.engine import Engine
from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio


async def test_anonymous_login_returns_token_user_id_and_expiry(api: Api) -> None:
    """Anonymous login answers 201 with a 32-char lowercase alphanumeric token."""
    reply = await api.request(
        "POST", "/hserve/v2.0/login/anonymous/", json_body={}, headers=api.hserve_headers()
    )
    assert reply.status == 201
    assert set(reply.body) == {"token", "user_id", "expires_in"}
    assert re.fullmatch(r"[a-z0-9]{32}", reply.body["token"])
    assert reply.body["expires_in"] == 2592000
    info = await api.request(
        "GET",
        f"/hserve/v2.5/user/info/{reply.body['user_id']}/",
        headers=api.hserve_headers(reply.body["token"]),
    )
    assert info.status == 200
    assert info.body["_anonymous"] is True
    assert info.body["id"] == reply.body["user_id"]


@pytest.mark.parametrize(
    ("kind", "value"),
    [("username", "allen"), ("email", "Allen@Example.com"), ("phone", "+8613800138000")],
)
async def test_register_then_login_each_kind(api: Api, kind: str, value: str) -> None:
    """Register and login by username, email and phone answer 201 with the user and a token."""
    registered = await api.request(
        "POST",
        f"/hserve/v2.1/register/{kind}/",
        json_body={kind: value, "password": "pw-123"},
        headers=api.hserve_headers(),
    )
    assert registered.status == 201, registered
    logged_in = await api.request(
        "POST",
        f"/hserve/v2.1/login/{kind}/",
        json_body={kind: value, "password": "pw-123"},
        headers=api.hserve_headers(),
    )
    assert logged_in.status == 201, logged_in
    body = logged_in.body
    assert body["user_id"] == body["id"] == registered.body["id"]
    assert body["token"] != registered.body["token"]
    assert body["expires_in"] == 2592000
    assert body["_anonymous"] is False
    assert "password" not in str(body)


async def test_login_with_wrong_password_is_401(api: Api) -> None:
    """A wrong password and an unknown user both get the platform's 401 message."""
    api.engine.create_user(username="allen", password="right")
    for username, password in (("allen", "wrong"), ("nobody", "right")):
        reply = await api.request(
            "POST",
            "/hserve/v2.1/login/username/",
            json_body={"username": username, "password": password},
            headers=api.hserve_headers(),
        )
        assert reply.status == 401
        assert reply.error_msg == "Invalid username/email or password."


async def test_register_duplicate_is_400(api: Api) -> None:
    """Registering a taken username answers 400 naming the field."""
    api.engine.create_user(username="allen", password="pw")
    reply = await api.request(
        "POST",
        "/hserve/v2.1/register/username/",
        json_body={"username": "allen", "password": "pw2"},
        headers=api.hserve_headers(),
    )
    assert reply.status == 400
    assert "username" in reply.error_msg and "already registered" in reply.error_msg


async def test_register_rejects_bad_fields(api: Api) -> None:
    """Malformed emails and missing passwords are 400s naming what was wrong."""
    bad_email = await api.request(
        "POST",
        "/hserve/v2.1/register/email/",
        json_body={"email": "not-an-email", "password": "pw"},
        headers=api.hserve_headers(),
    )
    assert bad_email.status == 400
    assert "email" in bad_email.error_msg
    no_password = await api.request(
        "POST",
        "/hserve/v2.1/register/username/",
        json_body={"username": "bob"},
        headers=api.hserve_headers(),
    )
    assert no_password.status == 400
    assert "password" in no_password.error_msg


async def test_user_info_needs_a_valid_token_and_known_id(api: Api) -> None:
    """user/info is 401 without a token and 404 for an unknown user id."""
    token = await api.login()
    no_token = await api.request("GET", "/hserve/v2.5/user/info/1/", headers=api.hserve_headers())
    assert no_token.status == 401
    unknown = await api.request(
        "GET", "/hserve/v2.5/user/info/12345/", headers=api.hserve_headers(token)
    )
    assert unknown.status == 404
    assert "12345" in unknown.error_msg


async def test_session_destroy_invalidates_the_token(api: Api) -> None:
    """After logout the token no longer invokes functions."""
    token = await api.login()
    reply = await api.request(
        "POST", "/hserve/v2.0/session/destroy/", json_body={}, headers=api.hserve_headers(token)
    )
    assert reply.status == 201
    assert reply.body == {"message": "Destroy succeed.", "status": "ok"}
    after = await api.invoke(token, "helloWorld", {"name": "allen"})
    assert after.status == 401
    assert "invalid or expired" in after.error_msg


async def test_invoke_hello_world_sync(api: Api) -> None:
    """The seed's helloWorld answers the documented envelope through real Node."""
    token = await api.login()
    reply = await api.invoke(token, "helloWorld", {"name": "allen"})
    assert reply.status == 200
    assert reply.body == {"code": 0, "data": "hello allen", "error": {}}
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["X-Request-Id"])


async def test_invoke_user_code_failure_is_200_code_1(api: Api) -> None:
    """A raising function is a 200 with the code-1 envelope, not an HTTP error."""
    token = await api.login()
    reply = await api.invoke(token, "fail", {})
    assert reply.status == 200
    assert reply.body["code"] == 1
    assert reply.body["data"] is None
    assert reply.body["error"]["message"] == "boom"
    assert reply.body["error"]["type"] == "ValueError"


async def test_invoke_async_answers_ok_and_the_job_finishes(api: Api) -> None:
    """sync=false answers {"status":"ok"} at once; the job is readable once finished."""
    token = await api.login()
    reply = await api.invoke(token, "echo", {"n": 1}, sync=False)
    assert reply.status == 200
    assert reply.body == {"status": "ok"}
    (job,) = [j for j in api.engine.jobs("echo") if j.request_id == reply.headers["X-Request-Id"]]
    assert job.service_type == "batch"
    finished = await api.engine.wait_job(job.id, timeout=30)
    assert finished.status == "fulfilled"
    assert finished.result is not None
    assert finished.result["data"]["data"] == {"n": 1}
    assert finished.started_at is not None and finished.finished_at is not None


async def test_event_fields_and_no_token_in_event(api: Api) -> None:
    """The event carries the documented fields, the caller, and never the token."""
    token = await api.login(username="eve")
    reply = await api.invoke(token, "echo", {"k": [1, 2]}, **{"User-Agent": "tests/1"})
    assert reply.status == 200
    event = reply.body["data"]
    assert event["data"] == {"k": [1, 2]}
    assert event["eventType"] == "sdk"
    assert re.fullmatch(r"[0-9a-f]{32}", event["jobId"])
    assert event["miniappId"] == api.engine.config.miniapp_id
    assert event["timeLimitInMS"] == 2000
    assert event["memoryLimitInMB"] == 256
    assert event["timezone"] == "Asia/Shanghai"
    assert event["debug"] is False
    assert isinstance(event["signKey"], str) and event["signKey"]
    assert "env" not in event
    assert event["request"]["meta"] == {"ip_address": "127.0.0.1", "user_agent": "tests/1"}
    assert event["request"]["user"]["nickname"] == "eve"
    assert token not in str(reply.body)
    job = api.engine.job(event["jobId"])
    assert job.request_id == reply.headers["X-Request-Id"]
    assert job.user_id == event["request"]["user"]["id"]


async def test_missing_data_reaches_the_function_as_empty_object(api: Api) -> None:
    """Without data the function gets {} (so event.data.x works); explicit null stays null."""
    token = await api.login()
    missing = await api.invoke(token, "echo")
    assert missing.body["data"]["data"] == {}
    null = await api.invoke(token, "echo", None)
    assert null.body["data"]["data"] is None
    text = await api.invoke(token, "echo", "just a string")
    assert text.body["data"]["data"] == "just a string"


async def test_env_header_reaches_event_env(api: Api) -> None:
    """X-Hydrogen-Env-ID becomes event.env = {id, name}."""
    token = await api.login()
    reply = await api.invoke(token, "echo", {}, **{"X-Hydrogen-Env-ID": "test-env-1"})
    assert reply.body["data"]["env"] == {"id": "test-env-1", "name": "test-env-1"}


async def test_header_names_are_case_insensitive(api: Api) -> None:
    """Lower- and upper-case header names and auth scheme work the same."""
    token = await api.login()
    reply = await api.request(
        "POST",
        JOB,
        json_body={"function_name": "echo", "data": {}},
        headers={
            "x-hydrogen-client-id": api.engine.client_id,
            "AUTHORIZATION": f"hydrogen-R1 {token}",
            "X-HYDROGEN-ENV-ID": "e1",
        },
    )
    assert reply.status == 200
    assert reply.body["data"]["env"]["id"] == "e1"


async def test_any_client_id_is_served_unless_pinned(api: Api) -> None:
    """An engine with no pinned id serves whatever client id the app sends (a front-end keeps
    its real id), and a user's token works with it."""
    token = await api.login()
    reply = await api.request(
        "POST",
        JOB,
        json_body={"function_name": "echo", "data": 1},
        headers={"X-Hydrogen-Client-ID": "my-real-app-id", "Authorization": f"Hydrogen-r1 {token}"},
    )
    assert (200, 1) == (reply.status, reply.body["data"]["data"])


async def test_client_id_missing_is_400_and_wrong_is_401(http: aiohttp.ClientSession) -> None:
    """The client id header is required; with --client-id (EngineConfig.client_id) pinned it
    must be that one, and the hint names the engine's id and the flag, not the one sent."""
    async with running_engine(FUNCTIONS, client_id="pinned-app-id") as engine:
        await check_client_id_refusals(Api(engine, http))


async def check_client_id_refusals(api: Api) -> None:
    token = await api.login()
    missing = await api.request(
        "POST",
        JOB,
        json_body={"function_name": "echo"},
        headers={"Authorization": f"Hydrogen-r1 {token}"},
    )
    assert missing.status == 400
    assert "X-Hydrogen-Client-ID" in missing.error_msg
    wrong = await api.request(
        "POST",
        JOB,
        json_body={"function_name": "echo"},
        headers={
            "X-Hydrogen-Client-ID": "someone-elses-id",
            "Authorization": f"Hydrogen-r1 {token}",
        },
    )
    assert wrong.status == 401
    assert "someone-elses-id" not in wrong.error_msg
    assert "'pinned-app-id'" in wrong.error_msg
    assert "--client-id" in wrong.error_msg


async def test_invoke_without_or_with_bad_token_is_401(api: Api) -> None:
    """No token, an unknown token and a wrong scheme are all 401s."""
    assert (await api.invoke(None, "echo")).status == 401
    unknown = await api.invoke("x" * 32, "echo")
    assert unknown.status == 401
    assert "x" * 32 not in unknown.error_msg
    bad_scheme = await api.request(
        "POST",
        JOB,
        json_body={"function_name": "echo"},
        headers=api.hserve_headers(Authorization="Bearer abc"),
    )
    assert bad_scheme.status == 401
    assert "Hydrogen-r1" in bad_scheme.error_msg


async def test_expired_session_is_refused(api: Api) -> None:
    """After expire_sessions() an issued token gets 401; a new login works."""
    token = await api.login()
    api.engine.expire_sessions()
    assert (await api.invoke(token, "echo")).status == 401
    fresh = await api.login(username="second")
    assert (await api.invoke(fresh, "echo")).status == 200


async def test_anonymous_users_are_forbidden_by_default(api: Api) -> None:
    """An anonymous caller gets 403 and the function does not run."""
    token = await api.anonymous_token()
    reply = await api.invoke(token, "echo", {})
    assert reply.status == 403
    assert "anonymous" in reply.error_msg
    assert api.engine.executions("echo") == 0


async def test_anonymous_users_may_invoke_when_allowed() -> None:
    """With allow_anonymous an anonymous caller's invoke runs."""
    import aiohttp

    async with (
        running_engine(FUNCTIONS, allow_anonymous=True) as engine,
        aiohttp.ClientSession() as http,
    ):
        api = Api(engine, http)
        token = await api.anonymous_token()
        reply = await api.invoke(token, "helloWorld", {"name": "anon"})
        assert reply.status == 200
        assert reply.body["data"] == "hello anon"


async def test_every_reply_has_a_request_id(api: Api) -> None:
    """Success, error and unknown-route replies all carry a fresh X-Request-Id."""
    ids = set()
    for method, path in (("POST", JOB), ("GET", "/nowhere"), ("GET", JOB)):
        reply = await api.request(method, path, headers=api.hserve_headers())
        assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["X-Request-Id"])
        ids.add(reply.headers["X-Request-Id"])
    assert len(ids) == 3


async def test_engine_repr_and_config_hide_the_secret(engine: Engine) -> None:
    """Neither the engine's nor the config's repr shows the client secret."""
    assert engine.client_secret not in repr(engine)
    assert engine.client_secret not in repr(engine.config)
    assert engine.url in repr(engine)
