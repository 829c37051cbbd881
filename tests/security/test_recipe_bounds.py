"""R4: recipes come from users, and some operations make images larger than their input. Every path that
runs a recipe (preprocess jobs, the Preprocess and OCR page previews, OCR jobs, POST /ocr) bounds what each
step may make, and refuses a step before it runs; a recipe's length and an arc's points are bounded too."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.stage import RecipeTooLargeError, prepare
from services.stages.preprocess.ops import OutputTooLargeError, apply_op, apply_recipe, output_size
from services.stages.preprocess.recipes import (
    MAX_ARC_POINTS,
    MAX_OPS,
    PRESETS,
    Binarize,
    Contrast,
    Crop,
    Denoise,
    Deskew,
    Grayscale,
    Morphology,
    Output,
    Recipe,
    RecipeError,
    Resize,
    ResizePad,
    Rotate,
    Sharpen,
    UnwarpArc,
    parse_recipe,
)
from services.stages.preprocess.stage import preview, start_preprocess

SIZE_OPS = [
    Grayscale(),
    Denoise(method="median"),
    Contrast(method="clahe"),
    Sharpen(),
    Binarize(method="adaptive"),
    Deskew(),
    Morphology(),
    Output(),
    Crop(box=(5, 7, 50, 40)),
    Crop(box=(10, 10, 5000, 5000)),  # cut by the edge
    Resize(width=333, height=17),
    ResizePad(size=96),
    Rotate(angle=0.0),
    Rotate(angle=360.0),
    Rotate(angle=45.0, expand=True),
    Rotate(angle=-30.0, expand=True),
    Rotate(angle=90.0, expand=True),
    Rotate(angle=17.5, expand=False),
    UnwarpArc(),
    UnwarpArc(points=[(0.0, 0.5), (0.3, 0.2), (0.6, 0.8), (1.0, 0.5)], height=21),
    UnwarpArc(points=[(3.0, 4.0), (123.0, 54.0)], height=9, relative=False),
]


@pytest.mark.parametrize("op", SIZE_OPS, ids=lambda op: op.op)
@pytest.mark.parametrize("shape", [(61, 83, 3), (120, 47)])
def test_output_size_is_the_size_the_operation_makes(op, shape) -> None:
    """The bound is only as good as the size computed in advance: checked against the operation's real output."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    made = apply_op(arr, op)
    assert output_size(op, shape[1], shape[0]) == (made.shape[1], made.shape[0])


def test_a_step_over_the_bound_is_refused_before_it_runs_naming_the_step() -> None:
    arr = np.full((56, 322), 255, np.uint8)
    big = Recipe(name="big", ops=[Grayscale(), Resize(width=4096, height=1200)])
    with pytest.raises(OutputTooLargeError, match=r"step 2 \(resize\).*4096x1200.*4,915,200 pixels.*100,000-pixel"):
        apply_recipe(arr, big, 100_000)
    assert apply_recipe(arr, big, 5_000_000).shape == (1200, 4096)  # within a larger bound it runs
    # 100,000 x 2,000 pixels of remap maps (1.6 GB) would be allocated if this step ran: refused at once
    arc = Recipe(name="arc", ops=[UnwarpArc(points=[(0, 0), (100_000, 0)], height=2000, relative=False)])
    started = time.monotonic()
    with pytest.raises(OutputTooLargeError, match=r"step 1 \(unwarp_arc\).*100001x2000"):
        apply_recipe(arr, arc, 100_000_000)
    assert time.monotonic() - started < 1.0


def test_rotations_with_expand_cannot_double_the_area_past_the_bound() -> None:
    arr = np.zeros((300, 300, 3), np.uint8)
    spin = Recipe(name="spin", ops=[Rotate(angle=45.0, expand=True)] * 8)
    with pytest.raises(OutputTooLargeError) as refused:
        apply_recipe(arr, spin, 1_000_000)
    step = int(str(refused.value).split()[1])
    # each step doubles the area of a square (side x sqrt 2): 90k -> 180k, 360k, 720k, and step 4's 1.44 M is over
    first_over = next(k for k in range(1, 9) if 90_000 * 2**k > 1_000_000)
    assert step == first_over == 4, str(refused.value)


