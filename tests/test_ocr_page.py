"""The OCR page through AppTest: engines listed, live preview with the seed-003 rules, batch run, accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.jobs import JobManager
from services.workspace import Workspace
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
