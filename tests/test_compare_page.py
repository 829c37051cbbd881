"""The Compare page through AppTest: import two categorised CSVs, see every chart, pick a category's images."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.test_compare import synthetic

APP = str(ROOT / "app.py")


def test_import_two_sets_and_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "page-ws"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    assert any("Add two sets" in i.value for i in at.info)
    for name, shares in (("REAL_a", {"people": 0.2, "city": 0.3}), ("GEN_b", {"people": 0.5, "city": 0.3})):
        data = synthetic(tmp_path / f"{name}.csv", 200, shares, seed=len(name)).read_bytes()
        at.file_uploader(key="cmp-upload").upload(f"{name}.csv", data, "text/csv").run()
        at.button(key="cmp-import").click().run()
        assert any(f"{name}: 200 images" in s.value for s in at.success)
    at.run()
    assert not at.exception, at.exception
    assert (at.selectbox(key="cmp-a").value, at.selectbox(key="cmp-b").value) == ("GEN_b", "REAL_a")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["GEN_b images"] == "200" and metrics["Categories differing (q < 0.05)"] == "1"
    stats = next(d.value for d in at.dataframe if "category" in d.value.columns)
    assert set(stats["category"]) == {"people", "city"}
    at.selectbox(key="cmp-gallery-category").set_value("people").run()
    assert any("GEN_b: people" in m.value for m in at.markdown)
    at.button(key="cmp-report").click().run()
    assert not at.exception, at.exception
    assert (tmp_path / "page-ws" / "exports" / "compare-GEN_b-vs-REAL_a.html").is_file()
