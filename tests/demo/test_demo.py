"""The demo workspace: built offline from packaged photos and generated images; every page has data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from services.core.datasets import list_datasets
from services.core.workspace import Workspace
from services.stages.compare.label_sets import list_label_sets
from services.stages.train.models import list_models
from tests.conftest import ROOT


def test_home_button_builds_a_demo_every_page_can_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.button(key="home-demo").click().run()
    assert not at.exception, at.exception
    ws = Workspace(tmp_path / "ws")
    names = {d.name: d for d in list_datasets(ws.catalog)}
    assert {"demo-REAL", "demo-GEN", "demo-tagged", "demo-ocr", "REAL-categorised", "GEN-categorised"} <= set(names)
    assert names["demo-REAL"].images >= 30 and names["demo-GEN"].images == 36
    assert {s.name for s in list_label_sets(ws)} == {"REAL-categorised", "GEN-categorised"}
    assert {m.tag for m in list_models(ws)} == {"red", "green", "blue"}
    assert all(m.manifest["metrics"]["average_precision"] > 0.9 for m in list_models(ws))
    assert ws.catalog.scalar("SELECT COUNT(DISTINCT image_hash) FROM tag_scores") == 36  # GEN classified
    ws.close()
    at.run()
    assert at.metric[2].value == "6"  # datasets on the Home page
    table = next(d.value for d in at.dataframe if "source" in d.value.columns).set_index("name")
    assert pd.isna(table.loc["REAL-categorised", "images"]) and table.loc["demo-GEN", "images"] == 36  # labels only
    assert any("holds labels, not images" in c.value for c in at.caption)
    for page in ("describe", "embed_train", "classify", "ocr", "compare", "preprocess"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, at.exception)
        if page == "compare":
            assert {m.label: m.value for m in at.metric}["REAL-categorised images"] == str(names["demo-REAL"].images)
        if page == "classify":
            at.selectbox(key="cl-shown").set_value("demo-GEN").run()
            assert {m.label: m.value for m in at.metric}["Images scored"] == "36"  # below the demo's classify job
