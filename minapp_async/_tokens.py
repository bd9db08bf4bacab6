"""Where a user session is kept: in memory by default, or in a JSON file (mode 0600)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import attrs

from ._secrets import Secret

__all__ = ["FileTokenStore", "MemoryTokenStore", "StoredSession", "TokenStore"]


@attrs.frozen
class StoredSession:
    """A logged-in user session: what a ``TokenStore`` keeps.

    ``expires_at`` is epoch seconds, already 30 s early as in the JS SDK; ``None`` means the
    expiry is unknown (a token handed in without one) and the client never expires it.
    """

    token: str = attrs.field(repr=False, converter=Secret)  # a repr never shows it
    user_id: int | None = None
    expires_at: float | None = None
    anonymous: bool = False

    @property
    def expired(self) -> bool:
        """The session's expiry has passed."""
        return self.expires_at is not None and time.time() >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> StoredSession | None:
        """Read the stored form back; None when it is not one (a corrupt file is a logout)."""
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            return None
        user_id, expires_at = data.get("user_id"), data.get("expires_at")
        return cls(
            token=data["token"],
            user_id=user_id if isinstance(user_id, int) else None,
            expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
            anonymous=bool(data.get("anonymous")),
        )


@runtime_checkable
class TokenStore(Protocol):
    """Keeps one user session. Implement these three to keep it elsewhere (Redis, a vault…)."""

    async def load(self) -> StoredSession | None:
        """The stored session, or None."""

    async def save(self, session: StoredSession) -> None:
        """Replace the stored session."""

    async def clear(self) -> None:
        """Forget the stored session."""


@attrs.define
class MemoryTokenStore:
    """Keeps the session in memory: gone when the process ends. The default."""

    _session: StoredSession | None = attrs.field(default=None, alias="session")

    async def load(self) -> StoredSession | None:
        """The stored session, or None."""
        return self._session

    async def save(self, session: StoredSession) -> None:
        """Replace the stored session."""
        self._session = session

    async def clear(self) -> None:
        """Forget the stored session."""
        self._session = None


@attrs.define
class FileTokenStore:
    """Keeps the session in a JSON file readable by its owner only (mode 0600), so a service
    or a CLI keeps its login across restarts. Writes are atomic; file I/O runs off the loop."""

    path: Path = attrs.field(converter=Path)

    async def load(self) -> StoredSession | None:
        """The stored session; None when the file is missing or unreadable."""
        return await anyio.to_thread.run_sync(self._load)

    def _load(self) -> StoredSession | None:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return StoredSession.from_json(data)

    async def save(self, session: StoredSession) -> None:
        """Write the session atomically, with mode 0600 from the first byte."""
        await anyio.to_thread.run_sync(self._save, session)

    def _save(self, session: StoredSession) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(session.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def clear(self) -> None:
        """Delete the file."""
        await anyio.to_thread.run_sync(lambda: self.path.unlink(missing_ok=True))
