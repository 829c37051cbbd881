"""Executors for shardable stages: a local process pool by default, in-process threads for small runs, or a
Dask cluster (`dask://HOST:PORT`) when one machine is not enough.

Stages take any `concurrent.futures.Executor`; a Dask `Client.get_executor()` is one. Chunk functions are
top-level and their options plain data, so they pickle to remote workers; workers need this package and the
workspace at the same path (a shared filesystem), and write only files named by content hash; results come
back to the job process, which alone writes the catalog.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from urllib.parse import urlsplit

LOCAL = ("", "local")


def make_executor(workers: int) -> Executor:
    """`workers` processes; 0 means run chunks in this process (one chunk at a time, threads inside)."""
    if workers <= 0:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk")
    # forkserver: the job process has threads (heartbeat, sqlite), and forking those is unsafe.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


class ExecutorError(ValueError):
    pass


def check_executor_url(url: str | None) -> str | None:
    """None for local execution, else a normalised `dask://host:port`; raises with the expected form."""
    if url is None or url.strip().lower() in LOCAL:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme != "dask" or not parts.hostname or not parts.port:
        raise ExecutorError(f"executor {url!r}: use local or dask://HOST:PORT (a Dask scheduler)")
    return f"dask://{parts.hostname}:{parts.port}"


def executor_from_url(url: str, timeout: float = 10.0) -> tuple[Executor, Callable[[], None]]:
    """An executor on the Dask scheduler at `dask://host:port`, and how to let go of it."""
    checked = check_executor_url(url)
    if checked is None:
        raise ExecutorError("a local run needs no executor URL")
    from distributed import Client

    parts = urlsplit(checked)
    try:
        client = Client(f"tcp://{parts.hostname}:{parts.port}", timeout=timeout)
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Dask scheduler at {checked}: {exc}") from None
    executor = client.get_executor()

    def close() -> None:
        executor.shutdown(wait=True)
        client.close()

    return executor, close
