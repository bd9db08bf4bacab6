"""A local 知晓云 (MinApp) cloud engine: the client and Open APIs on 127.0.0.1, real functions.

Start one with ``async with Engine(functions_dir=...) as engine`` (or ``minapp-async serve``)
and point the SDK at ``engine.url``.
"""

from __future__ import annotations

from .._protocol import JobStatus as JobStatus
from ._baas import EngineOutbox as EngineOutbox
from ._baas import EngineTables as EngineTables
from ._config import DEFAULT_CLIENT_ID as DEFAULT_CLIENT_ID
from ._config import DEFAULT_CLIENT_SECRET as DEFAULT_CLIENT_SECRET
from ._config import EngineConfig as EngineConfig
from ._engine import Engine as Engine
from ._faults import Fault as Fault
from ._faults import FaultKind as FaultKind
from ._faults import Faults as Faults
from ._jobs import EngineStats as EngineStats
from ._jobs import FunctionStats as FunctionStats
from ._jobs import Job as Job
from ._sandbox import Containment as Containment
from ._schedule import TimerStatus as TimerStatus
from ._trigger_file import TRIGGER_FILE as TRIGGER_FILE
from ._trigger_file import TriggerFileError as TriggerFileError

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "TRIGGER_FILE",
    "Containment",
    "Engine",
    "EngineConfig",
    "EngineOutbox",
    "EngineStats",
    "EngineTables",
    "Fault",
    "FaultKind",
    "Faults",
    "FunctionStats",
    "Job",
    "JobStatus",
    "TimerStatus",
    "TriggerFileError",
]

# Reprs and tracebacks say minapp_async.engine.Engine, not minapp_async.engine._engine.Engine.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
