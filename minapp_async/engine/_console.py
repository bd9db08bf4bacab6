"""What ``minapp-async serve`` shows on the terminal as jobs run: each log line of a function as
it arrives, tagged with the function and the request, and a line when the job ends with its
status and duration."""

from __future__ import annotations

import contextlib
import datetime
from typing import TextIO

from ._jobs import Job

__all__ = ["JobConsole"]

_SHORT_ID = 8  # enough of a request id to tell concurrent jobs apart on a terminal


def _clock() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


class JobConsole:
    """Writes job activity to *stream* (a terminal, or a pipe) one flushed line at a time."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def log_line(self, job: Job, line: str) -> None:
        """One line of the job's log, ``"<ISO time> <LEVEL> <message>"`` as the worker wrote it."""
        _, _, rest = line.rstrip("\n").partition(" ")
        level, _, message = rest.partition(" ")
        self._write(
            f"{_clock()} {job.function_name} [{job.request_id[:_SHORT_ID]}] {level:<5} {message}"
        )

    def job_finished(self, job: Job) -> None:
        mode = "sync" if job.service_type == "time_sensitive" else "async"
        duration = f" in {job.execution_time_ms:.0f} ms" if job.started_at is not None else ""
        detail = f": {job.error_msg}" if job.error_msg else ""
        self._write(
            f"{_clock()} {job.function_name} [{job.request_id[:_SHORT_ID]}] {job.status}"
            f"{duration} ({mode}, request id {job.request_id}){detail}"
        )

    def _write(self, text: str) -> None:
        # Output is best effort: a closed terminal must not fail a job.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text + "\n")
            self._stream.flush()
