"""The Explore page through AppTest: search by text, "more like this" from a result, an image upload, and a
clear message where a query cannot be answered."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from services.core.datasets import dataset_entries, dataset_tags, image_count
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, load_clip
from services.io.embedding_store import EmbeddingStore, embedding_key
from tests.conftest import ROOT

APP = str(ROOT / "app.py")


def test_search_by_text_then_more_like_a_result_then_by_image(
    trained: tuple[Path, ClipSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "page-ws"
    shutil.copytree(trained[0], root)
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.switch_page("app_pages/explore.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="ex-model").value == embedding_key(trained[1])
    assert at.button(key="ex-run").disabled  # nothing asked yet
    at.text_input(key="ex-text").input("a red square").run()
    at.number_input(key="ex-k").set_value(6).run()
    at.button(key="ex-run").click().run()
    assert not at.exception, at.exception
    assert len(at.image) == 6 and any("6 images nearest to the text" in c.value for c in at.caption)
    ws = Workspace(root)
    stored = EmbeddingStore(ws, embedding_key(trained[1])).load()
    expected = stored.vectors @ load_clip(trained[1]).embed_texts(["a red square"])[0]
    best = float(np.sort(expected)[-1])
    assert at.image[0].captions[0].startswith(f"{best:.3f} · ")  # ranked by the model's own cosine
    at.text_input(key="ex-search-view-name").input("red squares").run()  # the results as a saved view
    at.button(key="ex-search-view-save").click().run()
    assert any("Saved dataset 'red squares': 6 images" in s.value for s in at.success)
    ranked = [stored.hashes[i] for i in np.argsort(-expected)[:6]]
    assert [h for h, _, _ in dataset_entries(ws, "red squares")] == ranked  # in the ranking's order

    at.button(key="ex-like-0").click().run()  # more like the best result
    assert not at.exception, at.exception
    assert len(at.image) == 6 and any("nearest to image" in c.value for c in at.caption)

    image_hash, rel, _ = dataset_entries(ws, "tagged")[0]
    at.radio(key="ex-how").set_value("An image").run()
    at.file_uploader(key="ex-upload").upload("q.png", ws.abspath(rel).read_bytes(), "image/png").run()
    at.button(key="ex-run").click().run()
    assert at.image[0].captions[0].startswith("1.000 · ")  # the image itself, first

    at.radio(key="ex-how").set_value("More like a stored image").run()
    at.text_input(key="ex-like").input("0" * 64).run()
    at.button(key="ex-run").click().run()
    assert not at.exception and any("has no vector from" in e.value for e in at.error)

    at.radio(key="ex-mode").set_value("Browse").run()  # filters combined with search: the grid ranked by text
    at.multiselect(key="ex-br-datasets").set_value(["tagged"]).run()
    at.text_input(key="ex-br-text").input("a red square").run()
    assert not at.exception, at.exception
    n = image_count(ws, "tagged")
    assert any(f"The {n} images that pass the filters, ranked by the text" in c.value and ": 1 to 24 (" in c.value
               for c in at.caption)  # fmt: skip
    in_tagged = expected[[i for i, h in enumerate(stored.hashes) if h in set(dataset_tags(ws, "tagged"))]]
    assert at.image[0].captions[0].startswith(f"{float(np.max(in_tagged)):.3f} · ")
    ws.close()


def test_a_workspace_without_vectors_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "empty-ws"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/explore.py").run()
    assert not at.exception, at.exception
    assert any("embed a dataset on the Embed & Train page" in i.value for i in at.info)


def test_duplicates_view_shows_the_groups_and_records_choices(
    trained: tuple[Path, ClipSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from services.stages.explore import vector_index
    from services.stages.explore.duplicate_choices import current_choices, history, suggested_choices
    from services.stages.explore.neighbours import near_duplicate_groups

    root = tmp_path / "dup-ws"
    shutil.copytree(trained[0], root)
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    ws = Workspace(root)
    key = embedding_key(trained[1])
    vector_index._RESIDENT.clear()
    threshold = next(t for t in (0.999, 0.995, 0.99, 0.98, 0.95, 0.9) if near_duplicate_groups(ws, key, ["tagged"], t))
    expected = near_duplicate_groups(ws, key, ["tagged"], threshold)
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.switch_page("app_pages/explore.py").run()
    at.radio(key="ex-mode").set_value("Duplicates").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="ex-dup-datasets").value == ["tagged"]
    at.number_input(key="ex-dup-threshold").set_value(threshold).run()
    at.button(key="ex-dup-run").click().run()
    assert not at.exception, at.exception
    members = sum(len(g.members) for g in expected)
    assert any(f"{len(expected):,} groups" in m.value and f"{members:,} images" in m.value for m in at.markdown)
    shown = min(len(expected), 10)
    assert len(at.image) == sum(len(g.members) for g in expected[:shown])
    assert not any(box.value for box in at.checkbox)  # nothing chosen yet

    at.button(key="ex-dup-suggest").click().run()
    assert not at.exception, at.exception
    suggested = suggested_choices(ws, expected)
    assert current_choices(ws, list(suggested)) == suggested
    on_page = [h for g in expected[:shown] for h in g.members]
    boxes = {box.key.rsplit("-", 1)[1]: box for box in at.checkbox if box.key.startswith("ex-drop-")}  # hash[:16]
    shown_boxes = {h: boxes[h[:16]].value for h in on_page}
    assert shown_boxes == {h: suggested[h] == "drop" for h in on_page}  # the boxes show what was recorded

    image = next(h for h in on_page if suggested[h] == "drop")
    boxes[image[:16]].uncheck().run()
    at.button(key="ex-dup-save").click().run()
    assert not at.exception, at.exception
    assert any("Saved 1 changed choices" in s.value for s in at.success)
    assert current_choices(ws, [image]) == {image: "keep"}
    assert [(r.choice, r.decided_by) for r in history(ws, image)] == [("drop", "dashboard"), ("keep", "dashboard")]
    ws.close()
