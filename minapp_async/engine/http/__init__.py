"""The engine's HTTP side: one aiohttp application serving the client API and the Open API.

``_client_api`` (hserve) and ``_open_api`` (oserve and its OAuth flow) hold the routes;
``_functions_api`` (function management, for mincloud), ``_webhooks`` (incoming webhooks) and
``_timers_api`` (the engine's own timer endpoints) add theirs; ``_invoking`` runs a function
for the client and Open APIs; ``_middleware`` (state, errors, request ids, faults, the Host
check, CORS) and ``_parsing`` (bodies and parameters) are what every route shares;
``_server`` is the connection side (idle timeout, JSON replies to malformed HTTP).
"""

from __future__ import annotations

from aiohttp import web

from ._client_api import add_client_api_routes
from ._functions_api import add_functions_api_routes
from ._middleware import STATE, AppState, add_request_id, serve_middleware
from ._open_api import add_open_api_routes
from ._server import EngineSite
from ._timers_api import add_timers_api_routes
from ._webhooks import TRIGGERS, add_webhook_routes

__all__ = ["TRIGGERS", "AppState", "EngineSite", "create_app"]


def create_app(state: AppState) -> web.Application:
    """The engine's aiohttp application over *state*."""
    app = web.Application(
        middlewares=[serve_middleware], client_max_size=state.config.max_body_bytes
    )
    app[STATE] = state
    app.on_response_prepare.append(add_request_id)
    add_client_api_routes(app.router)
    add_open_api_routes(app.router)
    add_functions_api_routes(app)
    add_webhook_routes(app.router)
    add_timers_api_routes(app.router)
    return app
