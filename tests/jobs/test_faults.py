"""Faults that must lose nothing: a missing, emptied or damaged catalog, a disk that fills mid-job, temporary
files left by killed runs, and CLI errors that end as one clear line (the trace only with --debug)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.catalog import CatalogError
from services.core.settings import load_settings
from services.core.workspace import Workspace, remove_stale_temp_files
from services.jobs.manager import JobManager, _read_stop_reason, _reserve_stop_reason, _write_stop_reason
from services.stages.download.urls import start_url_download
from tests.conftest import ROOT, read_csv, write_csv
from tests.support.image_server import ImageServer, make_jpeg

HEADER = ["image_link", "group_id", "entity_name", "entity_value"]
SECRET = "sk-do-not-show-me-0123456789"


def cli(ws_root: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws_root), *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's progress bar (carriage-return updates)."""
    return [line for line in stderr.splitlines() if line.strip() and "\r" not in line and "it/s" not in line]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def workspace_with_images(root: Path) -> Path:
    ws = Workspace(root, load_settings())
    (ws.root / "images" / "ab").mkdir(parents=True)
    (ws.root / "images" / "ab" / ("ab" + "0" * 62 + ".jpg")).write_bytes(make_jpeg(8, 8))
    ws.close()
    return root


# --- the catalog ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["deleted", "zero-bytes", "corrupt"])
def test_a_lost_catalog_over_content_is_refused_with_the_fix_and_nothing_is_recreated(tmp_path: Path, fault: str):
    root = workspace_with_images(tmp_path / "ws")
    catalog = root / "catalog.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    if fault == "deleted":
        catalog.unlink()
    elif fault == "zero-bytes":
        catalog.write_bytes(b"")
    else:
        catalog.write_bytes(b"this is no sqlite database, just bytes " * 200)
    before = catalog.read_bytes() if catalog.exists() else None

    with pytest.raises(CatalogError) as raised:
        Workspace(root, load_settings())
    message = str(raised.value)
    assert str(catalog) in message and "nothing was changed" in message and "backup" in message
    assert ("damaged" in message) == (fault == "corrupt")
    assert "holds images/" in message or fault == "corrupt"

    run = cli(root, "datasets", "list")
    assert run.returncode == 2 and run.stdout == ""
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(catalog) in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    # nothing recreated, nothing changed
    assert (catalog.read_bytes() if catalog.exists() else None) == before
    assert not Path(f"{catalog}-wal").exists() and not Path(f"{catalog}-shm").exists()

    # the recovery the message names: set the old file aside, start a new catalog, import the images again
    fixed = cli(root, "workspace", "new-catalog", "--yes")
    assert fixed.returncode == 0, fixed.stderr
    assert cli(root, "datasets", "list").stdout.strip() == "no datasets yet"
    if before is not None:
        kept = list(root.glob("catalog.sqlite.broken-*"))
        assert [p.read_bytes() for p in kept] == [before]
    again = cli(root, "download", "folder", str(root / "images"), "--dataset", "recovered")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "recovered\tkind=folder\trows=1\timages=1" in cli(root, "datasets", "list").stdout


def test_the_dashboard_says_what_is_wrong_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    root = workspace_with_images(tmp_path / "ws")
    (root / "catalog.sqlite").write_bytes(b"")
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert len(at.error) == 1 and "is empty (0 bytes)" in at.error[0].value and "new-catalog" in at.error[0].value
    assert (root / "catalog.sqlite").stat().st_size == 0


def test_an_empty_folder_still_gets_a_new_catalog_and_a_good_one_is_never_replaced(tmp_path: Path):
    ws = Workspace(tmp_path / "fresh", load_settings())  # no content: a new catalog is what the user wants
    assert ws.catalog.schema_version >= 4
    ws.close()
    kept = cli(tmp_path / "fresh", "workspace", "new-catalog", "--yes")
    assert kept.returncode == 2 and "opens fine; nothing was changed" in kept.stderr
    assert not list((tmp_path / "fresh").glob("catalog.sqlite.broken-*"))


# --- a full disk -----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MiB filesystem (tmpfs); `remount(size)` frees space. The project's machines run as root."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    assert done.returncode == 0, f"mounting a tmpfs needs root: {done.stderr.decode()}"
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


