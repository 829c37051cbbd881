"""The Embed & Train page through AppTest: import, embed with a local checkpoint, train, metrics and PR curve."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.jobs import JobManager
from services.workspace import Workspace
from tests.conftest import ROOT
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip
from tests.test_embed_train import tagged_tree

APP = str(ROOT / "app.py")


def wait(root: Path, job_id: int) -> str:
    ws = Workspace(root)
    try:
        return JobManager(ws).wait(job_id, timeout=180).state
    finally:
        ws.close()


def test_import_embed_train_and_see_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    tree = tagged_tree(tmp_path / "colours", per_tag=8)
    checkpoint = save_tiny_clip(tmp_path / "model")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/embed_train.py").run()
    assert not at.exception, at.exception
    at.text_input(key="et-path").input(str(tree)).run()
    assert at.text_input(key="et-name").placeholder == "default: colours"
    at.button(key="et-import").click().run()
    assert wait(root, at.session_state["et-import-job"]) == "completed"
    at.run()
    assert any("models pull ViT-B-32/openai" in w.value for w in at.warning)  # default model: no weights here
    assert at.button(key="et-embed").disabled
    at.text_input(key="et-model").input(TINY_CLIP_NAME).run()
    at.text_input(key="et-checkpoint").input(str(checkpoint)).run()
    assert not at.button(key="et-embed").disabled
    at.number_input(key="et-workers").set_value(0).run()
    at.button(key="et-embed").click().run()
    assert wait(root, at.session_state["et-embed-job"]) == "completed"
    at.run()
    assert any("vectors stored for" in c.value and c.value.startswith("53 ") for c in at.caption)
    assert at.multiselect(key="et-tags").value == ["blue", "green", "red"]
    at.button(key="et-train").click().run()
    assert not at.exception, at.exception
    assert wait(root, at.session_state["et-train-job"]) == "completed"
    at.run()
    metrics = next(d.value for d in at.dataframe if "AP" in d.value.columns and "tag" in d.value.columns)
    assert len(metrics) == 6 and metrics["AP"].min() > 0.9
    assert at.selectbox(key="et-pr-tag").value == "blue"
