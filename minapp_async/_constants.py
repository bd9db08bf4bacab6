"""Every default in one place, so the README can quote them and tests can find them."""

from __future__ import annotations

from typing import Final

from ._protocol import SYNC_TIME_LIMIT
from ._version import __version__

#: Sent as X-Hydrogen-Client-Version; the JS SDK sends its own version with a "v" prefix.
CLIENT_VERSION: Final = f"v{__version__}"
#: X-Hydrogen-Client-Platform. The server knows WEB, WECHAT, FLUTTER, NATIVE_IOS, … but no
#: Python value; a server-side Python caller is closest to the web build (no mini-program
#: login, plain HTTP), so we send WEB. Override with Session(platform=...).
DEFAULT_PLATFORM: Final = "WEB"
SDK_TYPE: Final = "file"
USER_AGENT: Final = f"minapp-async/{__version__}"

CLIENT_API_HOST: Final = "https://{client_id}.myminapp.com"
OPEN_API_HOST: Final = "https://cloud.minapp.com"

#: A sync call's client deadline: the platform's 5 s plus a margin for the network and auth.
SYNC_DEADLINE: Final = SYNC_TIME_LIMIT + 5.0
#: A sync=False call only waits for the acknowledgement.
ACK_DEADLINE: Final = 5.0
CONNECT_TIMEOUT: Final = 5.0

MAX_CONNECTIONS: Final = 100
KEEPALIVE_TIMEOUT: Final = 15.0
#: The largest reply body read, on the wire and again after decompression: far above any
#: function result (the platform caps them well below), far below what hurts a process.
MAX_REPLY_BYTES: Final = 32 * 1024 * 1024
#: The longest deadline or timeout accepted (a week): longer ones are typos or overflows
#: (``inf``, ``1e308``) that would break timer arithmetic, not deadlines.
MAX_DEADLINE: Final = 7 * 24 * 3600.0

#: The JS SDK stores expires_at = now + expires_in - 30 (PROTOCOL.md §5.3); the margin is
#: min(this, LIFETIME_MARGIN_SHARE of the lifetime), so a short session is still used.
SESSION_EXPIRY_MARGIN: Final = 30
#: Refresh an Open API access token this long before it expires (or at 90% of its life).
ACCESS_TOKEN_REFRESH_MARGIN: Final = 300.0
#: The margin before a credential's expiry is at most this share of its lifetime.
LIFETIME_MARGIN_SHARE: Final = 0.1
#: A credential the server has just issued is used for at least this long, whatever its
#: expires_in (0, negative): a server wrong about it costs one login per second, not per call.
MIN_CREDENTIAL_USE: Final = 1.0
#: Longer lifetimes are taken as this (10 years): an absurd expires_in never overflows.
MAX_CREDENTIAL_LIFETIME: Final = 10 * 365 * 86400.0
#: After a refused login or token request (4xx), new calls share that failure for this long
#: before one of them may try again; it doubles with each refusal in a row, up to the max.
AUTH_COOLDOWN: Final = 1.0
AUTH_COOLDOWN_MAX: Final = 30.0
