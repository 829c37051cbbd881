"""The Embed & Train page through AppTest: import, embed with a local checkpoint, train, metrics and PR curve."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.demo.tiny_clip import save_demo_clip
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from tests.conftest import ROOT, free_port
from tests.support.tagged_images import png, tagged_tree
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip
from ui.clip_picker import OTHER

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
    # 1-2 tagged test images per tag: the page leads with 5-fold cross-validated metrics and their intervals
    # (the test split's AP, once the only figure, is its own column)
    assert len(metrics) == 6 and metrics["test AP"].min() > 0.9
    assert set(metrics["metrics from"]) == {"cross-validated (5 folds)"} and metrics["AP"].min() > 0.7
    for ap, interval in zip(metrics["AP"], metrics["AP 95% CI"], strict=True):
        low, high = map(float, interval.split("–"))
        assert low <= ap <= high
    assert any("Small test splits" in w.value for w in at.warning)
    assert at.selectbox(key="et-pr-tag").value == "blue"


def test_the_picker_offers_local_models_and_refuses_misfits_and_offline_pulls_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # no route to the hub, like offline
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    (tmp_path / "flat").mkdir()
    for i in range(3):
        (tmp_path / "flat" / f"p{i}.png").write_bytes(png("gray", i))
    manager.run(start_folder_import(ws, manager, tmp_path / "flat", "flat"))  # first, and without tags
    manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / "colours", per_tag=4), "colours"))
    checkpoint = save_demo_clip(root / "models" / "demo-clip")
    jobs = ws.catalog.scalar("SELECT COUNT(*) FROM jobs")
    ws.close()

    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/embed_train.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="et-dataset").value == "colours"  # a dataset with tags, not the first one
    assert at.selectbox(key="et-pick").value.startswith("demo-clip (open_clip_model.safetensors)")
    assert OTHER in at.selectbox(key="et-pick").options
    assert not at.button(key="et-embed").disabled
    assert any(c.value.startswith(f"Weights: `{checkpoint}`") for c in at.caption)
    at.selectbox(key="et-dataset").set_value("flat").run()
    assert any("flat has no tags to train on" in i.value and "Datasets with tags: colours" in i.value
               for i in at.info)  # fmt: skip

    at.selectbox(key="et-pick").set_value(OTHER).run()
    at.text_input(key="et-checkpoint").input(str(checkpoint)).run()  # model name left at ViT-B-32
    assert any("does not fit ViT-B-32" in e.value for e in at.error) and at.button(key="et-embed").disabled
    at.text_input(key="et-checkpoint").input("").run()
    assert any("models pull ViT-B-32/openai" in w.value for w in at.warning)
    started = time.monotonic()
    at.button(key="et-pull").click().run()
    assert time.monotonic() - started < 15
    assert not at.exception, at.exception
    assert any(e.value.startswith("Pull failed: cannot reach 127.0.0.1") and "Hugging Face cache" in e.value
               for e in at.error)  # fmt: skip
    assert not at.success
    ws = Workspace(root)
    assert ws.catalog.scalar("SELECT COUNT(*) FROM jobs") == jobs  # nothing was queued on the way
    ws.close()


def test_the_import_panel_does_not_show_the_classify_pages_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Classify imports what it classifies as a job of its own (kind `classify`); opening Embed & Train shows the
    latest tagged import, not that one."""
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    tagged = manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / "colours", per_tag=2), "colours"))
    later = start_folder_import(ws, manager, tagged_tree(tmp_path / "new", per_tag=1), "classify-new", kind="classify")
    manager.run(later)
    ws.close()
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/embed_train.py").run()
    assert not at.exception, at.exception
    assert at.session_state["et-import-job"] == tagged.id
    assert any("Import folder: colours" in m.value for m in at.markdown)
    assert not any("classify-new" in m.value for m in at.markdown)
