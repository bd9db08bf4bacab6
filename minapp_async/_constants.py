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

#: The JS SDK stores expires_at = now + expires_in - 30 (PROTOCOL.md §5.3).
SESSION_EXPIRY_MARGIN: Final = 30
#: Refresh an Open API access token this long before it expires (or at 90% of its life).
ACCESS_TOKEN_REFRESH_MARGIN: Final = 300.0
