"""Type aliases and the "not given" sentinel, kept apart from logic."""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, TypeAlias

#: Any value JSON can carry. Kept loose on purpose: users pass plain dicts and lists.
JSON: TypeAlias = Any


class _NotGiven(enum.Enum):
    """Marks an argument that was left out, where ``None`` has its own meaning."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = _NotGiven.NOT_GIVEN
NotGiven: TypeAlias = Literal[_NotGiven.NOT_GIVEN]
