"""Browsing a dataset: every filter and sort checked against pandas over the same catalog tables (an
independent implementation of the same selection), hostile filter text kept as a value, and the page."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from services.core.datasets import dataset_id_of
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.explore.browse import BrowseError, BrowseFilter, browse, classifiers_of, flags_of, formats_of
from services.stages.explore.duplicate_choices import record_choices
from tests.conftest import ROOT


def _image(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed * 7 % 255, seed * 13 % 255, seed * 29 % 255)).save(out, fmt)
    return out.getvalue()


@pytest.fixture
def shelf(ws: Workspace, manager: JobManager, tmp_path: Path) -> pd.DataFrame:
    """Dataset `shelf`: 36 images in folders cats/dogs/birds, PNG and JPEG, sizes 20-140 px; scores from one
    classifier for two thirds of them, a quality flag on five, two chosen to drop. Returns the catalog's view
    of it as a DataFrame (read with plain SQL: the reference the filters are checked against)."""
    root = tmp_path / "shelf"
    for i in range(36):
        tag = ("cats", "dogs", "birds")[i % 3]
        fmt = "PNG" if i % 2 else "JPEG"
        folder = root / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{tag}-{i:02d}.{fmt.lower()}").write_bytes(_image((20 + 3 * i, 140 - 3 * i), fmt, i))
    assert manager.run(start_folder_import(ws, manager, root, "shelf")).state == "completed"
    dataset_id = dataset_id_of(ws.catalog, "shelf")
    frame = pd.read_sql_query(
        """SELECT m.image_hash, m.name, m.seq, m.file_name, i.format, i.bytes, i.width, i.height
           FROM dataset_members m JOIN images i ON i.hash = m.image_hash WHERE m.dataset_id = ?""",
        ws.catalog.conn, params=(dataset_id,),
    )  # fmt: skip
    tags = pd.read_sql_query("SELECT image_hash, tag FROM dataset_member_tags WHERE dataset_id = ?",
                             ws.catalog.conn, params=(dataset_id,))  # fmt: skip
    frame["tag"] = frame.image_hash.map(dict(zip(tags.image_hash, tags.tag, strict=True)))
    hashes = list(frame.sort_values("seq").image_hash)
    scores = {h: round((n * 37 % 100) / 100, 2) for n, h in enumerate(hashes) if n % 3 != 2}
    now = time.time()
    with ws.catalog.write() as conn:  # as the classify and preprocess stages record them
        conn.executemany(
            "INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(h, "f" * 64, "model-logreg-tag-cats", "cats", s, now) for h, s in scores.items()],
        )
        conn.executemany("INSERT INTO image_flags (settings_hash, flag, image_hash) VALUES ('q1', 'blurry', ?)",
                         [(h,) for h in hashes[:5]])  # fmt: skip
    record_choices(ws, {hashes[0]: "drop", hashes[7]: "drop"}, "ana")
    frame["score"] = frame.image_hash.map(scores)
    frame["flagged"] = frame.image_hash.isin(hashes[:5])
    frame["dropped"] = frame.image_hash.isin([hashes[0], hashes[7]])
    return frame


def _hashes(ws: Workspace, f: BrowseFilter, limit: int = 500) -> tuple[list[str], int]:
    rows, total = browse(ws, f, 0, limit)
    return [r.image_hash for r in rows], total


def test_each_filter_and_sort_selects_what_pandas_selects(ws: Workspace, shelf: pd.DataFrame):
    by_seq = shelf.sort_values("seq")
    cases = [
        (BrowseFilter("shelf"), by_seq),
        (BrowseFilter("shelf", tags=("cats", "birds")), by_seq[by_seq.tag.isin(["cats", "birds"])]),
        (BrowseFilter("shelf", formats=("PNG",)), by_seq[by_seq.format == "PNG"]),
        (BrowseFilter("shelf", min_width=60, min_height=60), by_seq[(by_seq.width >= 60) & (by_seq.height >= 60)]),
        (BrowseFilter("shelf", min_bytes=400, max_bytes=900), by_seq[by_seq.bytes.between(400, 900)]),
        (BrowseFilter("shelf", name_contains="DOGS-1"), by_seq[by_seq.name.str.lower().str.contains("dogs-1")]),
        (BrowseFilter("shelf", flag="blurry"), by_seq[by_seq.flagged]),
        (BrowseFilter("shelf", choice="dropped"), by_seq[by_seq.dropped]),
        (BrowseFilter("shelf", choice="kept"), by_seq[~by_seq.dropped]),
        (BrowseFilter("shelf", score_model="f" * 64, min_score=0.5), by_seq[by_seq.score >= 0.5]),  # counters
        (BrowseFilter("shelf", score_model="f" * 64, min_score=0.4449), by_seq[by_seq.score >= 0.4449]),  # SQL
        (BrowseFilter("shelf", score_model="f" * 64, sort="lowest score"),
         by_seq[by_seq.score.notna()].sort_values(["score", "seq"])),
        (BrowseFilter("shelf", sort="name"), shelf.sort_values(["file_name", "seq"])),
        (BrowseFilter("shelf", sort="largest file"), shelf.sort_values(["bytes", "seq"], ascending=[False, True])),
        (BrowseFilter("shelf", sort="most pixels"),
         shelf.assign(px=shelf.width * shelf.height).sort_values(["px", "seq"], ascending=[False, True])),
        (BrowseFilter("shelf", tags=("dogs",), formats=("JPEG",), score_model="f" * 64, sort="highest score"),
         by_seq[(by_seq.tag == "dogs") & (by_seq.format == "JPEG") & by_seq.score.notna()].sort_values(
             ["score", "seq"], ascending=[False, True])),  # sorted by score: the scored images
    ]  # fmt: skip
    for f, expected in cases:
        assert _hashes(ws, f) == (list(expected.image_hash), len(expected)), f
    assert len(by_seq[by_seq.tag == "cats"]) > 0 and 0 < len(by_seq[by_seq.score >= 0.5]) < 36  # cases bite
    assert by_seq.score.isna().sum() > 0  # some images have no score: sorting by score leaves them out

    page, total = browse(ws, BrowseFilter("shelf", sort="name"), offset=10, limit=5)
    assert total == 36 and [r.image_hash for r in page] == list(
        shelf.sort_values(["file_name", "seq"]).image_hash[10:15]
    )
    first = page[0]
    row = shelf.set_index("image_hash").loc[first.image_hash]
    assert (first.width, first.height, first.bytes, first.format) == (row.width, row.height, row.bytes, row.format)
    assert (
        formats_of(ws, "shelf") == ["JPEG", "PNG"]
        and flags_of(ws, "shelf") == ["blurry"]
        or flags_of(ws, "shelf") == []
    )
    assert classifiers_of(ws, "shelf") == {"f" * 64: f"model-logreg-tag-cats ({'f' * 8})"}


def test_hostile_filter_text_is_a_value_and_bad_requests_say_why(ws: Workspace, shelf: pd.DataFrame):
    assert _hashes(ws, BrowseFilter("shelf", name_contains="x' OR 1=1 --")) == ([], 0)
    assert _hashes(ws, BrowseFilter("shelf", tags=("cats') OR ('1'='1",))) == ([], 0)
    for f, message in (
        (BrowseFilter("shelf", sort="m.seq; DROP TABLE images"), "sort 'm.seq; DROP TABLE images': use one of"),
        (BrowseFilter("shelf", sort="highest score"), "needs a classifier chosen"),
        (BrowseFilter("shelf", name_contains="x" * 201), "at most 200 characters"),
    ):
        with pytest.raises(BrowseError, match=message):
            browse(ws, f)
    with pytest.raises(BrowseError, match="a page is 1 to 500"):
        browse(ws, BrowseFilter("shelf"), 0, 501)
    assert int(ws.catalog.scalar("SELECT COUNT(*) FROM images")) >= 36  # nothing was dropped


def test_the_browse_view_filters_sorts_and_pages(ws: Workspace, shelf: pd.DataFrame, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/explore.py").run()
    at.radio(key="ex-mode").set_value("Browse").run()
    assert not at.exception, at.exception
    at.selectbox(key="ex-br-dataset").set_value("shelf").run()
    assert any("36 of 36 images" in c.value for c in at.caption)
    assert len(at.image) == 24
    at.multiselect(key="ex-br-tags").set_value(["dogs"]).run()
    at.selectbox(key="ex-br-sort").set_value("largest file").run()
    assert not at.exception, at.exception
    dogs = shelf[shelf.tag == "dogs"].sort_values(["bytes", "seq"], ascending=[False, True])
    assert any(f"{len(dogs)} of 36 images" in c.value for c in at.caption)
    shown = sorted(image.captions[0] for image in at.image)
    assert len(shown) == len(dogs) and all(c.startswith("shelf: dogs-") or "dogs-" in c for c in shown)
    at.number_input(key="ex-br-min-width").set_value(200).run()
    assert not at.exception and any("0 of 36 images" in c.value for c in at.caption) and len(at.image) == 0
