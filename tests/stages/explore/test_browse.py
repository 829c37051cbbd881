"""Browsing a dataset: every filter and sort checked against pandas over the same catalog tables (an
independent implementation of the same selection), hostile filter text kept as a value, and the page."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from services.core.datasets import DatasetError, dataset_id_of, image_count, list_datasets, tag_counts
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.explore.browse import (
    BrowseError,
    BrowseFilter,
    browse,
    categories_of,
    classifiers_of,
    flags_of,
    formats_of,
    stages_run,
    tags_of,
)
from services.stages.explore.duplicate_choices import record_choices
from services.stages.explore.image_detail import ImageNotFoundError, image_detail
from services.stages.explore.saved_views import ViewError, save_browse_view, save_view
from services.stages.export.stage import start_export
from tests.conftest import ROOT
from tests.support.cli import run_cli


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
        conn.executemany(  # a quality result: its flags reach the flag index and counters by the triggers
            "INSERT INTO stage_results (image_hash, stage, settings_hash, status, result, updated_at) "
            "VALUES (?, 'quality', 'q1', 'ok', '{\"flags\": [\"blurry\"]}', ?)",
            [(h, now) for h in hashes[:5]],
        )
    record_choices(ws, {hashes[0]: "drop", hashes[7]: "drop"}, "ana")
    gemini = {h: ["animal", ("indoor", "outdoor")[n % 2]] for n, h in enumerate(hashes) if n % 4 != 3}
    clip = {h: [("indoor", "outdoor")[n % 3 == 0]] for n, h in enumerate(hashes) if n < 30}
    words = ("a Red barn", "two dogs", "a red kite")
    described = {h: {"summary": f"Photo {n}", "objects": [{"name": words[n % 3], "count": n}]}
                 for n, h in enumerate(hashes) if n % 5 != 4}  # fmt: skip
    read = {h: {"code": f"25{n:09d}", "valid": n % 2 == 0} for n, h in enumerate(hashes) if n % 6 != 5}
    results = (
        [(h, "categorize:gemini", "g1", {"categories": c}) for h, c in gemini.items()]
        + [(h, "categorize:clip", "c1", {"categories": c}) for h, c in clip.items()]
        + [(h, "describe", "d1", {"description": d}) for h, d in described.items()]
        + [(h, "ocr", "o1", r) for h, r in read.items()]
    )
    with ws.catalog.write() as conn:  # as the describe, categorize and OCR stages record them
        conn.executemany(
            "INSERT INTO stage_results (image_hash, stage, settings_hash, status, result, updated_at) "
            "VALUES (?, ?, ?, 'ok', ?, ?)",
            [(h, stage, key, json.dumps(r), now) for h, stage, key, r in results],
        )
        conn.execute(  # a failed request's row and a result that is not JSON match nothing
            "INSERT INTO stage_results (image_hash, stage, settings_hash, status, result, updated_at) VALUES "
            "(?, 'categorize:gemini', 'g2', 'failed', '{\"categories\": [\"indoor\"]}', ?), "
            "(?, 'ocr', 'o2', 'ok', 'not json', ?)", (hashes[3], now, hashes[5], now))  # fmt: skip
    frame["gemini"] = frame.image_hash.map(gemini)
    frame["clip_cats"] = frame.image_hash.map(clip)
    frame["words"] = frame.image_hash.map(
        lambda h: " | ".join([described[h]["summary"], described[h]["objects"][0]["name"]]) if h in described else ""
    )
    frame["code"] = frame.image_hash.map(lambda h: read[h]["code"] if h in read else None)
    frame["valid"] = frame.image_hash.map(lambda h: read[h]["valid"] if h in read else None)
    frame["score"] = frame.image_hash.map(scores)
    frame["flagged"] = frame.image_hash.isin(hashes[:5])
    frame["dropped"] = frame.image_hash.isin([hashes[0], hashes[7]])
    return frame


def _has(column: pd.Series, category: str) -> pd.Series:
    """Rows whose list of categories holds this one (no list: no)."""
    return column.map(lambda c: isinstance(c, list) and category in c)


def _hashes(ws: Workspace, f: BrowseFilter, limit: int = 500) -> tuple[list[str], int]:
    rows, total = browse(ws, f, 0, limit)
    return [r.image_hash for r in rows], total


def test_each_filter_and_sort_selects_what_pandas_selects(ws: Workspace, shelf: pd.DataFrame):
    by_seq = shelf.sort_values("seq")
    cases = [
        (BrowseFilter(("shelf",)), by_seq),
        (BrowseFilter(("shelf",), tags=("cats", "birds")), by_seq[by_seq.tag.isin(["cats", "birds"])]),
        (BrowseFilter(("shelf",), formats=("PNG",)), by_seq[by_seq.format == "PNG"]),  # counted by the counters
        (BrowseFilter(("shelf",), formats=("PNG", "JPEG")), by_seq),
        (BrowseFilter(("shelf",), tags=("dogs",)), by_seq[by_seq.tag == "dogs"]),  # one tag: its counter
        (BrowseFilter(("shelf",), min_width=60, min_height=60), by_seq[(by_seq.width >= 60) & (by_seq.height >= 60)]),
        (BrowseFilter(("shelf",), min_bytes=400, max_bytes=900), by_seq[by_seq.bytes.between(400, 900)]),
        (BrowseFilter(("shelf",), name_contains="DOGS-1"), by_seq[by_seq.name.str.lower().str.contains("dogs-1")]),
        (BrowseFilter(("shelf",), flag="blurry"), by_seq[by_seq.flagged]),
        (BrowseFilter(("shelf",), choice="dropped"), by_seq[by_seq.dropped]),
        (BrowseFilter(("shelf",), choice="kept"), by_seq[~by_seq.dropped]),
        (BrowseFilter(("shelf",), score_model="f" * 64, min_score=0.5), by_seq[by_seq.score >= 0.5]),  # counters
        (BrowseFilter(("shelf",), score_model="f" * 64, min_score=0.4449), by_seq[by_seq.score >= 0.4449]),  # SQL
        (BrowseFilter(("shelf",), score_model="f" * 64, sort="lowest score"),
         by_seq[by_seq.score.notna()].sort_values(["score", "seq"])),
        (BrowseFilter(("shelf",), sort="name"), shelf.sort_values(["file_name", "seq"])),
        (BrowseFilter(("shelf",), sort="largest file"), shelf.sort_values(["bytes", "seq"], ascending=[False, True])),
        (BrowseFilter(("shelf",), sort="most pixels"),
         shelf.assign(px=shelf.width * shelf.height).sort_values(["px", "seq"], ascending=[False, True])),
        (BrowseFilter(("shelf",), tags=("dogs",), formats=("JPEG",), score_model="f" * 64, sort="highest score"),
         by_seq[(by_seq.tag == "dogs") & (by_seq.format == "JPEG") & by_seq.score.notna()].sort_values(
             ["score", "seq"], ascending=[False, True])),  # sorted by score: the scored images
        (BrowseFilter(("shelf",), category="indoor"), by_seq[_has(by_seq.gemini, "indoor")]),
        (BrowseFilter(("shelf",), clip_category="outdoor"), by_seq[by_seq.clip_cats.map(lambda c: c == ["outdoor"])]),
        (BrowseFilter(("shelf",), description_contains="RED"), by_seq[by_seq.words.str.lower().str.contains("red")]),
        (BrowseFilter(("shelf",), description_contains="objects"), by_seq.iloc[:0]),  # keys are not text
        (BrowseFilter(("shelf",), ocr="read"), by_seq[by_seq.code.notna()]),
        (BrowseFilter(("shelf",), ocr="valid"), by_seq[by_seq.valid.eq(True)]),
        (BrowseFilter(("shelf",), ocr="invalid"), by_seq[by_seq.valid.eq(False)]),
        (BrowseFilter(("shelf",), ocr_code_contains="0000001"), by_seq[by_seq.code.fillna("").str.contains("0000001")]),
        (BrowseFilter(("shelf",), category="animal", clip_category="indoor", tags=("cats",), sort="name"),
         by_seq[_has(by_seq.gemini, "animal") & _has(by_seq.clip_cats, "indoor") & (by_seq.tag == "cats")]
         .sort_values(["file_name", "seq"])),
    ]  # fmt: skip
    for f, expected in cases:
        assert _hashes(ws, f) == (list(expected.image_hash), len(expected)), f
    assert len(by_seq[by_seq.tag == "cats"]) > 0 and 0 < len(by_seq[by_seq.score >= 0.5]) < 36  # cases bite
    assert by_seq.score.isna().sum() > 0  # some images have no score: sorting by score leaves them out
    for column in ("gemini", "clip_cats", "code"):  # the result filters bite: some images have one, some do not
        assert 0 < by_seq[column].notna().sum() < 36
    assert categories_of(ws, "categorize:gemini") == ["animal", "indoor", "outdoor"]
    assert categories_of(ws, "categorize:clip") == ["indoor", "outdoor"]
    assert stages_run(ws, ("shelf",)) >= {"categorize:gemini", "categorize:clip", "describe", "ocr"}

    page, total = browse(ws, BrowseFilter(("shelf",), sort="name"), offset=10, limit=5)
    assert total == 36 and [r.image_hash for r in page] == list(
        shelf.sort_values(["file_name", "seq"]).image_hash[10:15]
    )
    first = page[0]
    row = shelf.set_index("image_hash").loc[first.image_hash]
    assert (first.width, first.height, first.bytes, first.format) == (row.width, row.height, row.bytes, row.format)
    assert formats_of(ws) == ["JPEG", "PNG"] and flags_of(ws, ("shelf",)) == ["blurry"]
    assert classifiers_of(ws, ("shelf",)) == {"f" * 64: f"model-logreg-tag-cats ({'f' * 8})"}


def _members(ws: Workspace) -> pd.DataFrame:
    """Every membership with its dataset, tags joined as a set, and the image's format: plain SQL, no Browse."""
    frame = pd.read_sql_query(
        """SELECT m.dataset_id, d.name AS dataset, d.kind, m.image_hash, m.name, m.seq, m.file_name, i.format
           FROM dataset_members m JOIN datasets d ON d.id = m.dataset_id JOIN images i ON i.hash = m.image_hash""",
        ws.catalog.conn,
    )
    tags = pd.read_sql_query("SELECT dataset_id, image_hash, tag FROM dataset_member_tags", ws.catalog.conn)
    return frame.merge(tags, on=["dataset_id", "image_hash"], how="left")


