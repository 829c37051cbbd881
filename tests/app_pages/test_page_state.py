"""A page's state lives in its URL (issue 15: a refresh lost the job panel and every input on five of eight
pages). AppTest opens a page with the query parameters a reload brings back and checks the inputs and the job
panel; the real reload in Chromium is walked by tests/app_pages/test_page_walk.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.preprocess.recipes import load_recipe
from services.stages.preprocess.stage import start_preprocess
from tests.conftest import ROOT
from tests.support.tagged_images import png

APP = str(ROOT / "app.py")


@pytest.fixture
def two_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A workspace with a folder dataset and two preprocess jobs on it (2 is the latest)."""
    root = tmp_path / "state-ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        (folder / f"s{i}.png").write_bytes(png("red", i))
    ws = Workspace(root, load_settings())
    manager = JobManager(ws)
    imported = start_folder_import(ws, manager, folder)
    assert manager.run(imported).state == "completed"
    first = start_preprocess(ws, manager, "shots", load_recipe(root, "ocr-128"), 0)
    second = start_preprocess(ws, manager, "shots", load_recipe(root, "ocr-line"), 0)
    for job in (first, second):
        assert manager.run(job).state == "completed"
    ws.close()
    return {"root": root, "first": first, "second": second}


def _open(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _panel_jobs(at: AppTest) -> list[str]:
    return [m.value.split("**")[1] for m in at.markdown if m.value.startswith("**Job ")]


def test_a_reload_shows_the_job_the_url_names_else_the_pages_latest(two_jobs: dict[str, object]) -> None:
    first, second = two_jobs["first"], two_jobs["second"]
    at = _open("app_pages/preprocess.py", **{"pp-job": str(first)})
    assert not at.exception, at.exception
    assert _panel_jobs(at) == [f"Job {first}"]  # the one being watched before the reload, not the newest
    at = _open("app_pages/preprocess.py")
    assert _panel_jobs(at) == [f"Job {second}"]  # a fresh visit: the page's latest job of its kind
    for junk in ("999", "-1", "1; DROP TABLE jobs", "9" * 40):  # a link to a job that is not there: the latest
        at = _open("app_pages/preprocess.py", **{"pp-job": junk})
        assert not at.exception, at.exception
        assert _panel_jobs(at) == [f"Job {second}"], junk
    at = _open("app_pages/classify.py")  # a page whose kind of job never ran shows no panel
    assert not at.exception and _panel_jobs(at) == []


def test_inputs_come_back_from_the_url(two_jobs: dict[str, object]) -> None:
    at = _open(
        "app_pages/preprocess.py",
        **{"pp-recipe": "ocr-line", "pp-flags": "too_dark", "pp-editor-new": "rotate", "pp-save-name": "mine"},
    )
    assert not at.exception, at.exception
    assert at.selectbox(key="pp-recipe").value == "ocr-line"
    assert at.multiselect(key="pp-flags").value == ["too_dark"]
    assert at.selectbox(key="pp-editor-new").value == "rotate"
    assert at.text_input(key="pp-save-name").value == "mine"
    at = _open("app_pages/download.py", **{"s3-how": "Path on the server", "s3-bucket": "shots", "s3-prefix": "a/"})
    assert not at.exception, at.exception
    assert at.radio(key="s3-how").value == "Path on the server"
    assert (at.text_input(key="s3-bucket").value, at.text_input(key="s3-prefix").value) == ("shots", "a/")
    at = _open("app_pages/preprocess.py", **{"pp-recipe": "no-such-recipe"})  # an option that is not there
    assert not at.exception and at.selectbox(key="pp-recipe").value == at.selectbox(key="pp-recipe").options[0]


def test_added_and_removed_recipe_steps_come_back_from_the_url(two_jobs: dict[str, object]) -> None:
    root = two_jobs["root"]
    assert isinstance(root, Path)
    base = load_recipe(root, "ocr-line")
    steps = [op.model_dump(mode="json") for op in base.ops] + [{"op": "rotate", "angle": 90.0}]
    kept = json.dumps({"source": base.settings_hash, "ops": steps})
    at = _open("app_pages/preprocess.py", **{"pp-recipe": "ocr-line", "pp-editor-ops": kept})
    assert not at.exception, at.exception
    assert [e.label for e in at.expander][-1] == f"{len(steps)}. rotate"
    assert at.number_input(key=f"pp-editor-{len(steps) - 1}-rotate-angle").value == 90.0
    assert any("Edited, not saved" in c.value for c in at.caption)
    not_an_op = json.dumps({"source": base.settings_hash, "ops": [{"op": "rm -rf"}]})
    for junk in ("{", json.dumps({"source": "other", "ops": steps}), not_an_op, "[1]"):
        at = _open("app_pages/preprocess.py", **{"pp-recipe": "ocr-line", "pp-editor-ops": junk})
        assert not at.exception, at.exception
        assert len([e for e in at.expander if e.label[0].isdigit()]) == len(base.ops), junk  # the recipe's own


def test_an_empty_result_grid_says_why(two_jobs: dict[str, object]) -> None:
    """Issue 15 ("say why a section is empty"): a flag filter that matches nothing is not "no results yet"."""
    at = _open("app_pages/preprocess.py", **{"pp-dataset": "shots", "pp-recipe": "ocr-128", "pp-flags": "too_bright"})
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "None of the 3 results of ocr-128 is flagged too_bright" in captions, captions
    assert "No results yet" not in captions
    at = _open("app_pages/preprocess.py", **{"pp-dataset": "shots", "pp-recipe": "ocr-128"})
    assert "Page 1 of 1 · 3 images" in " ".join(c.value for c in at.caption)
