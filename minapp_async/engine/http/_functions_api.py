"""The Open API's cloud-function management endpoints, the ones the stock ``mincloud`` CLI uses
(BAAS.md §3.2, PROTOCOL.md §6.2): list, create, update with code, get with code, delete.

A function lives in the functions folder itself: creating one writes ``DIR/<name>/index.js``
(what ``mincloud new`` and ``pull`` lay out), updating one rewrites the file the engine runs for
that name, and the next invocation runs the new code. Writes go through a temporary file and a
rename, so a job starting meanwhile reads the old or the new code, never half of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ..._protocol import OPEN_API_FUNCTIONS_PATH
from ..runtime import FunctionFile
from ._middleware import STATE, ApiError, safe_name
from ._open_api import DEFAULT_PAGE, MAX_PAGE, _check_bearer
from ._parsing import int_param, json_body, json_type

#: The names the runtime can run (runtime._NAME): no "/", no "..", nothing hidden.
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}", re.ASCII)
#: What a new function's folder holds, as ``mincloud new`` and ``pull`` write it.
ENTRY_FILE: Final = "index.js"
#: The platform reviews code before it runs; locally everything is approved at once.
_AUDIT_STATUS: Final = "approved"
_PLAN: Final = "P_FREE"


def _checked_name(name: object) -> str:
    """A function name that stays inside the folder; 400 otherwise."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        shown = safe_name(name) if isinstance(name, str) else json_type(name)
        raise ApiError(
            400,
            f"invalid cloud function name {shown}: use 1-64 letters, digits, '_' and '-', "
            "not starting with '-'",
        )
    return name


def _code_of(body: dict[str, Any], *, required: bool) -> str | None:
    code = body.get("function_code")
    if code is None and not required:
        return None
    if not isinstance(code, str) or not code.strip():
        raise ApiError(400, "function_code must be a non-empty string (the function's source)")
    return code


def _remark_of(body: dict[str, Any]) -> str | None:
    remark = body.get("remark")
    if remark is not None and not isinstance(remark, str):
        raise ApiError(400, f"remark must be a string, got {json_type(remark)}")
    return remark


def _folder(request: web.Request) -> Path:
    return request.app[STATE].config.functions_dir.resolve()


def _describe(function: FunctionFile, remarks: dict[str, str], *, code: bool) -> dict[str, Any]:
    info = function.path.stat()
    out: dict[str, Any] = {
        # The platform's ids are integers; a stable one derived from the name will do here.
        "id": zlib.crc32(function.name.encode()),
        "name": function.name,
        "remark": remarks.get(function.name, ""),
        "audit_status": _AUDIT_STATUS,
        "plan_circle": _PLAN,
        "created_at": int(info.st_ctime),
        "updated_at": int(info.st_mtime),
    }
    if code:
        out["function_code"] = function.path.read_text("utf-8", errors="replace")
    return out


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".deploy-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _inside(folder: Path, path: Path) -> bool:
    """Whether *path*'s folder is really inside *folder* (a symlinked folder could lead out)."""
    try:
        return path.parent.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):
        return False


def _remarks(request: web.Request) -> dict[str, str]:
    return request.app[_REMARKS]


_REMARKS: Final = web.AppKey("minapp_engine_function_remarks", dict[str, str])


