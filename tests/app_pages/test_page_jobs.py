"""Jobs started from pages are bounded (red-team finding R14): worker processes up to the machine's cores, and
a server-wide number running at once; a job past the limit is queued, never lost, and starts when one ends.
The CLI is never held back."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import PAGE_QUEUED, JobManager, page_worker_limit
from services.stages.download.folder_import import start_folder_import
from tests.conftest import ROOT
from tests.support.tagged_images import png


def _folder(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"p{i}.png").write_bytes(png("red", i))
    return root


def _busy_page_job(ws: Workspace) -> int:
    """A job started from a page that is running now (this test process plays its runner)."""
    manager = JobManager(ws)
    job = manager.create("import_folder", "busy", {"folder": "/nowhere", "dataset": "x", "from_page": True})
    with ws.catalog.write() as conn:
        conn.execute(
            "UPDATE jobs SET state = 'running', pid = ?, host = ?, heartbeat_at = ? WHERE id = ?",
            (os.getpid(), socket.gethostname(), time.time() + 3600, job),
        )
    return job


def test_page_workers_are_bounded_by_the_cores_and_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = os.cpu_count() or 1
    assert page_worker_limit(load_settings()) == cores
    monkeypatch.setenv("WORKBENCH_PAGE_JOBS__MAX_WORKERS", "1")
    assert page_worker_limit(load_settings()) == 1
    monkeypatch.setenv("WORKBENCH_PAGE_JOBS__MAX_WORKERS", "512")
    assert page_worker_limit(load_settings()) == cores  # never past the machine's cores


def test_a_page_job_past_the_limit_is_queued_and_starts_when_one_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_PAGE_JOBS__MAX_RUNNING", "1")
    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    first = start_folder_import(ws, manager, _folder(tmp_path / "a"), "a")
    second = start_folder_import(ws, manager, _folder(tmp_path / "b"), "b")
    assert manager.start_from_page(first)
    assert not manager.start_from_page(second)  # the first is starting: no slot
    queued = manager.progress(second)
    assert queued.state == "created" and queued.params[PAGE_QUEUED] and queued.params["from_page"]
    assert manager.wait(first, timeout=120).state == "completed"
    # the first job's process started the queued one as it ended
    assert manager.wait(second, timeout=120).state == "completed"
    assert PAGE_QUEUED not in manager.progress(second).params
    ws.close()


def test_sessions_starting_at_once_cannot_pass_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_PAGE_JOBS__MAX_RUNNING", "2")
    root = tmp_path / "ws"
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    jobs = [start_folder_import(ws, manager, _folder(tmp_path / f"f{i}"), f"f{i}") for i in range(5)]
    barrier = threading.Barrier(len(jobs))
    started: dict[int, bool] = {}

    def click(job: int) -> None:  # one dashboard session each, with its own connection
        session = Workspace(root, load_settings())
        barrier.wait()
        started[job] = JobManager(session).start_from_page(job)
        session.close()

    threads = [threading.Thread(target=click, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(started.values()) == 2, started
    for job in jobs:  # every job runs in the end: the queued ones as slots free up
        assert manager.wait(job, timeout=300).state == "completed", job
    ws.close()


def test_the_cli_is_never_held_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_PAGE_JOBS__MAX_RUNNING", "1")
    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    _busy_page_job(ws)
    assert manager.page_jobs_busy() == 1
    job = start_folder_import(ws, manager, _folder(tmp_path / "cli"), "cli")
    assert manager.run(job).state == "completed"  # what `python -m services ... jobs run` does
    ws.close()


def test_the_page_says_a_job_is_queued_and_bounds_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    monkeypatch.setenv("WORKBENCH_PAGE_JOBS__MAX_RUNNING", "1")
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, _folder(tmp_path / "imgs"), "imgs"))
    busy = _busy_page_job(ws)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/preprocess.py").run()
    assert not at.exception, at.exception
    workers = at.number_input(key="pp-workers")
    assert workers.proto.max == (os.cpu_count() or 1) and workers.value <= workers.proto.max
    at.button(key="pp-run").click().run()
    assert not at.exception, at.exception
    job = at.session_state["pp-job"]
    assert any("queued" in t.value and "page_jobs.max_running" in t.value for t in at.toast)
    assert any(i.value.startswith("Queued: 1 jobs started from pages are running") for i in at.info)
    progress = manager.progress(job)
    assert progress.state == "created" and progress.params[PAGE_QUEUED]
    with ws.catalog.write() as conn:  # the busy job ends: the next visit starts the queued one
        conn.execute("UPDATE jobs SET state = 'completed', pid = NULL WHERE id = ?", (busy,))
    at.switch_page("app_pages/home.py").run()
    assert manager.wait(job, timeout=120).state == "completed"
    assert json.loads(ws.catalog.scalar("SELECT params FROM jobs WHERE id = ?", (job,)))["from_page"] is True
    ws.close()
