"""OCR with a preprocessing recipe through every door (CLI one image, job over a folder, a zip and a dataset,
the socket server, REST multipart and base64 JSON, the tiny TrOCR), and a recipe whose crop does not fit the
image (`ocr-line` on a rendered line) as a per-item error with its reason at each door."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.api.app import create_app
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.rules import PRESETS
from services.stages.ocr.socket_server import HEADER, OcrSocketServer, send_image
from services.stages.ocr.stage import (
    OcrSetup,
    RecipeMisfitError,
    fit_problems,
    ocr_bytes,
    ocr_results,
    oriented_size,
    read_image,
    recipe_fit_problem,
    start_ocr,
)
from services.stages.preprocess.recipes import PRESETS as RECIPES
from services.stages.preprocess.recipes import Contrast, Crop, Grayscale, Recipe, Resize, Rotate, save_recipe
from tests.conftest import ROOT
from tests.support.text_images import render_png
from tests.support.tiny_trocr import CHARS, save_tiny_trocr

CODES = {"a.png": "25012345678", "b.png": "Z5O1234S678", "c.png": "25098765432"}  # b: seed 003's misread
EXPECTED = {"a.png": "25012345678", "b.png": "25012345678", "c.png": "25098765432"}
LINE_SIZE = (278, 56)  # render_line(code, mono=True) for an 11-character code
# crop a small margin, grayscale, contrast: fits the rendered lines and keeps the text readable
CLEAN = Recipe(name="line-clean", ops=[Crop(box=(4, 4, 274, 52)), Grayscale(), Contrast(method="factor", factor=1.5)])
MISFIT_REASON = (
    "recipe 'ocr-line' does not fit this image: step 1 (crop): crop box (1030, 870, 2660, 3224) lies outside"
)


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, text in CODES.items():
        (folder / name).write_bytes(render_png(text, mono=True))
    return folder


@pytest.fixture
def ws_with_recipe(ws: Workspace) -> Workspace:
    save_recipe(ws.root, CLEAN)
    return ws


def cli(ws_root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real entry point in its own process (what a user runs; a traceback would show on stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws_root), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# --- what fits ------------------------------------------------------------------------------------------


def test_recipe_fit_is_checked_against_the_image_size():
    ocr_line = RECIPES["ocr-line"]
    assert recipe_fit_problem(ocr_line, *LINE_SIZE) == (
        "step 1 (crop): box (1030, 870, 2660, 3224) lies outside the 278x56 image"
    )
    assert "is cut to 970x2354 by the edge of the 2000x3224 image" in (recipe_fit_problem(ocr_line, 2000, 3224) or "")
    assert recipe_fit_problem(ocr_line, 4000, 3224) is None
    assert recipe_fit_problem(CLEAN, *LINE_SIZE) is None and recipe_fit_problem(None, 1, 1) is None
    resized = Recipe(name="r", ops=[Resize(width=100, height=50), Crop(box=(0, 0, 120, 40))])
    assert "cut to 100x40 by the edge of the 100x50 image" in (recipe_fit_problem(resized, 4000, 3000) or "")
    rotated = Recipe(name="r", ops=[Rotate(angle=90), Crop(box=(500, 500, 600, 600))])
    assert recipe_fit_problem(rotated, 100, 100) is None  # size after a rotation is left to the run
    assert fit_problems(CLEAN, [("big", 300, 60), ("small", 100, 30)]) == [
        ("small", "step 1 (crop): box (4, 4, 274, 52) is cut to 96x26 by the edge of the 100x30 image")
    ]


def test_oriented_size_reads_the_header_and_applies_exif_rotation():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a portrait photo stored landscape
    Image.new("RGB", (300, 100), "white").save(buf, format="JPEG", exif=exif)
    assert oriented_size(buf.getvalue()) == (100, 300)
    assert oriented_size(render_png("25012345678", mono=True)) == LINE_SIZE


# --- one image: ocr_bytes, CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["tesseract", "rapidocr"])
def test_a_fitting_recipe_reads_the_code_and_reports_the_box_in_the_preprocessed_image(
    ws_with_recipe: Workspace, engine: str
):
    setup = OcrSetup.resolve(ws_with_recipe, engine, "line-clean", "seed-003")
    for name, text in CODES.items():
        result = ocr_bytes(ws_with_recipe, render_png(text, mono=True), setup)
        assert result["code"] == EXPECTED[name], (name, result)
        assert result["cord_space"] == "preprocessed"
        x1, y1, x2, y2 = result["cord"]
        assert 0 <= x1 < x2 <= 270 and 0 <= y1 < y2 <= 48  # inside the 270x48 crop


def test_a_misfit_recipe_is_an_error_naming_the_cause_and_nothing_is_logged(ws: Workspace):
    setup = OcrSetup.resolve(ws, "tesseract", "ocr-line", "seed-003")
    with pytest.raises(RecipeMisfitError, match=r"step 1 \(crop\).*lies outside the 278x56 image") as caught:
        ocr_bytes(ws, render_png("25012345678", mono=True), setup)
    assert caught.value.error_class == "recipe_misfit"
    assert not (ws.root / ws.settings.ocr.log_csv).exists()  # a reading that did not happen is not logged


def test_cli_one_image_with_a_recipe_and_with_a_misfit(parts: Path, tmp_path: Path):
    root = tmp_path / "cli-ws"
    save_recipe(root, CLEAN)
    options = ["--recipe", "line-clean", "--rules", "seed-003", "--engine", "tesseract"]
    ok = cli(root, "ocr", str(parts / "b.png"), *options)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["code"] == "25012345678" and result["cord_space"] == "preprocessed" and result["serial"] == 1
    bad = cli(root, "ocr", str(parts / "a.png"), "--recipe", "ocr-line", "--engine", "tesseract")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"error: a.png: {MISFIT_REASON} the 278x56 image"]


# --- jobs: folder, zip, dataset -------------------------------------------------------------------------


def test_cli_job_over_a_folder_with_a_recipe_scores_against_truth(parts: Path, tmp_path: Path):
    root = tmp_path / "cli-ws"
    save_recipe(root, CLEAN)
    truth = tmp_path / "truth.csv"
    truth.write_text("image_name,text\n" + "".join(f"{n},{t}\n" for n, t in EXPECTED.items()))
    out = tmp_path / "reports" / "accuracy.json"
    args = ["--recipe", "line-clean", "--rules", "seed-003", "--engine", "tesseract", "--truth", str(truth)]
    ran = cli(root, "ocr", str(parts), *args, "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert "3 ok, 0 failed" in ran.stdout and "recipe line-clean" in ran.stdout
    assert "3 of 3 ground-truth rows matched (3 images read): CER 0.00%, WER 0.00%, exact 100%" in ran.stdout
    report = json.loads(out.read_text())
    assert report["matched"] == 3 and report["overall"] == {"images": 3, "cer": 0.0, "wer": 0.0, "exact": 1.0}
    assert {s["image"]: s["prediction"] for s in report["images"]} == EXPECTED


def test_cli_job_over_a_zip_with_a_misfit_recipe_fails_each_item_with_its_reason(parts: Path, tmp_path: Path):
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(parts.iterdir()):
            zf.write(path, f"inner/{path.name}")
    ran = cli(tmp_path / "cli-ws", "ocr", str(archive), "--recipe", "ocr-line", "--engine", "tesseract")
    assert ran.returncode == 0, ran.stderr  # the job ran; its items failed, each with the reason
    assert "Traceback" not in ran.stderr and "0 ok, 3 failed" in ran.stdout
    assert "failures by class: recipe_misfit=3" in ran.stdout
    assert "retry-failed" not in ran.stdout  # no retry fixes a recipe that does not fit: no hint to try one
    failed_lines = [line for line in ran.stdout.splitlines() if "\tfailed: recipe_misfit: " in line]
    assert len(failed_lines) == 3 and all(MISFIT_REASON in line for line in failed_lines)


def test_job_over_a_dataset_with_a_recipe_and_with_a_misfit(ws_with_recipe: Workspace, parts: Path):
    ws = ws_with_recipe
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, parts, "parts", kind="ocr"))
    good = manager.run(start_ocr(ws, manager, "parts", engine="rapidocr", recipe="line-clean", rules="seed-003"))
    assert (good.state, good.done, good.failed) == ("completed", 3, 0)
    rows = {r["image"]: r for r in ocr_results(ws, "parts", good.params["settings_hash"])}
    assert {name: row["code"] for name, row in rows.items()} == EXPECTED
    misfit = manager.run(start_ocr(ws, manager, "parts", engine="rapidocr", recipe="ocr-line", rules="seed-003"))
    assert (misfit.state, misfit.done, misfit.failed) == ("completed", 0, 3)
    assert manager.failure_counts(misfit.id) == {"recipe_misfit": 3}
    assert manager.retryable_failures(misfit.id) == 0  # the recipe is frozen into the job: a retry cannot fit
    failed = ocr_results(ws, "parts", misfit.params["settings_hash"])
    assert all(r["code"] is None and MISFIT_REASON in r["error"] for r in failed)


# --- the socket server ----------------------------------------------------------------------------------


@pytest.fixture
def serve(ws_with_recipe: Workspace) -> Iterator[Callable[[str], tuple[str, int]]]:
    """Start a socket server with a given recipe (tesseract, seed-003) on a free loopback port."""
    servers: list[OcrSocketServer] = []

    def start(recipe: str) -> tuple[str, int]:
        setup = OcrSetup.resolve(ws_with_recipe, "tesseract", recipe, "seed-003")
        server = OcrSocketServer(("127.0.0.1", 0), ws_with_recipe, setup)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[0], server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_socket_with_a_recipe_and_with_a_misfit(serve: Callable[[str], tuple[str, int]]):
    host, port = serve("line-clean")
    reply = send_image(host, port, render_png(CODES["b.png"], mono=True))
    assert reply["code"] == "25012345678" and reply["cord_space"] == "preprocessed" and reply["serial"] >= 1
    host, port = serve("ocr-line")
    image = render_png(CODES["a.png"], mono=True)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall((HEADER.pack(len(image)) + image) * 2)  # two on one connection: the server stays usable
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    replies = [json.loads(line) for line in data.splitlines()]
    assert len(replies) == 2
    assert all(r == {"error": f"recipe_misfit: {MISFIT_REASON} the 278x56 image"} for r in replies)


# --- REST -----------------------------------------------------------------------------------------------


def test_rest_ocr_with_a_recipe_multipart_and_base64_and_a_misfit_is_422(ws_with_recipe: Workspace):
    client = TestClient(create_app(ws_with_recipe, "tok"))
    auth = {"Authorization": "Bearer tok"}
    image = render_png(CODES["b.png"], mono=True)
    files = {"file": ("b.png", image, "image/png")}
    multipart = client.post("/ocr?engine=tesseract&recipe=line-clean&rules=seed-003", headers=auth, files=files)
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["code"] == "25012345678" and multipart.json()["cord_space"] == "preprocessed"
    body = {"image": base64.b64encode(image).decode(), "engine": "tesseract", "recipe": "line-clean",
            "rules": "seed-003"}  # fmt: skip
    as_json = client.post("/ocr", headers=auth, json=body)
    assert as_json.status_code == 200 and as_json.json()["code"] == "25012345678"
    misfit = client.post("/ocr?engine=tesseract&recipe=ocr-line", headers=auth, files=files)
    assert misfit.status_code == 422
    assert misfit.json()["detail"] == f"recipe_misfit: {MISFIT_REASON} the 278x56 image"
    misfit_json = client.post("/ocr", headers=auth, json={**body, "recipe": "ocr-line"})
    assert misfit_json.status_code == 422 and "recipe_misfit" in misfit_json.json()["detail"]


# --- TrOCR reads what the recipe made (grayscale comes back as RGB) -------------------------------------------


def test_tiny_trocr_reads_through_a_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_OCR__TROCR_MODEL", str(save_tiny_trocr(tmp_path / "trocr")))
    settings = load_settings()
    image = np.array(Image.open(io.BytesIO(render_png(CODES["a.png"], mono=True))).convert("RGB"))
    result = read_image("trocr", settings, image, CLEAN, PRESETS["none"])
    assert result.engine == "trocr" and result.lines  # random weights: some text, from the detector's line
    assert set(result.raw) <= set(CHARS) and 0.0 <= result.confidence <= 1.0
    x1, y1, x2, y2 = result.cord or [0, 0, 0, 0]
    assert 0 <= x1 < x2 <= 270 and 0 <= y1 < y2 <= 48
    with pytest.raises(RecipeMisfitError, match="lies outside the 278x56 image"):
        read_image("trocr", settings, image, RECIPES["ocr-line"], PRESETS["none"])
