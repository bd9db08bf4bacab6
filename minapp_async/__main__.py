"""``python -m minapp_async``: the same as the ``minapp-async`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