def test_several_datasets_and_the_whole_catalog_show_each_image_once(
    ws: Workspace, manager: JobManager, shelf: pd.DataFrame, tmp_path: Path
):
    """Several datasets, some kinds, or the whole catalog: each image once, under the first dataset (catalog
    order) holding it; a tag given by any of them counts. Checked against pandas over the membership tables."""
    yard = tmp_path / "yard"  # two of shelf's images again (same bytes, same hash) and four of its own
    for i in range(6):
        folder = yard / ("pets" if i < 2 else "garden")
        folder.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if i % 2 else "JPEG"
        size = (20 + 3 * i, 140 - 3 * i) if i < 2 else (50, 40 + i)
        (folder / f"y-{i}.{fmt.lower()}").write_bytes(_image(size, fmt, i if i < 2 else 100 + i))
    assert manager.run(start_folder_import(ws, manager, yard, "yard")).state == "completed"
    gen = list(shelf.sort_values("seq", ascending=False).image_hash[:4])  # shelf's last four, reversed
    save_view(ws, "gen-pick", gen, source_dataset="shelf", description="hand", kind="GEN")
    members = _members(ws)
    assert members[members.dataset == "yard"].image_hash.isin(shelf.image_hash).sum() == 2  # shared images

    def expected(frame: pd.DataFrame, by: list[str]) -> list[str]:
        firsts = frame.sort_values(["dataset_id", "seq"]).drop_duplicates("image_hash")  # first dataset holding it
        return list(firsts.sort_values([*by, "dataset_id", "seq"]).image_hash)

    both = members[members.dataset.isin(["shelf", "yard"])]
    pets = both[both.image_hash.isin(both[both.tag.isin(["pets", "birds"])].image_hash)]
    cases = [
        (BrowseFilter(("shelf", "yard")), expected(both, [])),
        (BrowseFilter(("yard", "shelf")), expected(both, [])),  # catalog order, whatever the order asked
        (BrowseFilter(), expected(members, [])),  # the whole catalog
        (BrowseFilter(kinds=("GEN",)), gen),  # the datasets of a kind: the view alone, in its order
        (BrowseFilter(("shelf", "yard"), tags=("pets", "birds")), expected(pets, [])),  # a tag from either
        (BrowseFilter(("shelf", "yard"), tags=("pets",)), expected(both[both.image_hash.isin(  # yard's tag on shelf's
            both[both.tag == "pets"].image_hash)], [])),  # images: shown under shelf, counted (not shelf's counter)
        (BrowseFilter(formats=("JPEG",)), expected(members[members.format == "JPEG"], [])),  # first by its counter
        (BrowseFilter(formats=("PNG",), sort="name"), expected(members[members.format == "PNG"], ["file_name"])),
        (BrowseFilter(kinds=("GEN", "folder"), name_contains="y-"), expected(members[members.name.str.contains(
            "y-") & members.kind.isin(["GEN", "folder"])], [])),
    ]  # fmt: skip
    assert set(members.kind) >= {"GEN", "folder"}
    for f, hashes in cases:
        assert _hashes(ws, f) == (hashes, len(hashes)), f
    assert len(expected(members, [])) == 36 + 4 < len(members)  # the bite: a view and shared images held twice
    rows, _ = browse(ws, BrowseFilter(("yard", "shelf")), 30, 10)
    names = members.drop_duplicates(["dataset", "image_hash"]).set_index(["dataset", "image_hash"]).name
    assert [r.dataset for r in rows] == ["shelf"] * 6 + ["yard"] * 4  # shared images under shelf, the older
    assert all(names[(r.dataset, r.image_hash)] == r.name for r in rows)
    assert tags_of(ws, ("shelf", "yard")) == ["birds", "cats", "dogs", "garden", "pets"]
    assert tags_of(ws, (), ("GEN",)) == sorted(set(members[members.dataset == "gen-pick"].tag)) != []
    results = pd.read_sql_query("SELECT image_hash, stage FROM stage_results WHERE status = 'ok'", ws.catalog.conn)
    in_yard = results[results.image_hash.isin(members[members.dataset == "yard"].image_hash)]
    assert stages_run(ws, ("yard",)) == set(in_yard.stage) and stages_run(ws, ()) == set(results.stage)
    with pytest.raises(BrowseError, match="no dataset of the datasets yard is of kind GEN"):
        browse(ws, BrowseFilter(("yard",), kinds=("GEN",)))
    with pytest.raises(DatasetError, match="no dataset named 'nope'"):
        browse(ws, BrowseFilter(("shelf", "nope")))

    listed = run_cli(
        ws.root, "browse", "--dataset", "yard", "--dataset", "shelf", "--format", "PNG", "--per-page", "500"
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    png = expected(both[both.format == "PNG"], [])
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        [h, "yard" if h not in set(shelf.image_hash) else "shelf"] for h in png
    ]
    assert f"{len(png)} images pass" in listed.stderr
    saved = save_browse_view(ws, "all png", BrowseFilter(formats=("PNG",)))
    assert saved.images == len(expected(members[members.format == "PNG"], []))
    assert saved.source == "view: every dataset; formats PNG"
    bad = run_cli(ws.root, "browse", "--of-kind", "GEN", "--dataset", "yard")
    assert bad.returncode != 0 and "no dataset of the datasets yard is of kind GEN" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_an_empty_workspace_says_there_is_nothing_to_browse(ws: Workspace):
    with pytest.raises(BrowseError, match="no dataset in this workspace yet"):
        browse(ws, BrowseFilter())
    with pytest.raises(BrowseError, match="no dataset in this workspace yet"):  # the choices' helpers too
        tags_of(ws, ())
    empty = run_cli(ws.root, "browse")
    assert empty.returncode != 0 and "no dataset in this workspace yet" in empty.stderr
    assert "Traceback" not in empty.stderr


