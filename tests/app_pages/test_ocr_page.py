"""The OCR page through AppTest: engines listed, live preview with the seed-003 rules, batch run, accuracy; every
upload shown, the recipe-fit warning, OCR datasets first, "no match" and CER/WER against jiwer."""

from __future__ import annotations

from pathlib import Path

import jiwer
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.stage import start_ocr
from services.stages.preprocess.recipes import Contrast, Crop, Grayscale, Recipe, save_recipe
from tests.conftest import ROOT
from tests.support.text_images import render_png

APP = str(ROOT / "app.py")


def test_preview_run_and_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.switch_page("app_pages/ocr.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="ocr-rules").value == "seed-003"
    at.selectbox(key="ocr-engine").set_value("tesseract").run()
    images = {"a.png": "Z5O1234S678", "b.png": "25098765432", "c.png": "NO CODE HERE"}
    upload = at.file_uploader(key="ocr-upload")
    for name, text in images.items():
        upload.upload(name, render_png(text, mono=True), "image/png")
    at.run()
    assert not at.exception, at.exception
    assert at.metric[0].value == "25012345678"  # the preview of the first upload, repaired by the rules
    at.button(key="ocr-import").click().run()
    assert not at.exception, at.exception
    target = at.session_state["ocr-dataset"]
    at.selectbox(key="ocr-target").set_value(target).run()
    at.button(key="ocr-run").click().run()
    assert not at.exception, at.exception
    ws = Workspace(root)
    assert JobManager(ws).wait(at.session_state["ocr-job"], timeout=120).state == "completed"
    ws.close()
    at.run()
    results = next(d.value for d in at.dataframe if "code" in d.value.columns)
    codes = dict(zip(results["image"], results["code"].fillna("InvalidCode"), strict=True))
    assert codes == {"a.png": "25012345678", "b.png": "25098765432", "c.png": "InvalidCode"}
    truth = b"image_name,text\na.png,25012345678\nb.png,25098765432\n"
    at.file_uploader(key="ocr-truth").upload("truth.csv", truth, "text/csv").run()
    assert {m.label: m.value for m in at.metric}["Exact match"] == "100%"


# --- every upload, the recipe fit, the default dataset, no match ------------------------------------------


CODES = {
    "a.png": "25012345678",
    "b.png": "Z5O1234S678",
    "c.png": "25098765432",
    "d.png": "25011112222",
    "e.png": "25033334444",
    "f.png": "NO CODE HERE",
}
EXPECTED = {"a.png": "25012345678", "b.png": "25012345678", "c.png": "25098765432", "d.png": "25011112222",
            "e.png": "25033334444", "f.png": "InvalidCode"}  # fmt: skip


def _codes_shown(at: AppTest) -> dict[str, str]:
    return {m.label.removeprefix("Code in "): m.value for m in at.metric if m.label.startswith("Code in ")}


def test_every_uploaded_image_is_shown_paged_and_a_recipe_that_does_not_fit_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "page-ws"
    save_recipe(root, Recipe(name="line-clean", ops=[Crop(box=(4, 4, 274, 52)), Grayscale(), Contrast()]))
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/ocr.py").run()
    at.selectbox(key="ocr-engine").set_value("tesseract").run()
    at.file_uploader(key="ocr-upload").set_value([(n, render_png(t, mono=True), "image/png") for n, t in CODES.items()])
    at.run()
    assert not at.exception, at.exception
    assert _codes_shown(at) == {n: EXPECTED[n] for n in ["a.png", "b.png", "c.png", "d.png"]}
    assert any(c.value == "Images 1–4 of 6" for c in at.caption)
    at.number_input(key="ocr-upload-page").set_value(2).run()
    assert _codes_shown(at) == {"e.png": EXPECTED["e.png"], "f.png": "InvalidCode"}
    assert any("Read `NO CODE HERE`, which the rules 'seed-003' do not accept" in c.value for c in at.caption)

    at.selectbox(key="ocr-recipe").set_value("ocr-line").run()
    assert not at.exception, at.exception
    warning = next(w.value for w in at.warning if "does not fit" in w.value)
    assert "Recipe **ocr-line** does not fit 6 of 6 uploaded images" in warning
    assert "`a.png`: step 1 (crop): box (1030, 870, 2660, 3224) lies outside the 278x56 image" in warning
    errors = [e.value for e in at.error]
    assert len(errors) == 2 and all("recipe 'ocr-line' does not fit this image: step 1 (crop)" in e for e in errors)
    assert _codes_shown(at) == {}

    at.selectbox(key="ocr-recipe").set_value("line-clean")
    at.number_input(key="ocr-upload-page").set_value(1).run()
    assert not any("does not fit" in w.value for w in at.warning)
    assert _codes_shown(at) == {n: EXPECTED[n] for n in ["a.png", "b.png", "c.png", "d.png"]}


def test_ocr_datasets_come_first_and_accuracy_says_no_match_or_scores_like_jiwer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "page-ws"
    photos, parts = tmp_path / "photos", tmp_path / "parts"
    photos.mkdir()
    parts.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (40 * i, 90, 160)).save(photos / f"photo-{i}.jpg")
    for name in ["a.png", "b.png", "c.png"]:
        (parts / name).write_bytes(render_png(CODES[name], mono=True))
    ws = Workspace(root)
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, photos, "photos", kind="REAL"))  # listed first before the fix
    manager.run(start_folder_import(ws, manager, parts, "parts", kind="ocr"))
    manager.run(start_ocr(ws, manager, "parts", engine="tesseract", rules="seed-003"))
    ws.close()
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/ocr.py").run()
    assert at.selectbox(key="ocr-target").value == "parts"
    at.radio(key="ocr-how").set_value("A dataset").run()
    assert at.selectbox(key="ocr-dataset").value == "parts" and at.selectbox(key="ocr-dataset").options[-1] == "photos"
    assert _codes_shown(at) == {"a.png": "25012345678"}  # the preview is named by the image's own name
    at.selectbox(key="ocr-engine").set_value("tesseract").run()
    assert not at.exception, at.exception

    wrong_names = b"image_name,text\nIMG_1.png,25012345678\nIMG_2.png,25098765432\n"
    at.file_uploader(key="ocr-truth").set_value(("truth.csv", wrong_names, "text/csv")).run()
    no_match = next(w.value for w in at.warning if w.value.startswith("No match"))
    assert "none of the 2 ground-truth rows names one of the 3 images read" in no_match
    assert "`a.png`" in no_match and "`IMG_1.png`" in no_match
    assert not any(m.label == "CER" for m in at.metric)

    truth = {"a.png": "25012345678", "b.png": "25012345670", "c.png": "25098765432", "zzz.png": "x"}
    csv_bytes = ("image_name,text\n" + "".join(f"{n},{t}\n" for n, t in truth.items())).encode()
    at.file_uploader(key="ocr-truth").set_value(("truth.csv", csv_bytes, "text/csv")).run()
    metrics = {m.label: m.value for m in at.metric}
    refs = [truth[n] for n in ["a.png", "b.png", "c.png"]]
    hyps = ["25012345678", "25012345678", "25098765432"]
    assert metrics["Images compared"] == "3 of 4"
    assert metrics["CER"] == f"{jiwer.cer(refs, hyps):.2%}" and metrics["WER"] == f"{jiwer.wer(refs, hyps):.2%}"
    assert metrics["Exact match"] == "67%"
    assert any("1 ground-truth rows match no image read: zzz.png" in c.value for c in at.caption)


def test_an_uploaded_name_never_becomes_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/ocr.py").run()
    at.selectbox(key="ocr-engine").set_value("tesseract").run()
    hostile = "../../../outside/evil name.png"
    at.file_uploader(key="ocr-upload").set_value((hostile, render_png("25012345678", mono=True), "image/png")).run()
    at.button(key="ocr-import").click().run()
    assert not at.exception, at.exception
    assert not (tmp_path / "outside").exists() and not (root / "outside").exists()
    stored = [p.relative_to(root / "uploads") for p in (root / "uploads").rglob("*.png")]
    assert [p.name for p in stored if len(p.parts) == 2] == ["evil_name.png"]  # inside uploads/ocr-*/
    assert any(s.value.startswith("Added 1 images as dataset") for s in at.success)
