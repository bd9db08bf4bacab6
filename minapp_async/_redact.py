"""Redaction of secrets from any text that may reach a log, a repr or an exception message."""

from __future__ import annotations

import re
from typing import Final

from ._protocol import SERVER_AUTH_SCHEME, USER_AUTH_SCHEME

REDACTED: Final = "***"

# Keys whose values are secrets wherever they appear: JSON bodies, form bodies, query strings.
SECRET_KEYS: Final = (
    "token",
    "access_token",
    "refresh_token",
    "password",
    "client_secret",
    "session_key",
    "signKey",
)

_KEYS = "|".join(SECRET_KEYS)
_JSON_PAIR = re.compile(rf'("(?:{_KEYS})"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}}\s]+)')
_FORM_PAIR = re.compile(rf"(\b(?:{_KEYS}|code)=)[^&\s]+")
# An OAuth authorization code is a string "code"; a numeric "code" is a result code and stays.
_OAUTH_CODE = re.compile(r'("code"\s*:\s*)"(?:[^"\\]|\\.)*"')
_AUTH_VALUE = re.compile(
    rf"\b({re.escape(USER_AUTH_SCHEME)}|{re.escape(SERVER_AUTH_SCHEME)})\s+\S+", re.IGNORECASE
)


def redact_text(text: str) -> str:
    """*text* with every secret value replaced by ``***``."""
    text = _JSON_PAIR.sub(rf'\1"{REDACTED}"', text)
    text = _OAUTH_CODE.sub(rf'\1"{REDACTED}"', text)
    text = _FORM_PAIR.sub(rf"\1{REDACTED}", text)
    return _AUTH_VALUE.sub(rf"\1 {REDACTED}", text)