def test_the_built_in_recipes_still_run_within_the_default_bound() -> None:
    settings = load_settings()
    photo = np.asarray(Image.effect_noise((3000, 3400), 50).convert("RGB"))
    assert apply_recipe(photo, PRESETS["ocr-line"], settings.download.max_pixels).shape == (160, 575)
    assert apply_recipe(photo, PRESETS["ocr-128"], settings.download.max_pixels).shape == (128, 128)


def test_recipe_length_and_arc_points_are_bounded() -> None:
    Recipe(name="long", ops=[Grayscale()] * MAX_OPS)
    with pytest.raises(ValueError, match=f"at most {MAX_OPS} items"):
        Recipe(name="long", ops=[Grayscale()] * (MAX_OPS + 1))
    with pytest.raises(RecipeError, match="ops"):  # a saved file or a CLI recipe file: the same model
        parse_recipe('{"name": "n", "ops": [' + ",".join(['{"op": "denoise", "method": "nlmeans"}'] * 10_000) + "]}")
    points = [(i / MAX_ARC_POINTS, 0.5) for i in range(MAX_ARC_POINTS + 1)]
    UnwarpArc(points=points[:MAX_ARC_POINTS])
    with pytest.raises(ValueError, match=f"at most {MAX_ARC_POINTS} items"):
        UnwarpArc(points=points)
    with pytest.raises(RecipeError, match="finite"):
        parse_recipe('{"name": "n", "ops": [{"op": "unwarp_arc", "points": [[0, 0], [Infinity, 0]]}]}')


def test_ocr_prepare_names_the_recipe_and_the_limit() -> None:
    arr = np.zeros((56, 322, 3), np.uint8)
    big = Recipe(name="big", ops=[Resize(width=4096, height=1200)])
    with pytest.raises(RecipeTooLargeError, match="recipe 'big'.*pixel") as refused:
        prepare(arr, big, 100_000)
    assert refused.value.error_class == "too_large"


def _small_limit_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__MAX_PIXELS", "1000000")
    return Workspace(root, load_settings())


def test_the_preprocess_preview_and_job_use_the_download_pixel_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.effect_noise((320, 240), 40 + i).convert("RGB").save(folder / f"p{i}.png")
    ws = _small_limit_workspace(tmp_path / "ws", monkeypatch)
    try:
        manager = JobManager(ws)
        assert manager.run(start_folder_import(ws, manager, folder)).state == "completed"
        big = Recipe(name="big", ops=[Grayscale(), Resize(width=2000, height=1000)])
        images = [(h, rel) for h, rel in ws.catalog.query("SELECT hash, path FROM images")]
        shown = preview(ws, big, images)  # what the Preprocess page runs in the dashboard's process
        assert shown and all(p.after is None and "1,000,000-pixel limit" in (p.error or "") for p in shown)
        fine = preview(ws, PRESETS["ocr-128"], images)
        assert all(p.after is not None and p.after.shape == (128, 128) for p in fine)
        job = manager.run(start_preprocess(ws, manager, "photos", big, workers=0))
        assert (job.done, job.failed) == (0, 2)
        failures = manager.failures(job.id)
        assert {f["error_class"] for f in failures} == {"too_large"}
        assert all("step 2 (resize)" in f["error_message"] for f in failures)
    finally:
        ws.close()


def test_the_ocr_page_preview_refuses_a_recipe_over_the_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The OCR page runs the chosen recipe on every uploaded image in the dashboard's own process."""
    from streamlit.testing.v1 import AppTest

    from services.stages.preprocess.recipes import save_recipe
    from tests.conftest import ROOT
    from tests.support.text_images import render_png

    root = tmp_path / "page-ws"
    save_recipe(root, Recipe(name="big", ops=[Grayscale(), Resize(width=4096, height=1200)]))
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    monkeypatch.setenv("WORKBENCH_DOWNLOAD__MAX_PIXELS", "1000000")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/ocr.py").run()
    at.selectbox(key="ocr-engine").set_value("tesseract").run()
    at.file_uploader(key="ocr-upload").upload("a.png", render_png("25012345678", mono=True), "image/png")
    at.selectbox(key="ocr-recipe").set_value("big").run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("recipe 'big' makes too large an image: step 2 (resize)" in e and "1,000,000-pixel" in e for e in errors)
