"""The secrets a Session holds: types that never show them, and the scrubber that removes
their exact values from whatever a server sends back.

Key-based redaction (``_redact``) finds ``"password": "…"``; it cannot find a secret a hostile
or careless server echoes under another key, in HTML, as a Python repr or URL-encoded. So each
set of credentials keeps the exact values it holds (password, client secret, tokens, codes) in
a ``Secrets``, and every error on its way out is scrubbed of them (``Secrets.scrub_error``).

Error reporters (Sentry and others) capture the locals of every frame of a traceback: secrets
live in ``Secret`` (a ``str`` whose repr is ``'***'``) and request bodies that carry them in
``Sealed`` (bytes only handed to aiohttp), so no SDK frame shows one.
"""

from __future__ import annotations

import html
import json
import re
import weakref
from typing import Final
from urllib.parse import quote, quote_plus

import attrs

from ._errors import HError
from ._redact import REDACTED

__all__ = ["Sealed", "Secret", "Secrets", "detach_frames", "scrub_all", "secret_or_none"]

#: Values shorter than this are not matched by value: a one-letter password would turn every
#: such letter of a message into ``***``. Key-based redaction still covers them.
MIN_SECRET_CHARS: Final = 4
#: Rotated tokens and codes kept for scrubbing after they are replaced (the newest ones).
RECENT_SECRETS: Final = 16
#: What a cut text (a reply snippet) ends with: a secret cut there is masked up to the cut.
CUT_MARK: Final = "…"


class Secret(str):
    """A ``str`` whose ``repr`` is redacted. It is sent, formatted and compared as the plain
    value; only ``repr`` (what error reporters and debuggers show) hides it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{REDACTED}'"


def secret_or_none(value: object) -> Secret | None:
    """*value* as a ``Secret`` when it is a non-empty str, else None."""
    return Secret(value) if isinstance(value, str) and value else None


class Sealed:
    """A request body that carries a secret: the bytes are handed to aiohttp and nowhere else
    (``bytes`` would show the secret in any frame that holds the body)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def reveal(self) -> bytes:
        """The bytes to send."""
        return self._data

    def __repr__(self) -> str:
        return f"<Sealed body of {len(self._data)} bytes>"


def _forms(value: str) -> set[str]:
    """The ways a server may echo *value*: as is, URL-encoded, JSON-escaped (also with
    ``\\/``), HTML-escaped, or inside a Python repr. (They are matched ignoring case: a host
    name or a hex escape may come back in the other case.)"""
    plain = str.__str__(value)
    escaped = json.dumps(plain)[1:-1]
    forms = {
        plain,
        quote(plain, safe=""),
        quote(plain),
        quote_plus(plain),
        escaped,
        escaped.replace("/", "\\/"),
        json.dumps(plain, ensure_ascii=False)[1:-1],
        html.escape(plain),
        html.escape(plain, quote=False),
        str.__repr__(plain)[1:-1],
    }
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


@attrs.define(eq=False, repr=False)
class _Matcher:
    """Every form of a set of values: one pattern for whole forms, and the forms (lower
    case) to mask a cut one."""

    pattern: re.Pattern[str]
    forms: tuple[str, ...]
    longest: int


def _matcher(values: list[str]) -> _Matcher | None:
    forms: set[str] = set()
    for value in values:
        forms |= _forms(value)
    if not forms:
        return None
    ordered = sorted(forms, key=len, reverse=True)  # the longest form wins an overlap
    pattern = re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE)
    return _Matcher(pattern, tuple(f.lower() for f in ordered), len(ordered[0]))


