"""The engine's function runtime: finds cloud functions and runs them on worker processes.

``_runtime`` keeps the warm worker pool and its watchdog; ``_worker_process`` drives one worker
subprocess; ``_node_worker.cjs`` and ``_py_worker.py`` are the programs those workers run (data
files found next to this package at run time, never imported by the engine).
"""

from __future__ import annotations

from ._runtime import BaasHandler as BaasHandler
from ._runtime import FunctionFile as FunctionFile
from ._runtime import RunOutcome as RunOutcome
from ._runtime import Runtime as Runtime
from ._runtime import timed_out_message as timed_out_message

__all__ = ["BaasHandler", "FunctionFile", "RunOutcome", "Runtime", "timed_out_message"]
