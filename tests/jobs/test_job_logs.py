"""Each job's log holds its own lines when the worker runs several jobs at once in one process (issue 18): a
real worker, two real downloads that overlap in time, and the threads a job starts carrying its id."""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.core.workspace import Workspace
from services.jobs.executors import make_executor
from services.jobs.job_context import RUNNING_JOB, JobLogFilter
from services.jobs.manager import JobManager
from services.jobs.worker import Worker
from services.stages.download.urls import start_url_download
from tests.conftest import write_csv
from tests.support.image_server import ImageServer, make_jpeg


def test_two_jobs_side_by_side_in_the_worker_each_log_only_their_own_lines(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
):
    jobs = []
    for k in range(2):
        for i in range(6):
            image_server.add(f"s{k}{i}.jpg", make_jpeg(32, 24, seed=10 * k + i))
        rows = [[image_server.url(f"/slow/0.5/s{k}{i}.jpg")] for i in range(6)]
        job_id = start_url_download(ws, manager, write_csv(tmp_path / f"u{k}.csv", ["image_link"], rows), f"set{k}",
                                    workers=0)  # fmt: skip
        manager.hand_to_worker(job_id)
        jobs.append(job_id)
    Worker(ws).serve(max_jobs=2)
    spans = []
    for job_id, other in zip(jobs, reversed(jobs), strict=True):
        assert manager.progress(job_id).state == "completed"
        text = Path(manager.progress(job_id).log_path or "").read_text()
        assert f"job {job_id} (download_urls) running" in text and f"job {job_id} completed" in text
        assert not re.search(rf"\bjob {other}\b", text), text  # the other job's lines went to its own log
        stamps = re.findall(r"^(\S+ \S+) INFO", text, flags=re.M)
        spans.append((stamps[0], stamps[-1]))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they did run at the same time


def test_threads_a_job_starts_carry_its_id_to_the_log_filter(tmp_path: Path):
    token = RUNNING_JOB.set(7)
    try:
        with make_executor(0) as pool:  # the in-process chunk executor
            assert pool.submit(RUNNING_JOB.get).result() == 7
        with ThreadPoolExecutor(1) as plain:  # a plain pool starts with an empty context: why the product's copies it
            assert plain.submit(RUNNING_JOB.get).result() is None
    finally:
        RUNNING_JOB.reset(token)
    mine, other = JobLogFilter(7), JobLogFilter(8)
    try:
        record = logging.LogRecord("services.x", logging.INFO, __file__, 1, "line", None, None)
        token = RUNNING_JOB.set(7)
        assert mine.filter(record) and not other.filter(record)
        RUNNING_JOB.reset(token)
        assert not mine.filter(record)  # a line of no job, while two job logs are open: neither takes it
        other.close()
        assert mine.filter(record)  # one job log open (a job run alone): it takes every line
    finally:
        mine.close()
