"""The SDK's one logger, ``minapp_async``: quiet unless the application configures logging,
with secrets redacted from every record at every level.

Set ``MINAPP_ASYNC_LOG=debug`` (or ``info``, ``warning``) to get a stderr handler without
configuring logging yourself.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

from ._redact import redact_text
from ._secrets import scrub_all

__all__ = ["get_logger"]

ENV_VAR: Final = "MINAPP_ASYNC_LOG"


class _Redact(logging.Filter):
    """Rewrites a record whose text holds a secret: by key (token, password, client secret),
    and by the exact values every live Session holds."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_all(redact_text(message))
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACT: Final = _Redact()


def get_logger(name: str = "minapp_async") -> logging.Logger:
    """The ``minapp_async`` logger or one of its children, with redaction attached."""
    logger = logging.getLogger(name)
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)
    return logger


def _setup() -> None:
    root = get_logger()
    root.addHandler(logging.NullHandler())
    level = os.environ.get(ENV_VAR, "").strip().upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_REDACT)  # also covers child loggers' records
        root.addHandler(handler)
        root.setLevel(level)


_setup()
