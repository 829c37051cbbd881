"""Executors for shardable stages: a local process pool by default, in-process threads for small runs, or a
Dask cluster (`dask://HOST:PORT`) when one machine is not enough.

Stages take any `concurrent.futures.Executor`; a Dask `Client.get_executor()` is one. Chunk functions are
top-level and their options plain data, so they pickle to remote workers; workers need this package and the
workspace at the same path (a shared filesystem), and write only files named by content hash; results come
back to the job process, which alone writes the catalog.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor

from services.core.errors import WorkbenchError
from services.core.network_policy import ParsedUrl, UrlRefused, parse_url
from services.jobs.job_context import ContextThreadPoolExecutor

LOCAL = ("", "local")
FORM = "use local or dask://HOST:PORT (a Dask scheduler)"


def make_executor(workers: int) -> Executor:
    """`workers` processes; 0 means run chunks in this process (one chunk at a time, threads inside)."""
    if workers <= 0:
        return ContextThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk")
    # forkserver: the job process has threads (heartbeat, sqlite), and forking those is unsafe.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


class ExecutorError(WorkbenchError, ValueError):
    error_class = "executor"
    http_status = 400


def _parse_executor_url(url: str) -> ParsedUrl:
    try:
        parsed = parse_url(url, ("dask",), require_port=True)
    except UrlRefused as exc:
        raise ExecutorError(f"executor {exc.message}; {FORM}") from None
    if parsed.target != "/":
        raise ExecutorError(f"executor {url!r}: a scheduler address has no path; {FORM}")
    return parsed


def check_executor_url(url: str | None) -> str | None:
    """None for local execution, else a normalised `dask://host:port`; raises with the expected form. The
    address goes through the network policy's strict parser (scheme, host, port 1-65535, no userinfo)."""
    if url is None or url.strip().lower() in LOCAL:
        return None
    return f"dask://{_parse_executor_url(url).host_header}"


def check_page_executor(url: str | None, listed: Iterable[str], restricted: bool) -> str | None:
    """The executor a dashboard user chose: on a server with sign-in (`restricted`), only a scheduler an
    administrator listed in `dask_schedulers` (or local); on an open workbench, any valid address."""
    checked = check_executor_url(url)
    if checked is None or not restricted:
        return checked
    if checked not in listed_schedulers(listed):
        raise ExecutorError(
            f"executor {checked}: this server has sign-in, so pages may use only the Dask schedulers an "
            "administrator lists in the dask_schedulers setting"
        )
    return checked


def listed_schedulers(listed: Iterable[str]) -> list[str]:
    """The administrator's `dask_schedulers`, normalised; an invalid entry raises naming it."""
    out: list[str] = []
    for entry in listed:
        checked = check_executor_url(entry)
        if checked is not None and checked not in out:
            out.append(checked)
    return out


def executor_from_url(url: str, timeout: float = 10.0) -> tuple[Executor, Callable[[], None]]:
    """An executor on the Dask scheduler at `dask://host:port`, and how to let go of it."""
    checked = check_executor_url(url)
    if checked is None:
        raise ExecutorError("a local run needs no executor URL")
    from distributed import Client

    try:
        client = Client(f"tcp://{_parse_executor_url(checked).host_header}", timeout=timeout)
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Dask scheduler at {checked}: {exc}") from None
    executor = client.get_executor()

    def close() -> None:
        executor.shutdown(wait=True)
        client.close()

    return executor, close
