"""The Describe & Categorize CLI as a user runs it (real subprocesses), including a SIGKILL mid-run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.describe.stage import prepare_image
from tests.conftest import ROOT, read_csv
from tests.support.describe_data import gemini_env
from tests.support.fake_gemini import API_KEY, PALETTE, FakeGemini, make_colour_png
from tests.support.journals import finished_at_kill
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip

COLOURS = list(PALETTE)


def cli_args(ws_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "services", "--workspace", str(ws_root), *args]


def cli(ws_root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_args(ws_root, *args), cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def image_folder(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(n):
        (folder / f"img{i:03d}.png").write_bytes(make_colour_png(COLOURS[i % len(COLOURS)], noise_seed=i))
    return folder


@pytest.fixture
def gemini(monkeypatch: pytest.MonkeyPatch) -> FakeGemini:
    server = FakeGemini(retry_delay=0.1).start()
    gemini_env(monkeypatch, server)
    yield server
    server.stop()


def test_cli_describe_categorize_export_and_lists(tmp_path: Path, gemini: FakeGemini):
    ws_root = tmp_path / "ws"
    folder = image_folder(tmp_path, 4)
    assert cli(ws_root, "download", "folder", str(folder), "--dataset", "pics").returncode == 0
    est = cli(ws_root, "describe", "--dataset", "pics", "--estimate-only")
    assert est.returncode == 0 and "4 of 4 images need a request" in est.stdout and "$" in est.stdout
    assert gemini.requests == 0
    run = cli(ws_root, "describe", "--images-dir", "pics", "--num-workers", "2", "--yes")  # seed 001's flags
    assert run.returncode == 0, run.stderr[-2000:]
    assert "4 ok, 0 failed" in run.stdout and gemini.requests == 4

    (tmp_path / "cats.csv").write_text("Category\nred\ngreen\nanimals\n")
    imported = cli(ws_root, "categories", "import", str(tmp_path / "cats.csv"), "--name", "colours")
    assert imported.returncode == 0 and "colours v1: 3 categories" in imported.stdout
    cat = cli(ws_root, "categorize", "--dataset", "pics", "--list", "colours", "--yes")
    assert cat.returncode == 0, cat.stderr[-2000:]
    assert gemini.requests == 8 and Counter(e.kind for e in gemini.log) == {"image": 4, "text": 4}, (
        cat.stdout,
        [(e.kind, e.colour, e.digest[:8]) for e in gemini.log],
    )
    out = tmp_path / "categorized.csv"
    exported = cli(ws_root, "describe-export", "--dataset", "pics", "--format", "categories-csv", "--list", "colours",
                   "--out", str(out))  # fmt: skip
    assert exported.returncode == 0 and "4 images written" in exported.stdout
    rows = read_csv(out)
    assert [(r["image_name"], r["categories"]) for r in rows] == [
        ("img000.png", "red"), ("img001.png", "green"), ("img002.png", "unknown"), ("img003.png", "unknown"),
    ]  # fmt: skip
    extracted = cli(ws_root, "categories", "extract", str(out), "--name", "used")
    assert extracted.returncode == 0 and "used v1: green, red" in extracted.stdout
    listed = cli(ws_root, "categories", "list")
    assert "colours v1" in listed.stdout and "used v1" in listed.stdout
    assert cli(ws_root, "categories", "show", "colours@v1").stdout.splitlines()[1:] == ["red", "green", "animals"]


def test_cli_without_key_or_weights_fails_at_once_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ws_root = tmp_path / "ws"
    folder = image_folder(tmp_path, 1)
    assert cli(ws_root, "download", "folder", str(folder), "--dataset", "pics").returncode == 0
    no_key = cli(ws_root, "describe", "--dataset", "pics", "--yes")
    assert no_key.returncode == 2 and "no Gemini API key: set WORKBENCH_GEMINI_API_KEY" in no_key.stderr
    (tmp_path / "cats.csv").write_text("Category\nred\n")
    started = time.monotonic()
    no_weights = cli(ws_root, "categorize", "--dataset", "pics", "--categories", str(tmp_path / "cats.csv"),
                     "--engine", "clip")  # fmt: skip
    assert no_weights.returncode == 2 and "models pull ViT-B-32/openai" in no_weights.stderr
    assert time.monotonic() - started < 30  # interpreter and torch start-up included; no network wait
    bad = cli(ws_root, "describe", "--dataset", "nope", "--yes")
    assert bad.returncode == 2 and "no dataset named 'nope'" in bad.stderr


def test_cli_clip_engine_loads_a_local_checkpoint_with_its_config(tmp_path: Path):
    ws_root = tmp_path / "ws"
    folder = image_folder(tmp_path, 3)
    checkpoint = save_tiny_clip(tmp_path / "model")
    assert cli(ws_root, "download", "folder", str(folder), "--dataset", "pics").returncode == 0
    (tmp_path / "cats.csv").write_text("Category\nred\ngreen\nblue\n")
    run = cli(ws_root, "categorize", "--dataset", "pics", "--categories", str(tmp_path / "cats.csv"), "--engine",
              "clip", "--model", TINY_CLIP_NAME, "--checkpoint", str(checkpoint))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3 ok, 0 failed" in run.stdout
    ws = Workspace(ws_root, load_settings())
    rows = ws.catalog.query("SELECT result FROM stage_results WHERE stage = 'categorize:clip'")
    assert len(rows) == 3
    for row in rows:
        result = json.loads(row["result"])
        assert set(result["categories"]) <= {"red", "green", "blue"}
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    ws.close()


def test_sigkill_mid_describe_then_resume_asks_nothing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    n, concurrency = 30, 4
    server = FakeGemini(latency=0.15).start()
    gemini_env(monkeypatch, server)
    try:
        ws_root = tmp_path / "ws"
        folder = image_folder(tmp_path, n)
        assert cli(ws_root, "download", "folder", str(folder), "--dataset", "pics").returncode == 0
        proc = subprocess.Popen(
            cli_args(ws_root, "describe", "--dataset", "pics", "--yes", "--concurrency", str(concurrency)),
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        ws = Workspace(ws_root, load_settings())
        deadline = time.time() + 60
        while time.time() < deadline and server.requests < 10:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        job_id = 2
        p = JobManager(ws).progress(job_id)
        assert p.state == "interrupted" and p.done < n
        finished = finished_at_kill(ws, job_id)
        before = server.requests
        resumed = cli(ws_root, "jobs", "resume", str(job_id))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        p = JobManager(ws).progress(job_id)
        assert (p.state, p.done, p.failed) == ("completed", n, 0)
        paths = dict(ws.catalog.query("SELECT hash, path FROM images"))
        digest_of = {h: hashlib.sha256(prepare_image(ws.abspath(paths[h]), 768)).hexdigest() for h in paths}
        asked = Counter(e.digest for e in server.log)
        twice = {d for d, count in asked.items() if count > 1}
        assert not twice & {digest_of[h] for h in finished}, "an image described before the kill was asked again"
        assert len(twice) <= concurrency  # only what was in flight at the kill
        assert server.requests - before == n - len(finished)  # the resume asks exactly for what was not done
        assert len(asked) == n
        ws.close()
    finally:
        server.stop()


def test_api_key_never_reaches_the_output(tmp_path: Path, gemini: FakeGemini):
    ws_root = tmp_path / "ws"
    folder = image_folder(tmp_path, 1)
    cli(ws_root, "download", "folder", str(folder), "--dataset", "pics")
    run = cli(ws_root, "describe", "--images-dir", "pics", "--num-workers", "2", "--yes")  # seed 001's flags
    logs = "".join(p.read_text() for p in (ws_root / "logs").glob("*.log"))
    assert API_KEY not in run.stdout + run.stderr + logs
