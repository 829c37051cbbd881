"""The job manager's lifecycle and the CLI as a user runs it: real subprocesses, background runs, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.core.workspace import Workspace
from services.jobs.manager import JobBusyError, JobError, JobManager
from services.stages.download.urls import start_url_download
from tests.conftest import ROOT, read_csv, write_csv
from tests.support.image_server import ImageServer, make_jpeg

HEADER = ["image_link", "group_id", "entity_name", "entity_value"]


def cli(ws_root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws_root), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_interrupted_job_is_detected_and_cannot_be_run_twice(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    url = image_server.add("a.jpg", make_jpeg(20, 20))
    job_id = start_url_download(ws, manager, write_csv(tmp_path / "t.csv", HEADER, [[url, "1", "e", "v"]]), "d")
    # a live runner (this process) holds the job
    with ws.catalog.write() as conn:
        conn.execute(
            "UPDATE jobs SET state = 'running', pid = ?, host = ?, heartbeat_at = ? WHERE id = ?",
            (os.getpid(), os.uname().nodename, time.time(), job_id),
        )
    assert manager.progress(job_id).state == "running"
    with pytest.raises(JobBusyError):
        manager.run(job_id)
    # its process is gone: the job shows as interrupted and can be resumed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with ws.catalog.write() as conn:
        conn.execute("UPDATE jobs SET pid = ? WHERE id = ?", (dead.pid, job_id))
    assert manager.progress(job_id).state == "interrupted"
    assert manager.run(job_id).state == "completed"


def test_unknown_job_and_kind(manager: JobManager) -> None:
    with pytest.raises(JobError, match="no job with id 99"):
        manager.progress(99)
    with pytest.raises(JobError, match="unknown job kind"):
        manager.create("nope", "t", {})


def test_cli_download_show_retry_export(image_server: ImageServer, tmp_path: Path) -> None:
    good = image_server.add("g.jpg", make_jpeg(40, 30, seed=1))
    late = image_server.url("/img/late.jpg")
    csv_path = write_csv(tmp_path / "train.csv", HEADER, [[good, "1", "e", "5 g"], [late, "2", "e", "6 g"]])
    ws_root = tmp_path / "ws"
    out = tmp_path / "labelled.csv"

    r = cli(ws_root, "download", "urls", str(csv_path), "--dataset", "train", "--resize", "16", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "job 1 [completed] 1 ok, 1 failed, 2 total" in r.stdout
    assert "failures by class: http_4xx=1" in r.stdout
    assert [row["status"] for row in read_csv(out)] == ["ok", "failed"]

    shown = cli(ws_root, "jobs", "show", "1")
    assert "late.jpg: http_4xx: HTTP 404" in shown.stdout and "log:" in shown.stdout

    image_server.add("late.jpg", make_jpeg(10, 10, seed=2))
    retried = cli(ws_root, "jobs", "retry-failed", "1")
    assert retried.returncode == 0, retried.stderr
    assert "1 failed items of job 1 queued again" in retried.stdout
    assert [row["status"] for row in read_csv(out)] == ["ok", "ok"]

    exported = tmp_path / "again.csv"
    assert cli(ws_root, "jobs", "export", "1", "--out", str(exported)).returncode == 0
    assert read_csv(exported)[1]["entity_value"] == "6 g"
    listed = cli(ws_root, "jobs", "list")
    assert "job 1 [completed] 2 ok, 0 failed" in listed.stdout
    info = cli(ws_root, "workspace", "info")
    assert "images: 2" in info.stdout

    bad = cli(ws_root, "download", "urls", str(csv_path), "--dataset", "other", "--url-column", "link")
    assert bad.returncode == 2
    assert "no column 'link'; columns are image_link, group_id, entity_name, entity_value" in bad.stderr
    assert cli(ws_root, "jobs", "resume", "42").returncode == 2


def test_cli_background_run_cancel_and_resume(image_server: ImageServer, tmp_path: Path) -> None:
    for i in range(60):
        image_server.add(f"s{i}.jpg", make_jpeg(16, 16, seed=i))
    rows = [[image_server.url(f"/slow/0.25/s{i}.jpg"), str(i), "e", "v"] for i in range(60)]
    csv_path = write_csv(tmp_path / "train.csv", HEADER, rows)
    ws_root = tmp_path / "ws"
    started = cli(ws_root, "download", "urls", str(csv_path), "--dataset", "bg", "--background")
    assert started.returncode == 0, started.stderr
    assert "started in the background" in started.stdout

    ws = Workspace(ws_root)
    manager = JobManager(ws)
    deadline = time.time() + 30
    while manager.progress(1).done < 5 and time.time() < deadline:
        time.sleep(0.1)
    assert manager.progress(1).state == "running"
    cancelled = cli(ws_root, "jobs", "cancel", "1", "--wait", "30")
    assert "job 1: cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    p = manager.progress(1)
    assert p.state == "cancelled" and 0 < p.done < 60

    resumed = cli(ws_root, "jobs", "resume", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert manager.progress(1).done == 60
    assert max(image_server.completed().values()) == 1
    ws.close()
