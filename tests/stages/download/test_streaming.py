"""Large CSVs are streamed: planning 10x more rows must not cost more memory (peak RSS of a fresh process)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PLAN = """
import resource, sys
from services.jobs.manager import JobManager
from services.stages.download.urls import UrlDownloadTask, start_url_download
from services.core.workspace import Workspace
ws = Workspace(sys.argv[2])
manager = JobManager(ws)
job = start_url_download(ws, manager, sys.argv[1], "big")
UrlDownloadTask().plan(ws, job, manager.params(job))
manager.recount(job)
p = manager.progress(job)
rows = ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows")
print(p.total, rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _plan(tmp_path: Path, rows: int) -> tuple[int, int, int]:
    path = tmp_path / f"rows{rows}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_link", "group_id", "entity_name", "entity_value"])
        for i in range(rows):
            writer.writerow([f"http://127.0.0.1:9/img/{i % (rows // 2)}.jpg", i, "item_weight", f"{i} gram"])
    out = subprocess.run(
        [sys.executable, "-c", PLAN, str(path), str(tmp_path / f"ws{rows}")],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    items, stored_rows, rss_kb = (int(x) for x in out.stdout.split())
    return items, stored_rows, rss_kb


def test_planning_memory_stays_flat(tmp_path: Path) -> None:
    small = _plan(tmp_path, 20_000)
    large = _plan(tmp_path, 200_000)
    assert small[:2] == (10_000, 20_000)  # each URL once, every row kept
    assert large[:2] == (100_000, 200_000)
    assert large[2] - small[2] < 20 * 1024, f"peak RSS grew from {small[2]} kB to {large[2]} kB"
