"""Soak: N URLs from the loopback fault server, a SIGKILL of the whole job in the middle, a resume; every row
must end ok or failed with a class, none lost or duplicated, memory flat.

    python benchmarks/soak.py [--n 50000] [--kill-at 0.4]

Faults: 429 then ok, 503 then ok, 404, truncated bodies, non-images, slow answers, and repeated URLs.
The job runs as `python -m services download urls` (2 worker processes); its process tree's RSS is sampled
every 0.5 s in both halves. The test suite runs the same check at a smaller N (tests/jobs/test_soak.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from common import machine_description  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.jobs.manager import JobManager  # noqa: E402
from tests.support.image_server import ImageServer, make_jpeg  # noqa: E402

HEADER = ["image_link", "group_id", "entity_name", "entity_value"]


def make_rows(server: ImageServer, n: int, seed: int = 0) -> tuple[list[list[str]], int]:
    """N rows of URLs with faults mixed in; returns the rows and how many should end ok."""
    rng = random.Random(seed)
    rows, expect_ok = [], 0
    for i in range(n):
        roll = rng.random()
        name = f"s{i}.jpg"
        server.add(name, make_jpeg(24, 24, seed=i))
        if roll < 0.05 and i > 0:
            url, ok = rows[rng.randrange(len(rows))][0], None  # a repeated URL: same outcome as its first
        elif roll < 0.10:
            url, ok = server.url(f"/r429/1/{name}"), True
        elif roll < 0.15:
            url, ok = server.url(f"/r503/1/{name}"), True
        elif roll < 0.20:
            url, ok = server.url("/status/404") + f"?{i}", False
        elif roll < 0.23:
            url, ok = server.url(f"/truncated/{name}"), False
        elif roll < 0.26:
            url, ok = server.url("/notimage") + f"?{i}", False
        elif roll < 0.30:
            url, ok = server.url(f"/slow/0.2/{name}"), True
        else:
            url, ok = server.url(f"/img/{name}"), True
        rows.append([url, str(i), "item_weight", f"{i} gram"])
        expect_ok += 1 if ok else 0
    return rows, expect_ok


def tree_rss(proc: psutil.Process) -> int:
    try:
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def run_phase(cmd: list[str], env: dict[str, str], kill_when: Callable[[], bool] | None) -> tuple[int, list[int]]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    ps = psutil.Process(proc.pid)
    samples = []
    while proc.poll() is None:
        samples.append(tree_rss(ps))
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9, samples
        time.sleep(0.5)
    return proc.returncode, samples


def soak(n: int, kill_at: float, workdir: Path) -> dict[str, object]:
    server = ImageServer().start()
    try:
        rows, _ = make_rows(server, n)
        csv_path = workdir / "soak.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(rows)
        ws_root = workdir / "ws"
        env = dict(os.environ, PYTHONPATH=str(ROOT), WORKBENCH_DOWNLOAD__ALLOWED_NETWORKS='["127.0.0.0/8"]',
                   WORKBENCH_DOWNLOAD__BACKOFF_BASE="0.1", WORKBENCH_DOWNLOAD__READ_TIMEOUT="5")  # fmt: skip
        base = [sys.executable, "-m", "services", "--workspace", str(ws_root)]
        ws = Workspace(ws_root, load_settings(workspace=ws_root))
        manager = JobManager(ws)

        def halfway() -> bool:
            try:
                p = manager.progress(1)
            except Exception:  # the job row does not exist yet
                return False
            return p.total > 0 and (p.done + p.failed) >= kill_at * p.total

        started = time.monotonic()
        rc1, first = run_phase([*base, "download", "urls", str(csv_path), "--dataset", "soak", "--workers", "2"], env,
                               halfway)  # fmt: skip
        at_kill = manager.progress(1)
        rc2, second = run_phase([*base, "jobs", "resume", "1"], env, None)
        elapsed = time.monotonic() - started
        p = manager.progress(1)
        with open(ws_root / "exports" / "soak-job1.csv", newline="", encoding="utf-8") as fh:
            labelled = list(csv.DictReader(fh))
        statuses = [r["status"] for r in labelled]
        unclassed = [r for r in labelled if r["status"] != "ok" and not r["error"].split(":")[0]]
        unique_urls = len({r[0] for r in rows})
        result = {
            "rows": n,
            "unique_urls": unique_urls,
            "killed_at_done": at_kill.done + at_kill.failed,
            "first_exit": rc1,
            "resume_exit": rc2,
            "state": p.state,
            "items_ok": p.done,
            "items_failed": p.failed,
            "items_pending": p.pending,
            "labelled_rows": len(labelled),
            "rows_ok": statuses.count("ok"),
            "rows_failed": len(statuses) - statuses.count("ok"),
            "failed_without_class": len(unclassed),
            "job_items": ws.catalog.scalar("SELECT COUNT(*) FROM job_items WHERE job_id = 1"),
            "images_stored": ws.catalog.scalar("SELECT COUNT(*) FROM images WHERE is_placeholder = 0"),
            "peak_rss_mb_first": round(max(first or [0]) / 2**20),
            "peak_rss_mb_resume": round(max(second or [0]) / 2**20),
            "seconds": round(elapsed, 1),
        }
        ws.close()
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--kill-at", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(args.n, args.kill_at, Path(tmp))
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    checks = {
        "every row ended ok or failed with a class": result["failed_without_class"] == 0
        and result["labelled_rows"] == result["rows"],
        "no item lost or duplicated": result["job_items"] == result["unique_urls"] and result["items_pending"] == 0,
        "memory flat (resume peak <= 1.5x first)": result["peak_rss_mb_resume"] <= 1.5 * result["peak_rss_mb_first"],
    }
    for check, ok in checks.items():
        print(f"{check}: {'met' if ok else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "soak", "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), **result}
    args.out.write_text(json.dumps({**report, "checks": checks}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