def test_hostile_filter_text_is_a_value_and_bad_requests_say_why(ws: Workspace, shelf: pd.DataFrame):
    assert _hashes(ws, BrowseFilter(("shelf",), name_contains="x' OR 1=1 --")) == ([], 0)
    assert _hashes(ws, BrowseFilter(("shelf",), tags=("cats') OR ('1'='1",))) == ([], 0)
    assert _hashes(ws, BrowseFilter(("shelf",), category="x') OR 1=1 --")) == ([], 0)
    assert _hashes(ws, BrowseFilter(("shelf",), description_contains="%")) == ([], 0)  # no LIKE wildcard either
    for f, message in (
        (BrowseFilter(("shelf",), sort="m.seq; DROP TABLE images"), "sort 'm.seq; DROP TABLE images': use one of"),
        (BrowseFilter(("shelf",), sort="highest score"), "needs a classifier chosen"),
        (BrowseFilter(("shelf",), name_contains="x" * 201), "at most 200 characters"),
    ):
        with pytest.raises(BrowseError, match=message):
            browse(ws, f)
    with pytest.raises(BrowseError, match="a page is 1 to 500"):
        browse(ws, BrowseFilter(("shelf",)), 0, 501)
    assert int(ws.catalog.scalar("SELECT COUNT(*) FROM images")) >= 36  # nothing was dropped


