"""The Preprocess stage end to end: folder import, presets, bad images, skipping, recipe edits, kill/resume,
the CLI and the page."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from services.cli.app import app
from services.core.datasets import dataset_images
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.preprocess.recipes import PRESETS, Crop, Recipe, RecipeError, ResizePad, load_recipe, save_recipe
from services.stages.preprocess.stage import quality_counts, results_page, start_preprocess
from tests.conftest import ROOT, read_csv
from tests.support.image_server import ImageServer, make_jpeg, make_png_bomb


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def write(path: Path, img: Image.Image, fmt: str, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i in range(5):
        write(folder / "parts" / f"p{i}.jpg", photo(640, 480, i), "JPEG", quality=90)
    return folder


def import_and_run(ws: Workspace, manager: JobManager, folder: Path, recipe: Recipe | str = "ocr-128") -> int:
    imported = start_folder_import(ws, manager, folder)
    assert manager.run(imported).state == "completed"
    job_id = start_preprocess(ws, manager, folder.name, recipe, workers=0)
    manager.run(job_id)
    return job_id


def test_ocr_128_end_to_end_then_skip_then_recompute_on_edit(ws: Workspace, manager: JobManager, photos: Path) -> None:
    job_id = import_and_run(ws, manager, photos)
    p = manager.progress(job_id)
    assert (p.state, p.done, p.failed) == ("completed", 5, 0)
    recipe = PRESETS["ocr-128"]
    rows, total = results_page(ws, recipe, "photos")
    assert total == 5
    for row in rows:
        out = Image.open(ws.abspath(row.output))
        assert out.size == (128, 128) and out.mode == "L" and out.format == "PNG"
        assert f"derived/{recipe.variant}/" in row.output
    assert ws.catalog.scalar("SELECT COUNT(*) FROM derived_images WHERE variant = ?", (recipe.variant,)) == 5
    manifest = read_csv(ws.root / "exports" / f"preprocess-photos-ocr-128-job{job_id}.csv")
    assert [r["status"] for r in manifest] == ["ok"] * 5 and all(Path(r["output_path"]).is_file() for r in manifest)
    assert list(manifest[0])[:3] == ["image_hash", "path", "tag"]  # the dataset's input columns, joined
    assert {r["tag"] for r in manifest} == {"parts"} and all(r["path"].startswith("parts/") for r in manifest)
    tags = {r["tag"] for r in read_csv(ws.root / "exports" / "photos-job1.csv")}
    assert tags == {"parts"}

    mtimes = {r.output: ws.abspath(r.output).stat().st_mtime_ns for r in rows}
    again = start_preprocess(ws, manager, "photos", "ocr-128", workers=0)
    assert manager.run(again).done == 5
    assert {o: ws.abspath(o).stat().st_mtime_ns for o in mtimes} == mtimes  # nothing recomputed

    # built-ins are read-only (issue 15): a saved copy is versioned, and its edit recomputes under the new hash
    with pytest.raises(RecipeError, match="read-only"):
        save_recipe(ws.root, Recipe(name="ocr-128", ops=[*recipe.ops[:1], ResizePad(size=64), *recipe.ops[2:]]))
    assert save_recipe(ws.root, Recipe(name="mine", ops=recipe.ops)).version == 1
    edited = save_recipe(ws.root, Recipe(name="mine", ops=[*recipe.ops[:1], ResizePad(size=64), *recipe.ops[2:]]))
    assert edited.version == 2 and edited.settings_hash != recipe.settings_hash
    third = start_preprocess(ws, manager, "photos", "mine", workers=0)
    manager.run(third)
    new_rows, new_total = results_page(ws, load_recipe(ws.root, "mine"), "photos")
    assert new_total == 5 and all(Image.open(ws.abspath(r.output)).size == (64, 64) for r in new_rows)
    assert load_recipe(ws.root, "mine", 1).settings_hash == recipe.settings_hash  # the older version stays
    assert set(mtimes) == {r.output for r in results_page(ws, recipe, "photos")[0]}  # old results kept


def _bad_images(folder: Path) -> dict[str, str]:
    """file name -> expected outcome: 'ok' or a failure class (recorded by the import or the preprocess)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    noisy = make_jpeg(300, 200, seed=3, noise=True)
    (folder / "truncated.jpg").write_bytes(noisy[: len(noisy) // 2])
    write(folder / "cmyk.jpg", Image.new("CMYK", (80, 60), (0, 200, 200, 0)), "JPEG")
    write(folder / "deep16.png", Image.fromarray(np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)),
          "PNG")  # fmt: skip
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    write(folder / "palette.png", pal, "PNG", transparency=0)
    frames = [photo(50, 40, 1), photo(50, 40, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    (folder / "animated.gif").write_bytes(buf.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6
    write(folder / "exif.jpg", photo(120, 60, 4), "JPEG", exif=exif)
    (folder / "huge.png").write_bytes(make_png_bomb(20000))
    return {
        "zero.jpg": "not_image",
        "corrupt.png": "not_image",
        "truncated.jpg": "truncated",
        "cmyk.jpg": "ok",
        "deep16.png": "ok",
        "palette.png": "ok",
        "animated.gif": "ok",
        "exif.jpg": "ok",
        "huge.png": "too_large",
    }


def test_bad_images_give_per_item_errors_or_correct_results(ws: Workspace, manager: JobManager, tmp_path: Path) -> None:
    expected = _bad_images(tmp_path / "bad")
    imported = start_folder_import(ws, manager, tmp_path / "bad")
    assert manager.run(imported).state == "completed"
    outcome = {r["path"]: r["status"] if r["status"] == "ok" else r["error"].split(":")[0]
               for r in read_csv(ws.root / "exports" / f"bad-job{imported}.csv")}  # fmt: skip
    assert outcome == expected
    job_id = start_preprocess(ws, manager, "bad", "ocr-128", workers=0)
    p = manager.run(job_id)
    assert (p.state, p.done, p.failed) == ("completed", 5, 0)
    by_hash = dict(dataset_images(ws, "bad"))
    rows, _ = results_page(ws, PRESETS["ocr-128"], "bad")
    assert len(rows) == len(by_hash) == 5
    # the EXIF-rotated 120x60 image is portrait once transposed: content fills the height, padding the width
    exif_hash = next(h for h, rel in by_hash.items() if Image.open(ws.abspath(rel)).size == (120, 60))
    exif_out = np.asarray(Image.open(ws.abspath(next(r.output for r in rows if r.image_hash == exif_hash))))
    assert (exif_out[:, :20] == 255).all() and (exif_out[:, 40:88] != 255).any()


def test_preprocess_errors_per_item_missing_file_and_bad_geometry(
    ws: Workspace, manager: JobManager, photos: Path
) -> None:
    imported = start_folder_import(ws, manager, photos)
    manager.run(imported)
    first_hash, first_rel = dataset_images(ws, "photos")[0]
    ws.abspath(first_rel).unlink()
    tight = Recipe(name="tight", ops=[Crop(box=(600, 400, 900, 700)), ResizePad(size=32)])
    job_id = start_preprocess(ws, manager, "photos", tight, workers=0)
    p = manager.run(job_id)
    assert (p.state, p.done, p.failed) == ("completed", 4, 1)
    failures = {f["item_key"]: f for f in manager.failures(job_id)}
    assert failures[first_hash]["error_class"] == "missing"
    big = Recipe(name="toolarge", ops=[Crop(box=(700, 500, 900, 700))])
    p = manager.run(start_preprocess(ws, manager, "photos", big, workers=0))
    assert p.failed == 5
    assert {f["error_class"] for f in manager.failures(p.id)} >= {"operation"}
    assert any("step 1 (crop): crop box" in f["error_message"] for f in manager.failures(p.id))


def test_quality_flags_counted_and_filterable(ws: Workspace, manager: JobManager, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write(folder / "dark.png", Image.new("L", (100, 100), 5), "PNG")
    write(folder / "sharp.jpg", photo(200, 200, 1), "JPEG")
    write(folder / "strip.png", photo(400, 40, 2), "PNG")
    import_and_run(ws, manager, folder)
    counts = quality_counts(ws, "mixed")
    assert counts["too_dark"] == 1 and counts["near_uniform"] == 1 and counts["extreme_aspect"] == 1
    rows, total = results_page(ws, PRESETS["ocr-128"], "mixed", ["too_dark"])
    assert total == 1 and "near_uniform" in rows[0].flags


def test_kill_then_resume_does_not_redo_finished_images(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(120):
        write(folder / f"{i}.jpg", photo(800, 600, i), "JPEG", quality=85)
    ws_root = tmp_path / "ws"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "services", "--workspace", str(ws_root)]
    subprocess.run([*base, "download", "folder", str(folder)], cwd=ROOT, env=env, check=True, capture_output=True)
    slow = Recipe(name="slow", ops=[PRESETS["ocr-128"].ops[0], {"op": "denoise", "method": "nlmeans"},  # type: ignore[list-item]
                                    ResizePad(size=96)])  # fmt: skip
    (tmp_path / "slow.json").write_text(slow.model_dump_json())
    subprocess.run([*base, "recipes", "save", str(tmp_path / "slow.json")], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen([*base, "preprocess", "--dataset", "many", "--recipe", "slow", "--workers", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    ws = Workspace(ws_root)
    manager = JobManager(ws)
    deadline = time.time() + 120
    while time.time() < deadline and (ws.catalog.scalar("SELECT n_ok FROM jobs WHERE id = 2") or 0) < 20:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert manager.progress(2).state == "interrupted"
    done_before = {
        r["image_hash"]: ws.abspath(json.loads(r["result"])["output"]).stat().st_mtime_ns
        for r in ws.catalog.query("SELECT image_hash, result FROM stage_results WHERE stage = 'preprocess:slow'")
    }
    assert 20 <= len(done_before) < 120
    resumed = subprocess.run([*base, "jobs", "resume", "2"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    p = manager.progress(2)
    assert (p.state, p.done, p.total) == ("completed", 120, 120)
    after = {
        r["image_hash"]: ws.abspath(json.loads(r["result"])["output"]).stat().st_mtime_ns
        for r in ws.catalog.query("SELECT image_hash, result FROM stage_results WHERE stage = 'preprocess:slow'")
    }
    assert len(after) == 120
    assert all(after[h] == t for h, t in done_before.items())  # finished before the kill: not redone
    ws.close()


def test_cli_recipes_and_preprocess_errors(photos: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ws_args = ["--workspace", str(tmp_path / "cli-ws")]
    listed = runner.invoke(app, [*ws_args, "recipes", "list"])
    assert "ocr-128\tv1" in listed.output and "ocr-line\tv1" in listed.output
    shown = runner.invoke(app, [*ws_args, "recipes", "show", "ocr-line"])
    assert json.loads(shown.output)["ops"][0] == {"op": "crop", "box": [1030, 870, 2660, 3224]}
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "ops": [{"op": "denoise", "ksize": 4}]}')
    saved = runner.invoke(app, [*ws_args, "recipes", "save", str(bad)])
    assert saved.exit_code == 2 and "ksize must be odd" in saved.output
    missing = runner.invoke(app, [*ws_args, "preprocess", "--dataset", "nope", "--recipe", "ocr-128"])
    assert missing.exit_code == 2 and "no dataset named 'nope'" in missing.output
    unknown = runner.invoke(app, [*ws_args, "preprocess", "--folder", str(photos), "--recipe", "nope"])
    assert unknown.exit_code == 2 and "no recipe named 'nope'" in unknown.output
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    nothing = runner.invoke(app, [*ws_args, "preprocess", "--folder", str(empty), "--recipe", "ocr-128"])
    assert nothing.exit_code == 2 and "has no stored images yet" in nothing.output
    ran = runner.invoke(app, [*ws_args, "preprocess", "--dataset", "photos", "--recipe", "ocr-128", "--workers", "0"])
    assert ran.exit_code == 0 and "5 ok, 0 failed" in ran.output


def test_preprocess_page_preview_run_gallery(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    ws = Workspace(root)
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, photos))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/preprocess.py").run()
    assert not at.exception
    assert at.selectbox(key="pp-dataset").value == "photos"
    assert [e.label for e in at.expander][1:] == ["1. grayscale", "2. resize_pad", "3. denoise", "4. output"]
    assert len(at.image) == 6  # three before/after preview pairs
    ksize = at.number_input(key="pp-editor-2-denoise-ksize")
    ksize.increment().run()  # odd-only sizes step 3 -> 5, never to an even value the recipe refuses
    assert at.number_input(key="pp-editor-2-denoise-ksize").value == 5 and not at.error
    ksize = at.number_input(key="pp-editor-2-denoise-ksize")
    ksize.decrement().run()
    assert at.number_input(key="pp-editor-2-denoise-ksize").value == 3 and not at.error
    at.button(key="pp-run").click().run()
    assert manager.wait(2, timeout=60).state == "completed"
    at.run()
    assert any("Page 1 of 1 · 5 images" in c.value for c in at.caption)
    at.button(key="pp-editor-add").click().run()
    assert [e.label for e in at.expander][-1] == "5. grayscale"
    at.text_input(key="pp-save-name").input("mine").run()
    at.button(key="pp-save").click().run()
    assert load_recipe(root, "mine").ops[-1].op == "grayscale"
    ws.close()


def test_the_manifest_keeps_the_seed_csvs_columns(
    ws: Workspace, manager: JobManager, image_server: ImageServer, tmp_path: Path
) -> None:
    """Seed 000's preprocessed outputs carry group_id and entity_name: the manifest joins each image's first row."""
    from services.stages.download.urls import start_url_download
    from tests.conftest import write_csv

    a = image_server.add("a.jpg", make_jpeg(60, 40, seed=1))
    b = image_server.add("b.jpg", make_jpeg(50, 70, seed=2))
    rows = [[a, "101", "item_weight", "10 gram"], [b, "102", "width", "3 centimetre"], [a, "103", "height", "1 foot"]]
    csv_path = write_csv(tmp_path / "train.csv", ["image_link", "group_id", "entity_name", "entity_value"], rows)
    manager.run(start_url_download(ws, manager, csv_path, "train"))
    job_id = start_preprocess(ws, manager, "train", "ocr-128", workers=0)
    assert manager.run(job_id).state == "completed"
    manifest = read_csv(ws.root / "exports" / f"preprocess-train-ocr-128-job{job_id}.csv")
    assert list(manifest[0])[:5] == ["image_hash", "image_link", "group_id", "entity_name", "entity_value"]
    assert [(r["group_id"], r["entity_name"]) for r in manifest] == [("101", "item_weight"), ("102", "width")]