def test_disk_full_mid_job_interrupts_with_the_cause_and_resume_loses_nothing(
    small_disk: Path, image_server: ImageServer, tmp_path: Path
):
    images = {f"n{i}.jpg": make_jpeg(300, 300, seed=i, noise=True) for i in range(50)}  # ~83 KB each, 4 MB
    rows = [[image_server.add(name, data), str(i), "e", f"{i} g"] for i, (name, data) in enumerate(images.items())]
    source = write_csv(tmp_path / "train.csv", HEADER, rows)
    ws_root = small_disk / "ws"

    run = cli(ws_root, "download", "urls", str(source), "--dataset", "big")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    last = error_lines(run.stderr)[-1]
    assert last.startswith("error: job 1 interrupted: disk full") and "jobs resume 1" in last, run.stderr

    ws = Workspace(ws_root, load_settings())
    manager = JobManager(ws)
    p = manager.progress(1)
    assert p.state == "interrupted" and p.error and p.error.startswith("disk full"), p
    assert p.total > 0 and p.failed == 0 and p.done < 50  # no item blamed for the disk
    assert manager.failure_counts(1) == {}
    assert cli(ws_root, "jobs", "show", "1").stdout.count("disk full") == 1

    remount(small_disk, "64m")  # space freed
    resumed = cli(ws_root, "jobs", "resume", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    p = manager.progress(1)
    assert (p.state, p.done, p.failed, p.total) == ("completed", 50, 0, 50)
    stored = ws.catalog.query("SELECT hash, path FROM images")
    assert len(stored) == 50  # each image once
    assert {r["hash"] for r in stored} == {hashlib.sha256(d).hexdigest() for d in images.values()}
    for r in stored:
        assert hashlib.sha256((ws_root / r["path"]).read_bytes()).hexdigest() == r["hash"]
    labelled = read_csv(ws_root / "exports" / "big-job1.csv")
    assert len(labelled) == 50 and {r["status"] for r in labelled} == {"ok"}
    assert ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows") == 50  # planned rows not doubled
    assert not [p for p in (ws_root / "tmp").rglob("*") if p.is_file()]  # no temporary file left
    ws.close()


def test_the_stop_reason_can_be_written_on_a_full_disk_and_names_the_cause(small_disk: Path, tmp_path: Path):
    """When not even the final UPDATE fits, the row keeps `running` with a dead pid (read as interrupted) and
    the cause comes from the stop-reason file reserved when the run began."""
    ws = Workspace(small_disk / "ws", load_settings())
    manager = JobManager(ws)
    job_id = manager.create("download_urls", "t", {"dataset": "x", "csv_path": "x.csv", "url_column": "image_link"})
    job_dir = ws.job_dir(job_id)
    _reserve_stop_reason(job_dir)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError) as full:
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    assert full.value.errno == 28  # the disk really is full
    _write_stop_reason(job_dir, "disk full (OSError: [Errno 28] No space left on device)")
    filler.unlink()
    with ws.catalog.write() as conn:  # what a run leaves when its last UPDATE failed: running, its pid now dead
        conn.execute(
            "UPDATE jobs SET state = 'running', pid = ?, host = ?, heartbeat_at = ? WHERE id = ?",
            (dead_pid(), os.uname().nodename, time.time(), job_id),
        )
    p = JobManager(ws).progress(job_id)
    assert p.state == "interrupted" and p.error == "disk full (OSError: [Errno 28] No space left on device)"
    assert _read_stop_reason(job_dir) == p.error
    ws.close()


# --- temporary files of killed runs ---------------------------------------------------------------------


def test_stale_temp_files_are_removed_on_resume_and_live_ones_kept(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
):
    # a real writer killed mid-write: a CSV export's temporary file stays behind
    target = ws.root / "exports" / "killed.csv"
    code = (
        "import os, signal\nfrom pathlib import Path\nfrom services.core import csv_safety\n"
        f"with csv_safety.open_for_write(Path({str(target)!r})) as w:\n"
        "    w.writerow(['a'])\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    killed = [p for p in (ws.root / "exports").iterdir() if p.name.endswith(".tmp")]
    assert len(killed) == 1 and not target.exists()

    gone, live = dead_pid(), os.getpid()
    stale = [
        killed[0],
        ws.root / "tmp" / f".{'ab' * 32}.jpg.{gone}.140001.tmp",  # write_atomic, staged
        ws.root / "models" / "ds" / "emb" / f".model-lr-tag-x.skops.{gone}.1.tmp",
        ws.root / "embeddings" / "key" / f".{time.time_ns():020d}-{gone}-0a1b2c3d.npy.tmp",
        ws.root / "uploads" / f".abc_train.csv.{gone}.part",
    ]
    kept = [
        ws.root / "tmp" / f".{'cd' * 32}.jpg.{live}.1.tmp",  # a live process is writing it
        ws.root / "uploads" / "notes.tmp",  # not one of ours
        ws.root / "exports" / "labelled.csv",
    ]
    old = time.time() - 3600
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(b"half")
        os.utime(path, (old, old))
    fresh = ws.root / "tmp" / f".{'ef' * 32}.png.{gone}.1.tmp"  # newer than the run: not touched
    fresh.write_bytes(b"x")
    os.utime(fresh, (time.time() + 60, time.time() + 60))

    url = image_server.add("a.jpg", make_jpeg(20, 20))
    job_id = start_url_download(ws, manager, write_csv(tmp_path / "t.csv", HEADER, [[url, "1", "e", "v"]]), "d")
    assert manager.run(job_id).state == "completed"
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in [*kept, fresh])
    log_text = Path(manager.progress(job_id).log_path or "").read_text()
    assert "removed 5 temporary files" in log_text
    assert remove_stale_temp_files(ws.root, time.time()) == []  # idempotent


