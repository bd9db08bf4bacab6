"""Reading requests: JSON and form bodies, query parameters and headers, each refused with a
400 that says what was wrong."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final, NoReturn

from aiohttp import web
from multidict import MultiDictProxy

from ..._protocol import ENV_ID_HEADER
from ._middleware import ApiError

#: Deeper JSON is refused with a 400: the event is re-encoded for the worker, and each level
#: costs a stack frame there, so the limit is well inside Python's recursion limit.
MAX_JSON_DEPTH: Final = 500


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative, so it cannot itself run out of stack.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _parse_constant(name: str) -> NoReturn:
    # NaN/Infinity are not JSON, and Node could not parse them back.
    raise ValueError(f"{name} is not valid JSON")


_TOO_DEEP: Final = f"request body is nested too deeply: at most {MAX_JSON_DEPTH} levels"
# One decoder for every body: json.loads with an option builds a new decoder per call.
_decode: Final = json.JSONDecoder(parse_constant=_parse_constant).decode


async def json_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``."""
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw.strip():
        return {}
    try:
        body = _decode(raw.decode("utf-8"))  # a leading BOM is not JSON: a 400, as before
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, _TOO_DEEP) from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    # Counting brackets is fast; only a body with that many containers is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(body, MAX_JSON_DEPTH):
        raise ApiError(400, _TOO_DEEP)
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {json_type(body)}")
    return body


async def form_or_json_body(request: web.Request) -> Mapping[str, Any]:
    """JSON, multipart/form-data or urlencoded: the OAuth endpoints accept all three."""
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form: MultiDictProxy[Any] = await request.post()
        except ValueError as exc:
            raise ApiError(400, f"request body is not a valid form: {exc}") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}
    return await json_body(request)


def json_type(value: object) -> str:
    """The JSON name of *value*'s type, for error messages."""
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def env_id(request: web.Request) -> str | None:
    """The environment the caller names, if any."""
    env = request.headers.get(ENV_ID_HEADER, "").strip()
    return env or None


def sync_flag(body: Mapping[str, Any]) -> bool:
    """The body's ``sync``: the JS SDK defaults it to true only when it is missing
    (PROTOCOL.md §3.1)."""
    sync = body.get("sync", True)
    if not isinstance(sync, bool):
        raise ApiError(400, f"sync must be a boolean (true or false), got {json_type(sync)}")
    return sync


def uint(raw: str) -> int | None:
    """*raw* as a non-negative int, or None. ASCII digits only ("²".isdigit() is true, and
    int() refuses it) and a bounded length (int() refuses over 4300 digits)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 30:
        return None
    return int(raw)


def int_param(request: web.Request, key: str, default: int, *, low: int, high: int) -> int:
    """Query parameter *key* as an int in ``low..high``; *default* when it is absent."""
    raw = request.query.get(key)
    if raw is None:
        return default
    value = uint(raw)
    if value is None or not low <= value <= high:
        raise ApiError(400, f"{key} must be an integer between {low} and {high}")
    return value


def float_param(request: web.Request, key: str) -> float | None:
    """Query parameter *key* as a finite number of epoch seconds, or None when absent."""
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{key} must be a number (epoch seconds)") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{key} must be a finite number (epoch seconds)")
    return value
