"""The Describe & Categorize page through AppTest, talking to the fake Gemini server."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.describe.categories import save_list
from services.stages.describe.stage import start_describe
from tests.conftest import ROOT
from tests.support.describe_data import colour_dataset, gemini_env
from tests.support.fake_gemini import FakeGemini

APP = str(ROOT / "app.py")


@pytest.fixture
def page_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    root = tmp_path / "page-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    return root


def results_table(at: AppTest) -> pd.DataFrame:
    """AppTest finds dataframes by position only: the results table is the one with an `image` column."""
    return next(d.value for d in at.dataframe if "image" in d.value.columns)


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/describe.py").run()
    assert not at.exception, at.exception
    return at


def test_page_without_key_warns_and_blocks_gemini_but_lists_work(page_ws: Path, tmp_path: Path):
    ws = Workspace(page_ws, load_settings())
    colour_dataset(ws, tmp_path, ["red", "blue"])
    ws.close()
    at = open_page()
    assert any("No Gemini API key" in w.value for w in at.warning)
    assert at.button(key="dc-run").disabled
    assert at.button(key="dc-try").disabled
    at.file_uploader(key="dc-cat-upload").upload("cats.csv", b"Category\nred\nblue\n", "text/csv").run()
    at.text_input(key="dc-cat-upload-name").input("colours").run()
    at.button(key="dc-cat-upload-save").click().run()
    assert any("Saved colours v1: 2 categories: red, blue" in s.value for s in at.success)
    at.file_uploader(key="dc-cat-upload").upload("bad.csv", b"name\nred\n", "text/csv").run()
    at.button(key="dc-cat-upload-save").click().run()
    assert any("no `Category` column" in e.value for e in at.error)
    at.run()
    assert at.selectbox(key="dc-list").value == "colours v1"
    at.radio(key="dc-mode").set_value("Categorize offline (CLIP zero-shot)").run()
    assert any("models pull ViT-B-32/openai" in e.value for e in at.error)  # no weights here: said at once
    assert at.button(key="dc-try-clip").disabled  # nor can one image be scored with it


def test_page_estimate_try_one_run_results_and_export(page_ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = FakeGemini().start()
    gemini_env(monkeypatch, server)
    try:
        ws = Workspace(page_ws, load_settings())
        dataset = colour_dataset(ws, tmp_path, ["red", "green", "yellow"])
        cats = save_list(ws, "colours", ["red", "green"], "test")
        at = open_page()
        assert any("3 of 3 images need a request" in i.value for i in at.info)
        at.button(key="dc-try").click().run()
        assert not at.exception
        assert at.json and '"summary"' in at.json[0].value and server.requests == 1
        at.radio(key="dc-mode").set_value("Describe + categorize in one call (Gemini)").run()
        assert any("2 of 3 images need a request" in i.value for i in at.info)  # the tried image is done
        at.button(key="dc-run").click().run()
        assert not at.exception
        job_id = at.session_state["dc-job"]
        assert JobManager(ws).wait(job_id, timeout=60).state == "completed"
        at.run()
        assert server.requests == 3
        table = results_table(at)
        assert list(table["image"]) == ["00_red.png", "01_green.png", "02_yellow.png"]
        assert list(table["gemini"]) == ["red", "green", "unknown"]
        at.selectbox(key="dc-filter-cat-colours-v1").set_value("green").run()
        assert list(results_table(at)["image"]) == ["01_green.png"]
        at.selectbox(key="dc-fmt").set_value("categories-csv").run()
        at.button(key="dc-export").click().run()
        assert not at.exception
        with open(page_ws / "exports" / f"{dataset}-categorized.csv", newline="") as fh:
            written = list(csv.reader(fh))  # formula-guarded: every cell quoted, values unchanged
        assert written[0] == ["image_name", "description", "categories"] and len(written) == 4
        assert any("categorized.csv (3 images)" in b.label for b in at.get("download_button"))
        at.selectbox(key="dc-fmt").set_value("descriptions-csv").run()  # another format: not the last file's button
        assert not any("categorized.csv" in b.label for b in at.get("download_button"))
        # a second job over the same list asks nothing
        again = start_describe(ws, JobManager(ws), dataset, "categorize", cats)
        assert JobManager(ws).run(again).done == 3 and server.requests == 3
        ws.close()
    finally:
        server.stop()


def test_clip_zero_shot_with_the_workspaces_own_model_is_counted(page_ws: Path, tmp_path: Path):
    from services.demo.tiny_clip import save_demo_clip

    ws = Workspace(page_ws, load_settings())
    colour_dataset(ws, tmp_path, ["red", "green", "blue"])
    save_list(ws, "colours", ["red", "green", "blue"], "test")
    save_demo_clip(page_ws / "models" / "demo-clip")  # as `demo` leaves it: the picker must offer it
    at = open_page()
    at.radio(key="dc-mode").set_value("Categorize offline (CLIP zero-shot)").run()
    assert at.selectbox(key="dc-clip-pick").value.startswith("demo-clip (open_clip_model.safetensors)")
    assert not at.error and not at.button(key="dc-run").disabled
    at.button(key="dc-try-clip").click().run()  # one image first (no worker here: scored in this process)
    assert not at.exception and not at.error
    tried = next(m.value for m in at.markdown if m.value.startswith("**CLIP zero-shot:**"))
    assert any("by this dashboard's process" in c.value for c in at.caption)
    at.button(key="dc-run").click().run()
    assert not at.exception, at.exception
    assert JobManager(ws).wait(at.session_state["dc-job"], timeout=120).state == "completed"
    at.run()
    counts = {m.label: m.value for m in at.metric}
    assert counts["Categorised (CLIP)"] == "3" and counts["Categorised (Gemini)"] == "0"  # was "Categorised": 0
    assert list(results_table(at)["clip"].str.len() > 0) == [True, True, True]
    first = results_table(at)["clip"].iloc[0]  # the job's categories for image 1, as the try gave them
    assert tried == f"**CLIP zero-shot:** {first}", (tried, first)
    ws.close()


def test_a_descriptions_csv_is_categorised_from_the_page_without_any_dataset(
    page_ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Seeds 001/002's users arrive with a descriptions CSV and no images: the page takes it, runs the job, and
    offers the categorised CSV (issue 19)."""
    server = FakeGemini().start()
    gemini_env(monkeypatch, server)
    try:
        ws = Workspace(page_ws, load_settings())
        save_list(ws, "colours", ["red", "green"], "test")
        at = open_page()
        assert any("No datasets yet" in i.value for i in at.info)
        assert at.button(key="dc-csv-run").disabled  # nothing uploaded yet
        at.file_uploader(key="dc-csv-upload").upload("bad.csv", b"file,text\na.jpg,red\n", "text/csv").run()
        at.button(key="dc-csv-run").click().run()
        assert any("bad.csv: needs `image_name` and `description` columns" in e.value for e in at.error)
        body = b"image_name,description\na.jpg,A red square.\nb.jpg,A green field.\nc.jpg,A red square.\n"
        at.file_uploader(key="dc-csv-upload").upload("real_descriptions.csv", body, "text/csv").run()
        at.button(key="dc-csv-run").click().run()
        assert not at.exception
        job_id = at.session_state["dc-csv-job"]
        assert JobManager(ws).wait(job_id, timeout=60).state == "completed"
        at.run()
        button = next(b for b in at.get("download_button") if "categorized" in b.label)
        assert button.label.startswith("Download real_descriptions-categorized-")
        written = next((page_ws / "exports").glob("real_descriptions-categorized-*.csv"))
        with open(written, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["image_name"], r["categories"]) for r in rows] == [("a.jpg", "red"), ("b.jpg", "green"),
                                                                      ("c.jpg", "red")]  # fmt: skip
        assert server.requests == 2  # the repeated description asked once
        ws.close()
    finally:
        server.stop()