async def _list(request: web.Request) -> web.Response:
    _check_bearer(request)
    limit = int_param(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    offset = int_param(request, "offset", 0, low=0, high=2**31)
    locate = request.app[STATE].locate_function
    folder = _folder(request)
    try:
        entries = os.listdir(folder)
    except OSError:
        entries = []
    found: dict[str, FunctionFile] = {}
    for entry in entries:
        stem = entry[:-3] if entry.endswith((".js", ".py")) else entry
        if stem not in found and (function := locate(stem)) is not None:
            found[stem] = function
    names = sorted(found)
    page = names[offset : offset + limit]
    base = request.rel_url
    return web.json_response(
        {
            "meta": {
                "limit": limit,
                "offset": offset,
                "total_count": len(names),
                "next": str(base.update_query(limit=limit, offset=offset + limit))
                if offset + limit < len(names)
                else None,
                "previous": str(base.update_query(limit=limit, offset=max(0, offset - limit)))
                if offset > 0
                else None,
            },
            "objects": [_describe(found[n], _remarks(request), code=False) for n in page],
        }
    )


async def _create(request: web.Request) -> web.Response:
    _check_bearer(request)
    body = await json_body(request)
    name = _checked_name(body.get("name"))
    code = _code_of(body, required=True)
    assert code is not None
    remark = _remark_of(body)
    state = request.app[STATE]
    if state.locate_function(name) is not None:
        raise ApiError(400, f"cloud function {safe_name(name)} already exists")
    folder = _folder(request)
    target = folder / name / ENTRY_FILE
    if not _inside(folder, target):
        raise ApiError(400, f"{safe_name(name)} in the functions folder is not a plain folder")
    try:
        _write_atomically(target, code)
    except OSError as exc:
        raise ApiError(400, f"cannot write cloud function {safe_name(name)}: {exc}") from None
    if remark is not None:
        _remarks(request)[name] = remark
    function = state.locate_function(name)
    if function is None:  # e.g. a stray "<name>" file where the folder should go
        raise ApiError(400, f"cannot create cloud function {safe_name(name)} in the folder")
    return web.json_response(_describe(function, _remarks(request), code=True), status=201)


def _existing(request: web.Request) -> FunctionFile:
    name = _checked_name(request.match_info["name"])
    function = request.app[STATE].locate_function(name)
    if function is None:
        raise ApiError(404, f"cloud function {safe_name(name)} not found")
    return function


async def _get(request: web.Request) -> web.Response:
    _check_bearer(request)
    return web.json_response(_describe(_existing(request), _remarks(request), code=True))


async def _update(request: web.Request) -> web.Response:
    _check_bearer(request)
    function = _existing(request)
    body = await json_body(request)
    renamed = body.get("name", function.name)
    if renamed != function.name:
        raise ApiError(400, "renaming a cloud function is not supported by the local engine")
    code = _code_of(body, required=False)
    remark = _remark_of(body)
    if code is not None:
        try:
            # The file the engine runs for this name (``name.js``, ``name/index.js``, …).
            _write_atomically(function.path, code)
        except OSError as exc:
            raise ApiError(
                400, f"cannot write cloud function {safe_name(function.name)}: {exc}"
            ) from None
    if remark is not None:
        _remarks(request)[function.name] = remark
    updated = request.app[STATE].locate_function(function.name) or function
    return web.json_response(_describe(updated, _remarks(request), code=True), status=202)


async def _delete(request: web.Request) -> web.Response:
    _check_bearer(request)
    function = _existing(request)
    folder = _folder(request)
    path = function.path
    try:
        path.unlink()
        # ``name/index.js``: the folder goes too once nothing else is in it.
        if path.parent != folder and path.parent.name == function.name:
            with contextlib.suppress(OSError):
                path.parent.rmdir()
    except OSError as exc:
        raise ApiError(
            400, f"cannot delete cloud function {safe_name(function.name)}: {exc}"
        ) from None
    _remarks(request).pop(function.name, None)
    return web.Response(status=204)


def add_functions_api_routes(app: web.Application) -> None:
    """Route the function-management paths (after the job and debug routes, which win)."""
    app[_REMARKS] = {}
    router = app.router
    root = "/" + OPEN_API_FUNCTIONS_PATH
    listing = router.add_resource(root)
    listing.add_route("GET", _list)
    listing.add_route("POST", _create)
    # ".+" so that a name with "/" reaches the handler and gets its 400.
    one = router.add_resource(root + "{name:.+}/")
    one.add_route("GET", _get)
    one.add_route("PATCH", _update)
    one.add_route("DELETE", _delete)
