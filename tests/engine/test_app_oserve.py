"""The Open API (oserve): the OAuth code flow, tokens, and the cloud-function endpoints."""

from __future__ import annotations

import re

import aiohttp
import pytest
from engine_api import ACCESS_TOKEN, AUTHORIZE, Api

from minapp_async.testing import running_engine

pytestmark = pytest.mark.anyio

V13 = "/oserve/v1.3/cloud-function"


async def test_authorize_follows_two_redirects_with_a_cookie(api: Api) -> None:
    """With a cookie jar the authorize call ends, after two 302s, in a 40-hex code."""
    code = await api.authorization_code()
    assert re.fullmatch(r"[0-9a-f]{40}", code)


async def test_authorize_without_cookies_is_a_clear_4xx(api: Api) -> None:
    """Following the redirects without a cookie jar ends in a 400 that says why."""
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.post(
            api.engine.url + AUTHORIZE,
            json={"client_id": api.engine.client_id, "client_secret": api.engine.client_secret},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 400
        assert [r.status for r in response.history] == [302]
    assert "cookie" in body["error_msg"]


async def test_authorize_with_a_wrong_secret_is_401(api: Api) -> None:
    """A wrong client secret is refused and not echoed."""
    reply = await api.request(
        "POST",
        AUTHORIZE,
        json_body={"client_id": api.engine.client_id, "client_secret": "guessed-secret"},
    )
    assert reply.status == 401
    assert "guessed-secret" not in reply.error_msg


async def test_access_token_from_json_and_multipart(api: Api) -> None:
    """The code exchange accepts JSON and multipart/form-data and returns a Bearer pair."""
    pair = await api.token_pair()  # JSON
    assert re.fullmatch(r"[0-9a-f]{40}", pair["access_token"])
    assert pair["token_type"] == "Bearer"
    assert pair["scope"] == "write"
    assert pair["expires_in"] == 31535999
    assert pair["refresh_token"]
    form = aiohttp.FormData(
        {
            "client_id": api.engine.client_id,
            "client_secret": api.engine.client_secret,
            "code": await api.authorization_code(),
            "grant_type": "authorization_code",
        }
    )
    form.add_field("ignored_file", b"x", filename="x.bin")  # forces multipart/form-data
    reply = await api.request("POST", ACCESS_TOKEN, data=form)
    assert reply.status == 200, reply
    assert re.fullmatch(r"[0-9a-f]{40}", reply.body["access_token"])


async def test_codes_are_single_use(api: Api) -> None:
    """A code exchanged once is refused the second time."""
    code = await api.authorization_code()
    body = {
        "client_id": api.engine.client_id,
        "client_secret": api.engine.client_secret,
        "code": code,
        "grant_type": "authorization_code",
    }
    assert (await api.request("POST", ACCESS_TOKEN, json_body=body)).status == 200
    again = await api.request("POST", ACCESS_TOKEN, json_body=body)
    assert again.status == 400
    assert "code" in again.error_msg


async def test_access_token_rejects_bad_grant_and_client(api: Api) -> None:
    """Unknown grant types are 400 and wrong client credentials 401."""
    bad_grant = await api.request(
        "POST",
        ACCESS_TOKEN,
        json_body={
            "client_id": api.engine.client_id,
            "client_secret": api.engine.client_secret,
            "grant_type": "password",
        },
    )
    assert bad_grant.status == 400
    assert "grant_type" in bad_grant.error_msg
    bad_client = await api.request(
        "POST",
        ACCESS_TOKEN,
        json_body={"client_id": "x", "client_secret": "y", "grant_type": "authorization_code"},
    )
    assert bad_client.status == 401


async def test_refresh_invalidates_the_old_pair(api: Api) -> None:
    """A refresh issues a working pair; the old access and refresh tokens stop working."""
    old = await api.token_pair()
    reply = await api.request(
        "POST",
        ACCESS_TOKEN,
        json_body={
            "client_id": api.engine.client_id,
            "client_secret": api.engine.client_secret,
            "refresh_token": old["refresh_token"],
            "grant_type": "refresh_token",
        },
    )
    assert reply.status == 200
    new = reply.body
    assert new["access_token"] != old["access_token"]
    path = f"{V13}/echo/job/"
    assert (await api.oserve("POST", path, old["access_token"], {"data": {}})).status == 401
    assert (await api.oserve("POST", path, new["access_token"], {"data": {}})).status == 200
    reuse = await api.request(
        "POST",
        ACCESS_TOKEN,
        json_body={
            "client_id": api.engine.client_id,
            "client_secret": api.engine.client_secret,
            "refresh_token": old["refresh_token"],
            "grant_type": "refresh_token",
        },
    )
    assert reuse.status == 400


async def test_expired_access_token_is_401_and_refresh_recovers(api: Api) -> None:
    """After expire_sessions() the bearer is refused, and its refresh token still works."""
    pair = await api.token_pair()
    api.engine.expire_sessions()
    expired = await api.oserve("POST", f"{V13}/echo/job/", pair["access_token"], {"data": {}})
    assert expired.status == 401
    assert "expired" in expired.error_msg
    refreshed = await api.request(
        "POST",
        ACCESS_TOKEN,
        json_body={
            "client_id": api.engine.client_id,
            "client_secret": api.engine.client_secret,
            "refresh_token": pair["refresh_token"],
            "grant_type": "refresh_token",
        },
    )
    assert refreshed.status == 200


async def test_bad_bearer_is_401(api: Api) -> None:
    """Missing, malformed and unknown bearer tokens are 401 on every oserve route."""
    for headers in (
        {},
        {"Authorization": "Hydrogen-r1 abc"},
        {"Authorization": "Bearer " + "0" * 40},
    ):
        reply = await api.request(
            "POST", f"{V13}/echo/job/", json_body={"data": {}}, headers=headers
        )
        assert reply.status == 401, headers
        assert reply.error_msg
    listing = await api.request("GET", f"{V13}/echo/job/")
    assert listing.status == 401


async def test_legacy_oserve_job(api: Api) -> None:
    """POST /oserve/v1/cloud-function/job/ runs like hserve's, with eventType open_api."""
    token = await api.access_token()
    reply = await api.oserve(
        "POST",
        "/oserve/v1/cloud-function/job/",
        token,
        {"function_name": "echo", "data": {"a": 1}},
        **{"X-Hydrogen-Env-ID": "env-9"},
    )
    assert reply.status == 200
    event = reply.body["data"]
    assert event["eventType"] == "open_api"
    assert event["data"] == {"a": 1}
    assert event["env"] == {"id": "env-9", "name": "env-9"}
    assert "request" not in event
    assert token not in str(event)


async def test_v13_job_sync_async_and_errors(api: Api) -> None:
    """The v1.3 job endpoint runs sync and async jobs, needs data, and 404s unknown names."""
    token = await api.access_token()
    sync = await api.oserve("POST", f"{V13}/helloWorld/job/", token, {"data": {"name": "o"}})
    assert sync.status == 200
    assert sync.body == {"code": 0, "data": "hello o", "error": {}}
    queued = await api.oserve("POST", f"{V13}/echo/job/", token, {"data": {"x": 1}, "sync": False})
    assert queued.body == {"status": "ok"}
    (job,) = [j for j in api.engine.jobs("echo") if j.request_id == queued.headers["X-Request-Id"]]
    assert job.source == "open_api"
    assert (await api.engine.wait_job(job.id, timeout=30)).status == "fulfilled"
    no_data = await api.oserve("POST", f"{V13}/echo/job/", token, {"sync": True})
    assert no_data.status == 400
    assert "data" in no_data.error_msg
    unknown = await api.oserve("POST", f"{V13}/nope/job/", token, {"data": {}})
    assert unknown.status == 404
    assert unknown.error_msg == "cloud function 'nope' not found"


async def test_debug_endpoint_reports_the_run(api: Api) -> None:
    """The debug endpoint answers the outcome, log, timings and job id."""
    token = await api.access_token()
    ok = await api.oserve("POST", f"{V13}/helloWorld/debug/", token, {"data": {"name": "d"}})
    assert ok.status == 200
    body = ok.body
    assert set(body) == {
        "billing_time", "code", "data", "error", "execution_time", "job_id", "log", "mem_usage",
    }  # fmt: skip
    assert (body["code"], body["data"], body["error"]) == (0, "hello d", {})
    assert re.fullmatch(r"[0-9a-f]{32}", body["job_id"])
    assert body["execution_time"] >= 0
    assert body["billing_time"] >= body["execution_time"]
    assert api.engine.job(body["job_id"]).status == "fulfilled"
    failed = await api.oserve("POST", f"{V13}/fail/debug/", token, {"data": {}})
    assert failed.status == 200
    assert failed.body["code"] == 1
    assert failed.body["error"]["type"] == "ValueError"
    bad_subject = await api.oserve("POST", f"{V13}/echo/debug/", token, {"subject": "nope"})
    assert bad_subject.status == 400


async def test_debug_shows_a_timeout_with_its_log(api: Api) -> None:
    """A debug run killed at the limit answers code 1 naming the timeout."""
    token = await api.access_token()
    reply = await api.oserve("POST", f"{V13}/sleepy/debug/", token, {"data": {"seconds": 60}})
    assert reply.status == 200
    assert reply.body["code"] == 1
    assert reply.body["error"]["type"] == "DeadlineExceeded"
    assert "timed out" in reply.body["error"]["message"]
    assert api.engine.job(reply.body["job_id"]).status == "deadline_exceeded"


async def test_job_list_paginates_and_filters(api: Api) -> None:
    """The job list pages newest first and filters by status and source."""
    token = await api.access_token()
    user = await api.login()
    for i in range(3):
        assert (
            await api.oserve("POST", f"{V13}/echo/job/", token, {"data": {"i": i}})
        ).status == 200
    assert (await api.invoke(user, "echo", {"i": "sdk"})).status == 200
    first = await api.oserve("GET", f"{V13}/echo/job/?limit=2", token)
    assert first.status == 200
    meta = first.body["meta"]
    assert (meta["limit"], meta["offset"], meta["total_count"]) == (2, 0, 4)
    assert meta["previous"] is None
    assert meta["next"] is not None and "offset=2" in meta["next"]
    objects = first.body["objects"]
    assert objects[0]["source"] == "sdk"  # newest first
    assert set(objects[0]) == {
        "id", "created_at", "started_at", "finished_at", "mem_usage", "service_type", "source",
        "status", "user_log_url",
    }  # fmt: skip
    assert objects[0]["service_type"] == "time_sensitive"
    second = await api.oserve("GET", meta["next"], token)
    assert second.body["meta"]["next"] is None
    assert second.body["meta"]["previous"] is not None
    assert len(second.body["objects"]) == 2
    open_api = await api.oserve("GET", f"{V13}/echo/job/?source=open_api&status=fulfilled", token)
    assert open_api.body["meta"]["total_count"] == 3
    none = await api.oserve("GET", f"{V13}/echo/job/?status=deadline_exceeded", token)
    assert none.body["meta"]["total_count"] == 0
    bad = await api.oserve("GET", f"{V13}/echo/job/?status=bogus", token)
    assert bad.status == 400
    bad_limit = await api.oserve("GET", f"{V13}/echo/job/?limit=-1", token)
    assert bad_limit.status == 400
    unknown = await api.oserve("GET", f"{V13}/nope/job/", token)
    assert unknown.status == 404


async def test_user_log_url_serves_the_log(api: Api) -> None:
    """A job's user_log_url returns its log as text."""
    token = await api.access_token()
    await api.oserve("POST", f"{V13}/loud/job/", token, {"data": {}})
    listing = await api.oserve("GET", f"{V13}/loud/job/", token)
    url = listing.body["objects"][0]["user_log_url"]
    assert url.startswith(api.engine.url + "/")
    job = api.engine.job(listing.body["objects"][0]["id"])
    reply = await api.oserve("GET", url.removeprefix(api.engine.url), token)
    assert reply.status == 200
    assert "LOG hello from loud" in reply.body
    assert reply.body == job.log


@pytest.mark.parametrize(
    ("pin", "client_id", "secret_ok", "status"),
    [
        (None, "any-app-id", True, 400),  # accepted: the next step wants the cookie back
        (None, "any-app-id", False, 401),
        ("pinned-id", "pinned-id", True, 400),
        ("pinned-id", "other-id", True, 401),
    ],
)
async def test_authorize_checks_the_secret_and_a_pinned_id(
    http: aiohttp.ClientSession, pin: str | None, client_id: str, secret_ok: bool, status: int
) -> None:
    """The OAuth flow checks the secret against the engine's, and the id only when one is
    pinned with --client-id (the cookie-less client stops at the second step with a 400)."""
    async with running_engine(client_id=pin) as engine:
        secret = engine.client_secret if secret_ok else "guessed-secret"
        async with http.post(
            engine.url + AUTHORIZE, json={"client_id": client_id, "client_secret": secret}
        ) as response:
            assert status == response.status, await response.text()
