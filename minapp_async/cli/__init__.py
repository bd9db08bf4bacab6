"""The ``minapp-async`` command line (``python -m minapp_async`` runs it too).

Layout: ``_main`` builds the parser and runs a command; ``_options`` holds what the commands
share (the Command record, exit statuses, number and JSON types, app and credential options);
``_output`` the terminal output; one module per command (``_invoke``, ``_login`` for login and
logout, ``_map``, ``_serve``). Only ``serve`` imports the engine, and only when it is used.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