class Secrets:
    """The exact secret values one set of credentials holds, to scrub from server text.

    ``keep`` holds a value for the Session's life (a password, a client secret, a token given
    at creation); ``add`` holds a rotating one (tokens, codes), the newest ``RECENT_SECRETS``
    of them. A view's ``Secrets`` also scrubs its *parent*'s values.
    """

    __slots__ = (
        "__weakref__",
        "_built_for",
        "_kept",
        "_matcher",
        "_parent",
        "_recent",
        "_version",
    )

    def __init__(self, parent: Secrets | None = None) -> None:
        _LIVE.add(self)  # the log filter scrubs every live one (``scrub_all``)
        self._parent = parent
        self._kept: dict[str, None] = {}
        self._recent: dict[str, None] = {}
        self._version = 0
        self._built_for: list[int] = []
        self._matcher: _Matcher | None = None

    def __repr__(self) -> str:
        return f"<Secrets: {len(self._kept) + len(self._recent)} values>"

    def keep(self, value: str | None) -> None:
        """Scrub *value* for as long as this Session lives."""
        if value and value not in self._kept:
            self._kept[Secret(value)] = None
            self._version += 1

    def add(self, value: str | None) -> None:
        """Scrub *value*, a rotating secret, until ``RECENT_SECRETS`` newer ones replace it."""
        if not value or value in self._kept:
            return
        self._recent.pop(value, None)
        self._recent[Secret(value)] = None
        while len(self._recent) > RECENT_SECRETS:
            del self._recent[next(iter(self._recent))]
        self._version += 1

    def _values(self) -> list[str]:
        values = [*self._kept, *self._recent]
        if self._parent is not None:
            values += self._parent._values()
        return values

    def _current(self) -> _Matcher | None:
        key, parent = [self._version], self._parent
        while parent is not None:  # a view of a view: every ancestor's values count
            key.append(parent._version)
            parent = parent._parent
        if key != self._built_for:
            self._matcher, self._built_for = _matcher(self._values()), key
        return self._matcher

    def scrub(self, text: str) -> str:
        """*text* without any form of a held value; where a text was cut (``…``), the start
        of a value just before the cut is masked too."""
        matcher = self._current()
        if matcher is None or not text:
            return text
        text = matcher.pattern.sub(REDACTED, text)
        if CUT_MARK in text:
            text = _mask_cuts(text, matcher)
        return text

    def scrub_error(self, err: HError) -> None:
        """Scrub, in place, everything *err* shows that came from the server: its text (and
        so ``str``, ``repr``, ``args``), the body snippet and request id of its details, its
        job status. A chained exception whose text holds a value is detached."""
        if self._current() is None:
            return
        text = self.scrub(err.text)
        if text != err.text:
            err.text = text
            err.message = f"{err.code}: {text}"
            err.args = (err.message,)
        d = err.details
        body, request_id = self.scrub(d.body), d.request_id and self.scrub(d.request_id)
        if body != d.body or request_id != d.request_id:
            err.details = attrs.evolve(d, body=body, request_id=request_id)
        job_status = getattr(err, "job_status", None)
        if isinstance(job_status, str):
            err.job_status = self.scrub(job_status)  # type: ignore[attr-defined]
        if any(self.scrub(str(exc)) != str(exc) for exc in _chain(err, None)):
            err.__cause__ = err.__context__ = None
            err.__suppress_context__ = True


#: Every Secrets still in use, for the log filter: a record does not say whose it is.
_LIVE: Final[weakref.WeakSet[Secrets]] = weakref.WeakSet()


def scrub_all(text: str) -> str:
    """*text* scrubbed of the values of every live Session's credentials: for log records
    (the transport's request id, a retried error), whichever Session they came from."""
    for secrets in list(_LIVE):
        text = secrets.scrub(text)
    return text


def _mask_cuts(text: str, matcher: _Matcher) -> str:
    """Mask the longest start of any form that ends right at a cut mark."""
    parts = text.split(CUT_MARK)
    for i, part in enumerate(parts[:-1]):
        for k in range(min(len(part), matcher.longest - 1), 0, -1):
            tail = part[-k:].lower()
            if any(form.startswith(tail) for form in matcher.forms):
                parts[i] = part[:-k] + REDACTED
                break
    return CUT_MARK.join(parts)


def _chain(err: BaseException, outer: BaseException | None) -> list[BaseException]:
    """The exceptions chained below *err* (causes and contexts), up to *outer*: the one
    that was being handled when the request began, which is the caller's, not ours."""
    found: list[BaseException] = []
    todo = [err.__cause__, err.__context__]
    while todo:
        exc = todo.pop()
        if exc is None or exc is outer or exc is err or any(exc is f for f in found):
            continue
        found.append(exc)
        todo += [exc.__cause__, exc.__context__]
    return found


def detach_frames(err: BaseException, outer: BaseException | None) -> None:
    """Drop the frames of the exceptions chained below *err* during a request (aiohttp's,
    asyncio's, a deadline's ``CancelledError``): their locals hold the request's headers and
    body bytes. Their types and messages stay. *outer*: the exception being handled when the
    request began (the caller's), left alone."""
    for exc in _chain(err, outer):
        exc.__traceback__ = None
