"""Executors for shardable stages: a local process pool by default, in-process threads for small runs.

Stages take any `concurrent.futures.Executor`, so a Dask `Client.get_executor()` slots in where one
machine is not enough; this module only builds the local ones.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor


def make_executor(workers: int) -> Executor:
    """`workers` processes; 0 means run chunks in this process (one chunk at a time, threads inside)."""
    if workers <= 0:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk")
    # forkserver: the job process has threads (heartbeat, sqlite), and forking those is unsafe.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