def test_the_browse_view_filters_sorts_and_pages(ws: Workspace, shelf: pd.DataFrame, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    save_view(ws, "untagged", list(shelf.image_hash[:5]), description="hand")  # columns name, from_dataset
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/explore.py").run()
    at.radio(key="ex-mode").set_value("Browse").run()
    assert not at.exception, at.exception
    at.multiselect(key="ex-br-datasets").set_value(["untagged"]).run()  # a dataset without a tag column (the
    assert not at.exception, at.exception  # benchmark's URL-like dataset showed a traceback here)
    assert len(at.image) == 5 and at.multiselect(key="ex-br-tags").options == sorted(set(shelf.tag[:5]))
    at.multiselect(key="ex-br-datasets").set_value(["shelf"]).run()
    assert any("36 of the 36 images" in c.value for c in at.caption)
    assert len(at.image) == 24
    at.multiselect(key="ex-br-tags").set_value(["dogs"]).run()
    at.selectbox(key="ex-br-sort").set_value("largest file").run()
    assert not at.exception, at.exception
    dogs = shelf[shelf.tag == "dogs"].sort_values(["bytes", "seq"], ascending=[False, True])
    assert any(f"{len(dogs)} of the 36 images" in c.value for c in at.caption)
    shown = sorted(image.captions[0] for image in at.image)
    assert len(shown) == len(dogs) and all(c.startswith("shelf: dogs-") or "dogs-" in c for c in shown)
    at.number_input(key="ex-br-min-width").set_value(200).run()
    assert not at.exception and any("0 of the 36 images" in c.value for c in at.caption) and len(at.image) == 0
    at.number_input(key="ex-br-min-width").set_value(0).run()
    at.multiselect(key="ex-br-tags").set_value([]).run()
    at.multiselect(key="ex-br-datasets").set_value([]).run()  # the whole catalog: the view's images are shelf's
    assert not at.exception, at.exception
    assert any("36 of the 36 images of the catalog pass" in c.value for c in at.caption), [c.value for c in at.caption]
    assert [i.captions[0].split(" · ")[-1].split(":")[0] for i in at.image] == ["shelf"] * 24
    at.multiselect(key="ex-br-kinds").set_value(["view"]).run()
    assert any("5 of the 5 images of the catalog (view) pass" in c.value for c in at.caption)
    assert {i.captions[0].split(" · ")[-1].split(":")[0] for i in at.image} == {"untagged"}


def test_a_filtered_grid_saved_as_a_view_is_a_dataset_every_stage_takes(
    ws: Workspace, manager: JobManager, shelf: pd.DataFrame, tmp_path: Path
):
    """A saved view: the filter's images in its order, their tags and input rows, counted like any dataset, and
    exported by the export stage as the source's images would be."""
    f = BrowseFilter(("shelf",), tags=("cats", "dogs"), formats=("PNG",), sort="largest file")
    saved = save_browse_view(ws, "big png pets", f)
    by_seq = shelf.sort_values("seq")
    expected = by_seq[by_seq.tag.isin(["cats", "dogs"]) & (by_seq.format == "PNG")].sort_values(
        ["bytes", "seq"], ascending=[False, True]
    )
    assert saved.images == len(expected) > 3
    assert saved.source == "view of shelf: tags cats, dogs; formats PNG; sorted by largest file"
    assert _hashes(ws, BrowseFilter(("big png pets",))) == (list(expected.image_hash), len(expected))  # input order
    assert image_count(ws, "big png pets") == len(expected)
    assert tag_counts(ws, "big png pets") == expected.tag.value_counts().to_dict()
    view_id = dataset_id_of(ws.catalog, "big png pets")
    rows = ws.catalog.query("SELECT data FROM dataset_rows WHERE dataset_id = ? ORDER BY row_index", (view_id,))
    assert [json.loads(r[0])[1] for r in rows] == list(expected.tag)  # the source's path,tag rows, in view order
    assert {d.name: d.kind for d in list_datasets(ws.catalog)}["big png pets"] == "view"
    for f_view, mask in (  # a view's term counters (kept as members join) give what the source's rows say
        (BrowseFilter(("big png pets",), category="indoor"), _has(expected.gemini, "indoor")),
        (BrowseFilter(("big png pets",), ocr="read"), expected.code.notna()),
        (BrowseFilter(("big png pets",), ocr="invalid"), expected.valid.eq(False)),
        (BrowseFilter(("big png pets",), formats=("PNG",)), expected.format.eq("PNG")),
        (BrowseFilter(("big png pets",), tags=("cats",)), expected.tag.eq("cats")),
    ):
        assert _hashes(ws, f_view) == (list(expected[mask].image_hash), int(mask.sum()))  # in the view's order

    out = tmp_path / "exported"
    assert manager.run(start_export(ws, manager, "big png pets", "imagefolder", out)).state == "completed"
    written = sorted(p.relative_to(out).parts[0] for p in out.rglob("*.png"))
    assert written == sorted(expected.tag)  # one folder per tag, every image of the view

    # several datasets' images: each keeps its name and the dataset it came from
    mixed = save_view(ws, "picked", list(expected.image_hash[:2]) + [shelf.image_hash.iloc[0]], description="hand")
    assert mixed.images == 3 and mixed.source == "view: hand"
    picked_rows = ws.catalog.query(
        "SELECT data FROM dataset_rows WHERE dataset_id = ? ORDER BY row_index", (dataset_id_of(ws.catalog, "picked"),)
    )
    names = shelf.set_index("image_hash").name
    assert [json.loads(r[0]) for r in picked_rows] == [
        [names[h], "shelf"] for h in [*expected.image_hash[:2], shelf.image_hash.iloc[0]]
    ]


def test_a_view_that_cannot_be_saved_says_why_and_leaves_nothing(ws: Workspace, shelf: pd.DataFrame):
    before = [d.name for d in list_datasets(ws.catalog)]
    for call, message in (
        (lambda: save_browse_view(ws, "none", BrowseFilter(("shelf",), min_width=10_000)), "the selection is empty"),
        (lambda: save_browse_view(ws, "shelf", BrowseFilter(("shelf",))), "a dataset named 'shelf' already exists"),
        (lambda: save_browse_view(ws, "../x", BrowseFilter(("shelf",))), "cannot contain '/'"),
        (lambda: save_view(ws, "v", ["0" * 64], source_dataset="shelf", description="x"),
         "image '000000000000' is not in dataset 'shelf'"),
        (lambda: save_view(ws, "v", [shelf.image_hash.iloc[0], "f" * 64], description="x"),
         "image 'ffffffffffff' is not in any dataset"),
    ):  # fmt: skip
        with pytest.raises(ViewError, match=message):
            call()
    assert [d.name for d in list_datasets(ws.catalog)] == before  # a refused view left no dataset behind


def test_the_browse_view_filters_on_stage_results_and_saves_a_view(
    ws: Workspace, shelf: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/explore.py").run()
    at.radio(key="ex-mode").set_value("Browse").run()
    at.multiselect(key="ex-br-datasets").set_value(["shelf"]).run()
    assert at.selectbox(key="ex-br-category").options == ["(any)", "animal", "indoor", "outdoor"]
    at.selectbox(key="ex-br-category").set_value("indoor").run()
    at.selectbox(key="ex-br-ocr").set_value("a valid code").run()
    assert not at.exception, at.exception
    by_seq = shelf.sort_values("seq")
    chosen = by_seq[_has(by_seq.gemini, "indoor") & by_seq.valid.eq(True)]
    assert any(f"{len(chosen)} of the 36 images" in c.value for c in at.caption) and len(chosen) > 0
    at.text_input(key="ex-br-view-name").input("indoor codes").run()
    at.selectbox(key="ex-br-view-kind").set_value("test").run()
    at.button(key="ex-br-view-save").click().run()
    assert not at.exception, at.exception
    assert any(f"Saved dataset 'indoor codes': {len(chosen)} images" in s.value for s in at.success)
    assert _hashes(ws, BrowseFilter(("indoor codes",))) == (list(chosen.image_hash), len(chosen))
    assert {d.name: d.kind for d in list_datasets(ws.catalog)}["indoor codes"] == "test"
    at.button(key="ex-br-view-save").click().run()  # the same name again: refused, said on the page
    assert any("a dataset named 'indoor codes' already exists" in e.value for e in at.error)


def test_an_images_detail_holds_every_stage_result_source_dataset_and_choice(ws: Workspace, shelf: pd.DataFrame):
    first = shelf.sort_values("seq").iloc[0]
    save_view(ws, "one", [first.image_hash], source_dataset="shelf", description="hand")
    with ws.catalog.write() as conn:  # a categorised CSV names the image by its file name
        conn.execute("INSERT INTO label_sets (name, source, items, created_at) VALUES ('REAL-csv', 'csv:x', 1, 0)")
        conn.execute(
            "INSERT INTO labels (set_id, label, item) SELECT id, 'animal', ? FROM label_sets", (first.file_name,)
        )
    d = image_detail(ws, first.image_hash)
    assert (d.format, d.bytes, d.width, d.height) == (first.format, first.bytes, first.width, first.height)
    assert [(m["dataset"], m["name"], m["tags"]) for m in d.datasets] == [
        ("shelf", first["name"], [first.tag]), ("one", first["name"], [first.tag])
    ]  # fmt: skip
    assert [s["kind"] for s in d.sources] == ["path"] and d.sources[0]["locator"].endswith(first.file_name)
    stored = pd.read_sql_query("SELECT stage, settings_hash, result FROM stage_results WHERE image_hash = ?",
                               ws.catalog.conn, params=(first.image_hash,))  # fmt: skip
    assert sorted((r["stage"], r["settings"]) for r in d.results) == sorted(
        zip(stored.stage, stored.settings_hash, strict=True)
    )
    by_stage = {r["stage"]: r["result"] for r in d.results}
    assert by_stage["categorize:gemini"] == json.loads(stored.set_index("stage").result["categorize:gemini"])
    assert [(s["tag"], s["score"]) for s in d.scores] == ([("cats", first.score)] if pd.notna(first.score) else [])
    assert d.labels == [{"label_set": "REAL-csv", "label": "animal"}]
    assert [c["choice"] for c in d.choices] == ["drop"]  # the fixture dropped the first image
    with pytest.raises(ImageNotFoundError, match="no image '0000000000000000'"):
        image_detail(ws, "0" * 64)