def test_a_failed_atomic_write_leaves_no_temporary_file(small_disk: Path):
    from services.core.workspace import write_atomic

    target = small_disk / "images" / "ab" / "big.jpg"
    with pytest.raises(OSError) as full:
        write_atomic(target, b"\0" * (4 * 2**20), small_disk / "tmp")
    assert full.value.errno == 28
    assert not target.exists() and list((small_disk / "tmp").iterdir()) == []


# --- CLI errors -------------------------------------------------------------------------------------------


def test_known_errors_are_one_line_and_unexpected_ones_name_the_class(tmp_path: Path):
    ws_root = tmp_path / "ws"
    Workspace(ws_root, load_settings()).close()
    (ws_root / "recipes").mkdir()
    (ws_root / "recipes" / "broken.json").write_text("{ not json", encoding="utf-8")
    known = cli(ws_root, "recipes", "list")
    assert known.returncode == 2 and "Traceback" not in known.stderr
    lines = error_lines(known.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken" in lines[0], known.stderr

    missing = cli(ws_root, "download", "urls", str(tmp_path / "nope.csv"), "--dataset", "d")
    assert missing.returncode == 2 and len(error_lines(missing.stderr)) == 1
    assert "nope.csv" in missing.stderr and "Traceback" not in missing.stderr

    with sqlite3.connect(ws_root / "catalog.sqlite") as conn:  # a schema the code does not expect
        conn.execute("DROP TABLE jobs")
    unexpected = cli(ws_root, "workspace", "info", WORKBENCH_GEMINI_API_KEY=SECRET)
    assert unexpected.returncode == 1
    lines = error_lines(unexpected.stderr)
    assert lines == ["error: OperationalError: no such table: jobs (run with --debug for the traceback)"], lines
    assert "no such table: jobs" in (ws_root / "logs" / "cli.log").read_text()  # the trace is in the log

    debug = cli(ws_root, "--debug", "workspace", "info", WORKBENCH_GEMINI_API_KEY=SECRET)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "no such table: jobs" in debug.stderr
    assert "locals" not in debug.stderr and SECRET not in debug.stderr + debug.stdout


def test_third_party_info_logs_stay_out_of_the_cli(tmp_path: Path):
    from tests.support.text_images import render_line

    image = tmp_path / "part.png"
    render_line("251234567890").save(image)
    run = cli(tmp_path / "ws", "ocr", str(image), "--engine", "rapidocr")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "251234567890" in run.stdout
    assert "[INFO]" not in run.stderr and "RapidOCR" not in run.stderr, run.stderr


def test_sigterm_still_cancels_cleanly(image_server: ImageServer, tmp_path: Path):
    """The new error handling leaves Ctrl+C/SIGTERM as they were: cancelled, exit 130, no traceback."""
    for i in range(30):
        image_server.add(f"s{i}.jpg", make_jpeg(16, 16, seed=i))
    rows = [[image_server.url(f"/slow/0.3/s{i}.jpg"), str(i), "e", "v"] for i in range(30)]
    source = write_csv(tmp_path / "t.csv", HEADER, rows)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "ws"), "download", "urls", str(source),
         "--dataset", "d"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ws = Workspace(tmp_path / "ws", load_settings()) if (tmp_path / "ws" / "catalog.sqlite").exists() else None
    deadline = time.time() + 60
    while time.time() < deadline:
        if ws is None and (tmp_path / "ws" / "catalog.sqlite").exists():
            ws = Workspace(tmp_path / "ws", load_settings())
        if ws is not None and ws.catalog.scalar("SELECT COUNT(*) FROM job_items WHERE status = 'ok'"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancelled" in out and "Traceback" not in err, err
    assert ws is not None
    ws.close()
