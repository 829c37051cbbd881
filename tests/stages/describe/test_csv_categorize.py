"""`categorize --input-csv` (issue 19): seeds 001/002 categorised an existing descriptions CSV without the images.
The real CLI in a subprocess, the real Gemini SDK against the loopback fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core import csv_safety
from tests.conftest import ROOT, read_csv
from tests.support.describe_data import serve_fake_gemini
from tests.support.fake_gemini import FakeGemini


def cli(ws_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(ws_root), *args], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.fixture
def gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    yield from serve_fake_gemini(monkeypatch)


def write_descriptions(path: Path, rows: list[list[str]]) -> Path:
    with csv_safety.open_for_write(path, guard=False) as writer:
        writer.writerow(["image_name", "description"])
        writer.writerows(rows)
    return path


def test_a_descriptions_csv_is_categorised_from_its_text_alone(tmp_path: Path, gemini: FakeGemini):
    structured = json.dumps({"summary": "A blue shape", "objects": [{"name": "shape", "attributes": ["blue"]}]})
    source = write_descriptions(tmp_path / "real_descriptions.csv", [
        ["a.jpg", "A red square on a plain background."],
        ["b.jpg", "A green field."],
        ["c.jpg", structured],  # the seeds' JSON-structured description
        ["d.jpg", "A red square on a plain background."],  # the same text again: asked once
        ["e.jpg", "=HYPERLINK(\"http://x\") a magenta sign"],  # the answer is blocked: the row says so
    ])  # fmt: skip
    gemini.script["magenta"] = ["blocked"] * 10
    (tmp_path / "cats.csv").write_text("Category\nred\ngreen\nblue\n")
    ws_root = tmp_path / "ws"  # a workspace that holds no image at all
    out = tmp_path / "reports" / "real_descriptions_categorized.csv"
    run = cli(ws_root, "categorize", "--input-csv", str(source), "--categories-csv", str(tmp_path / "cats.csv"),
              "--output-csv", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"written: {out}" in run.stdout and "Traceback" not in run.stderr
    rows = read_csv(out)
    assert [(r["image_name"], r["categories"]) for r in rows] == [
        ("a.jpg", "red"), ("b.jpg", "green"), ("c.jpg", "blue"), ("d.jpg", "red"), ("e.jpg", "(failed)"),
    ]  # fmt: skip
    assert rows[2]["description"] == "A blue shape"
    raw = out.read_text()
    assert "'=HYPERLINK" in raw  # a cell a spreadsheet would run is neutralised
    texts = [e for e in gemini.log if e.kind == "text" and e.colour != "magenta"]
    assert len(texts) == 3  # four answered rows, three distinct descriptions

    again = cli(ws_root, "categorize", "--input-csv", str(source), "--list", "cats", "--output-csv",
                str(tmp_path / "again.csv"))  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert len([e for e in gemini.log if e.kind == "text" and e.colour != "magenta"]) == 3  # all from the cache
    assert [r["categories"] for r in read_csv(tmp_path / "again.csv")][:4] == ["red", "green", "blue", "red"]


def test_bad_descriptions_csvs_and_flags_are_refused_with_the_cause(tmp_path: Path, gemini: FakeGemini):
    (tmp_path / "cats.csv").write_text("Category\nred\n")
    ws_root = tmp_path / "ws"
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,text\na.jpg,red\n")
    bad = cli(ws_root, "categorize", "--input-csv", str(wrong), "--categories", str(tmp_path / "cats.csv"))
    assert bad.returncode == 2 and "wrong.csv: needs `image_name` and `description` columns" in bad.stderr
    empty_cell = write_descriptions(tmp_path / "gap.csv", [["a.jpg", "red"], ["b.jpg", ""]])
    gap = cli(ws_root, "categorize", "--input-csv", str(empty_cell), "--categories", str(tmp_path / "cats.csv"))
    assert gap.returncode == 2 and "gap.csv, row 3 (b.jpg): empty description" in gap.stderr
    huge = tmp_path / "huge.csv"
    huge.write_text("image_name,description\na.jpg," + "x" * 200_000 + "\n")
    too_long = cli(ws_root, "categorize", "--input-csv", str(huge), "--categories", str(tmp_path / "cats.csv"))
    assert too_long.returncode == 2 and "huge.csv, row 2: field larger than field limit" in too_long.stderr
    both = cli(ws_root, "categorize", "--input-csv", str(empty_cell), "--dataset", "x", "--list", "cats")
    assert both.returncode == 2 and "--dataset NAME, or --input-csv FILE" in both.stderr
    clip = cli(ws_root, "categorize", "--input-csv", str(empty_cell), "--engine", "clip", "--list", "cats")
    assert clip.returncode == 2 and "only --engine gemini" in clip.stderr
    assert all("Traceback" not in r.stderr for r in (bad, gap, too_long, both, clip))
    assert not gemini.log
