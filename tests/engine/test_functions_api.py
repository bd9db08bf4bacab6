"""The Open API's function management (the endpoints mincloud uses), over HTTP: names that would
leave the functions folder, bad bodies, tokens, and what a deploy changes on disk."""

from __future__ import annotations

import pytest
from engine_api import Api

pytestmark = pytest.mark.anyio

ROOT = "/oserve/v1.3/cloud-function/"
CODE = "exports.main = async (event) => 'v' + event.data.n\n"


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "..", "", "-x", 7, None])
async def test_create_refuses_names_that_leave_the_folder(api: Api, name: object) -> None:
    token = await api.access_token()
    reply = await api.oserve("POST", ROOT, token, {"name": name, "function_code": CODE})
    assert reply.status == 400
    assert "invalid cloud function name" in reply.error_msg
    folder = api.engine.config.functions_dir
    assert not (folder.parent / "evil").exists()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("path", ["..%2Fecho/", ".hidden/", "a%2Fb/"])
async def test_update_get_and_delete_refuse_bad_names(api: Api, path: str) -> None:
    token = await api.access_token()
    for method in ("GET", "PATCH", "DELETE"):
        body = {"function_code": CODE} if method == "PATCH" else None
        reply = await api.oserve(method, ROOT + path, token, body)
        assert reply.status == 400, (method, reply)
        assert "invalid cloud function name" in reply.error_msg


async def test_without_a_token_nothing_changes(api: Api) -> None:
    reply = await api.request("POST", ROOT, json_body={"name": "x", "function_code": CODE})
    assert reply.status == 401
    reply = await api.request("DELETE", ROOT + "echo/", headers={"Authorization": "Bearer nope"})
    assert reply.status == 401
    assert (api.engine.config.functions_dir / "echo.py").exists()


async def test_create_update_get_delete(api: Api) -> None:
    token = await api.access_token()
    created = await api.oserve("POST", ROOT, token, {"name": "v", "function_code": CODE})
    assert created.status == 201
    assert created.body["name"] == "v" and created.body["function_code"] == CODE
    again = await api.oserve("POST", ROOT, token, {"name": "v", "function_code": CODE})
    assert again.status == 400 and "already exists" in again.error_msg
    job = f"{ROOT}v/job/"
    assert (await api.oserve("POST", job, token, {"data": {"n": 1}})).body["data"] == "v1"

    empty = await api.oserve("PATCH", ROOT + "v/", token, {"function_code": "  "})
    assert empty.status == 400 and "function_code" in empty.error_msg
    patched = await api.oserve(
        "PATCH", ROOT + "v/", token, {"function_code": CODE.replace("'v'", "'w'"), "remark": "r"}
    )
    assert patched.status == 202
    assert (await api.oserve("POST", job, token, {"data": {"n": 2}})).body["data"] == "w2"
    got = await api.oserve("GET", ROOT + "v/", token)
    assert got.body["remark"] == "r" and "'w'" in got.body["function_code"]

    # A flat Python function is updated in place, in its own file.
    py = "def main(event):\n    return 'py ' + str(event['data'])\n"
    assert (await api.oserve("PATCH", ROOT + "echo/", token, {"function_code": py})).status == 202
    assert (api.engine.config.functions_dir / "echo.py").read_text() == py

    assert (await api.oserve("DELETE", ROOT + "v/", token)).status == 204
    assert not (api.engine.config.functions_dir / "v").exists()
    missing = await api.oserve("DELETE", ROOT + "v/", token)
    assert missing.status == 404 and "not found" in missing.error_msg


async def test_list_pages(api: Api) -> None:
    token = await api.access_token()
    first = await api.oserve("GET", ROOT + "?limit=2&offset=0", token)
    assert first.status == 200
    assert [o["name"] for o in first.body["objects"]] == ["crash", "echo"]
    assert first.body["meta"]["total_count"] == 7
    assert first.body["meta"]["next"] is not None
    assert all(o["audit_status"] == "approved" for o in first.body["objects"])
    bad = await api.oserve("GET", ROOT + "?limit=0", token)
    assert bad.status == 400
