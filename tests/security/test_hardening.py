"""Hardening: hostile names go through parameterised SQL untouched; a planted secret appears on no page and in
no log; user-supplied model files are never unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.datasets import dataset_entries, dataset_tags
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.compare.label_sets import import_categorized_csv, label_counts
from services.stages.describe.categories import save_list
from services.stages.download.folder_import import start_folder_import
from services.stages.train.models import ModelFileError, TagModel, load_estimator
from tests.conftest import ROOT, write_csv
from tests.support.describe_data import gemini_env
from tests.support.fake_gemini import API_KEY, FakeGemini, make_colour_png

HOSTILE = ["O'Brien; DROP TABLE images;--", 'say "hi"', "x'); DELETE FROM jobs;--", "%_\\"]


def test_hostile_names_in_files_tags_csv_values_and_lists(ws: Workspace, tmp_path: Path):
    root = tmp_path / "tree"
    for i, name in enumerate(HOSTILE):
        folder = root / name.replace("/", "_").replace("\\", "_")
        folder.mkdir(parents=True)
        (folder / f"{name.replace('/', '_').replace(chr(92), '_')}.png").write_bytes(
            make_colour_png("red", noise_seed=i)
        )
    manager = JobManager(ws)
    assert manager.run(start_folder_import(ws, manager, root, 'it\'s "hostile"')).done == len(HOSTILE)
    tags = set().union(*dataset_tags(ws, 'it\'s "hostile"').values())
    assert tags == {n.replace("\\", "_") for n in HOSTILE}
    names = {name for _, _, name in dataset_entries(ws, 'it\'s "hostile"')}
    assert any("DROP TABLE" in n for n in names)
    assert ws.catalog.scalar("SELECT COUNT(*) FROM images") == len(HOSTILE)  # nothing dropped or deleted
    assert ws.catalog.scalar("SELECT COUNT(*) FROM jobs") == 1
    saved = save_list(ws, "q", ["O'Brien", 'say "hi"', "50% off_sale"], "test")
    assert saved.categories == ("O'Brien", 'say "hi"', "50% off_sale")
    csv_path = write_csv(tmp_path / "hostile.csv", ["image_name", "description", "categories"],
                         [["a'; DROP TABLE labels;--.jpg", "it's", "O'Brien, 50% off_sale"]])  # fmt: skip
    label_set = import_categorized_csv(ws, csv_path, "set'); DROP TABLE label_sets;--")
    assert label_counts(ws, label_set) == {"O'Brien": 1, "50% off_sale": 1}
    assert ws.catalog.scalar("SELECT COUNT(*) FROM label_sets") == 1


def test_a_planted_key_appears_on_no_page_and_in_no_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = FakeGemini().start()
    gemini_env(monkeypatch, server)  # the key is the fake server's API_KEY: the secret to look for
    monkeypatch.setenv("WORKBENCH_API_TOKEN", "PLANTED-API-TOKEN-7f3a")
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    try:
        from services.core.settings import load_settings
        from services.stages.describe.stage import start_describe

        ws = Workspace(tmp_path / "ws", load_settings())
        folder = tmp_path / "pics"
        folder.mkdir()
        (folder / "a.png").write_bytes(make_colour_png("red"))
        manager = JobManager(ws)
        manager.run(start_folder_import(ws, manager, folder, "pics"))
        assert manager.run(start_describe(ws, manager, "pics")).state == "completed"
        ws.close()
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        rendered = []
        for page in ("home", "download", "preprocess", "describe", "embed_train", "classify", "ocr", "compare"):
            at.switch_page(f"app_pages/{page}.py").run()
            assert not at.exception, (page, at.exception)
            rendered.append(json.dumps(_texts(at)))
        everything = "\n".join(rendered)
        assert "API key set" in everything  # the page does talk about the key...
        for secret in (API_KEY, "PLANTED-API-TOKEN-7f3a"):
            assert secret not in everything  # ...but never shows it
            for log in (tmp_path / "ws" / "logs").rglob("*"):
                if log.is_file():
                    assert secret not in log.read_text(errors="replace"), log
    finally:
        server.stop()


def _texts(at: AppTest) -> list[str]:
    out: list[str] = []
    for kind in ("markdown", "caption", "text", "json", "code", "info", "warning", "error", "success", "metric",
                 "text_input", "text_area", "title", "header", "subheader"):  # fmt: skip
        for element in getattr(at, kind, []):
            out.append(str(getattr(element, "value", "")) + " " + str(getattr(element, "label", "")))
    return out


def test_a_user_supplied_pickle_is_never_loaded(tmp_path: Path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    path = tmp_path / "model-ovr-svm-tag-x.skops"
    path.write_bytes(pickle.dumps(Boom()))
    manifest = {"tag": "x", "model_type": "ovr-svm", "sha256": "0" * 64}
    with pytest.raises(ModelFileError, match="differ from its manifest"):
        load_estimator(TagModel(path, manifest))
    import hashlib

    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # even with a matching hash
    with pytest.raises(Exception) as err:
        load_estimator(TagModel(path, manifest))
    assert "pwned" not in str(err.value)
