"""Kill a download with SIGKILL mid-run (its whole process group, as a crash or restart would), resume it,
and check the ledger: every row ends ok or failed with a class, nothing finished before the kill is fetched
again, and no row or image is duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from tests.conftest import ROOT, read_csv, write_csv
from tests.support.image_server import ImageServer, make_jpeg
from tests.support.journals import finished_at_kill

N = 240
WORKERS = 2
THREADS = 8


def _cli(ws_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "services", "--workspace", str(ws_root), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["WORKBENCH_DOWNLOAD__THREADS_PER_WORKER"] = str(THREADS)
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_sigkill_mid_run_then_resume(image_server: ImageServer, tmp_path: Path) -> None:
    for i in range(N):
        image_server.add(f"k{i}.jpg", make_jpeg(64, 64, seed=i))
    rows = [[image_server.url(f"/slow/0.05/k{i}.jpg"), str(i), "item_weight", f"{i} g"] for i in range(N)]
    rows += [[image_server.url("/status/404"), "x", "e", "v"], rows[0]]  # a failure and a repeated URL
    csv_path = write_csv(tmp_path / "train.csv", ["image_link", "group_id", "entity_name", "entity_value"], rows)
    ws_root = tmp_path / "ws"

    proc = subprocess.Popen(
        _cli(ws_root, "download", "urls", str(csv_path), "--dataset", "kill", "--workers", str(WORKERS)),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ws = Workspace(ws_root, load_settings())
    manager = JobManager(ws)
    deadline = time.time() + 60
    while time.time() < deadline:
        if ws.catalog.scalar("SELECT COALESCE(MAX(n_ok), 0) FROM jobs") >= 40:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)

    job_id = 1
    p = manager.progress(job_id)
    assert p.state == "interrupted"
    assert p.done < N, "the kill came too late to test anything"
    # what was finished at the moment of the kill: committed items plus journaled ones
    finished = finished_at_kill(ws, job_id)
    fetched_before = image_server.completed()

    resumed = subprocess.run(
        _cli(ws_root, "jobs", "resume", str(job_id)), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    p = manager.progress(job_id)
    assert (p.state, p.total, p.done, p.failed) == ("completed", N + 1, N, 1)

    fetched_after = image_server.completed()
    refetched = {path for path, count in fetched_after.items() if count > 1}
    finished_paths = {k.replace(image_server.base, "") for k in finished}
    assert not (refetched & finished_paths), "an item finished before the kill was fetched again"
    assert len(refetched) <= WORKERS * THREADS * 2  # at most what was in flight when the kill came
    assert sum(fetched_after.values()) - sum(fetched_before.values()) <= N - len(finished_paths) + len(refetched)

    out = read_csv(ws.root / "exports" / f"kill-job{job_id}.csv")
    assert len(out) == N + 2
    assert all(r["status"] == "ok" or r["error"].startswith("http_4xx") for r in out)
    assert ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows") == N + 2
    assert ws.catalog.scalar("SELECT COUNT(*) FROM images") == N
    stored = list((ws.root / "images").rglob("*.jpg"))
    assert len(stored) == N
    assert not list((ws.root / "images").rglob("*.tmp"))
    ws.close()
