"""minapp_async: the asyncio SDK for 知晓云 (MinApp) cloud functions."""

from __future__ import annotations

from ._auth import Auth as Auth
from ._auth import CurrentUser as CurrentUser
from ._auth import UserCredentials as UserCredentials
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BadRequestError as BadRequestError
from ._errors import ErrorDetails as ErrorDetails
from ._errors import ForbiddenError as ForbiddenError
from ._errors import FunctionError as FunctionError
from ._errors import HError as HError
from ._errors import HTTPError as HTTPError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import NetworkError as NetworkError
from ._errors import NotFoundError as NotFoundError
from ._errors import PayloadTooLargeError as PayloadTooLargeError
from ._errors import PoolTimeoutError as PoolTimeoutError
from ._errors import RateLimitError as RateLimitError
from ._errors import RequestTimeoutError as RequestTimeoutError
from ._errors import ResponseFormatError as ResponseFormatError
from ._errors import ServerError as ServerError
from ._errors import SessionClosedError as SessionClosedError
from ._errors import SessionMissingError as SessionMissingError
from ._fanout import Batch as Batch
from ._fanout import FanOut as FanOut
from ._fanout import Outcome as Outcome
from ._fanout import PoolSizeWarning as PoolSizeWarning
from ._fanout import Summary as Summary
from ._hooks import CallInfo as CallInfo
from ._invoke import InvokeResult as InvokeResult
from ._options import Limits as Limits
from ._options import Timeouts as Timeouts
from ._promise import Promise as Promise
from ._retry import Retry as Retry
from ._session import InsecureURLWarning as InsecureURLWarning
from ._session import PoolStats as PoolStats
from ._session import Session as Session
from ._tokens import FileTokenStore as FileTokenStore
from ._tokens import MemoryTokenStore as MemoryTokenStore
from ._tokens import StoredSession as StoredSession
from ._tokens import TokenStore as TokenStore
from ._version import __version__ as __version__

__all__ = [
    "Auth",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "CallInfo",
    "CurrentUser",
    "ErrorDetails",
    "FanOut",
    "FileTokenStore",
    "ForbiddenError",
    "FunctionError",
    "HError",
    "HTTPError",
    "InsecureURLWarning",
    "InvalidArgumentError",
    "InvokeResult",
    "Limits",
    "MemoryTokenStore",
    "NetworkError",
    "NotFoundError",
    "Outcome",
    "PayloadTooLargeError",
    "PoolSizeWarning",
    "PoolStats",
    "PoolTimeoutError",
    "Promise",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseFormatError",
    "Retry",
    "ServerError",
    "Session",
    "SessionClosedError",
    "SessionMissingError",
    "StoredSession",
    "Summary",
    "Timeouts",
    "TokenStore",
    "UserCredentials",
    "__version__",
]

# Tracebacks and reprs say minapp_async.HError, not minapp_async._errors.HError.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
