"""Which job a line of code runs for, so each job's log file holds its own lines when the worker runs several
jobs at once in one process.

`JobManager.run` sets `RUNNING_JOB` in the job's thread; threads the job starts carry it on when they are
started through `ContextThreadPoolExecutor` or `in_job_context` (a plain thread starts with an empty context).
Each job's log handler has a `JobLogFilter` that keeps the lines logged for its job, and lines logged outside
any job only while it is the one job log open in the process (a job run alone, as `jobs run` does).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

RUNNING_JOB: contextvars.ContextVar[int | None] = contextvars.ContextVar("workbench_running_job", default=None)


def in_job_context(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn` to run in another thread with the caller's context (its job id)."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.run(fn, *args, **kwargs)

    return run


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in the context of the code that submitted them."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)


class JobLogFilter(logging.Filter):
    """On a job's log handler: its own job's lines, and lines of no job while no other job log is open."""

    _open = 0
    _lock = threading.Lock()

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        with JobLogFilter._lock:
            JobLogFilter._open += 1

    def close(self) -> None:
        with JobLogFilter._lock:
            JobLogFilter._open -= 1

    def filter(self, record: logging.LogRecord) -> bool:
        running = RUNNING_JOB.get()
        if running is not None:
            return running == self.job_id
        return JobLogFilter._open <= 1
