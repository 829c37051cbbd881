"""The Classify page through AppTest: upload a zip, classify it in the background, browse and export."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.train.models import list_models
from tests.conftest import ROOT
from tests.support.tagged_images import png

APP = str(ROOT / "app.py")


def test_upload_classify_browse_export(trained: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "page-ws"
    shutil.copytree(trained[0], root)
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, colour in enumerate(["red", "red", "green", "blue"]):
            zf.writestr(f"new/{colour}{i}.png", png(colour, 500 + i))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/classify.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cl-models").value == "tagged"
    at.file_uploader(key="cl-upload").upload("new.zip", archive.getvalue(), "application/zip").run()
    at.number_input(key="cl-bins").set_value(4).run()
    at.button(key="cl-run").click().run()
    assert not at.exception, at.exception
    ws = Workspace(root)
    assert JobManager(ws).wait(at.session_state["cl-job"], timeout=180).state == "completed"
    ws.close()
    at.run()
    assert at.selectbox(key="cl-shown").value == "classify-new"
    assert at.metric[0].value == "4"
    at.selectbox(key="cl-tag").set_value("red").run()
    at.radio(key="cl-kind").set_value("ovr-svm").run()
    model = next(m for m in list_models(Workspace(root), "tagged") if m.name == "model-ovr-svm-tag-red")
    assert model.threshold != 0.5  # chosen on validation folds when it was trained
    assert at.slider(key="cl-threshold").value == pytest.approx(int(model.threshold * 1000) / 1000)  # starts at it
    assert 1 <= len(at.image) < 4  # the red images reach the model's threshold; the others do not
    assert any(f"reach the model's threshold {model.threshold:.3f}" in c.value for c in at.caption)
    at.slider(key="cl-threshold").set_value(0.0).run()
    assert len(at.image) >= 4  # the gallery shows every image at threshold 0
    at.button(key="cl-export").click().run()
    assert not at.exception, at.exception
    assert {b.label for b in at.get("download_button")} >= {"scores.csv", "output.json", "bins.json"}
    assert (root / "exports" / "classify-new" / "bins.json").is_file()  # was classify-classify-new
