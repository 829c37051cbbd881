"""OCR accuracy against ground truth: CER and WER checked against jiwer (an independent implementation) and
a textbook Levenshtein written here, name matching, the "no match" report, and the JSON/CSV reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jiwer
import pytest

from services.stages.ocr.accuracy import (
    NAME_MATCHING,
    accuracy,
    edit_distance,
    read_ground_truth,
    score_against_truth,
    write_truth_report,
)

# (reference, prediction): substitutions, insertions, deletions, split and merged words, an empty reading
PAIRS = [
    ("25012345678", "25012345678"),
    ("25012345678", "Z5O1234S678"),
    ("Quality OK", "Quality 0K"),
    ("SERIAL 4711", "SERIAL4711"),
    ("Lot 7 checked", "Lot 7 checked twice"),
    ("hello world", "hello word"),
    ("pressure valve", ""),
]


def textbook_levenshtein(a: str, b: str) -> int:
    """The full dynamic-programming table (Wagner-Fischer), written out independently of the product's."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        table[i][0] = i
    for j in range(len(b) + 1):
        table[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + cost)
    return table[len(a)][len(b)]


def test_edit_distance_matches_a_textbook_levenshtein_and_known_values():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("ab", "") == 2
    for ref, hyp in PAIRS:
        assert edit_distance(ref, hyp) == textbook_levenshtein(ref, hyp), (ref, hyp)


def test_cer_and_wer_per_image_and_overall_match_jiwer():
    rows = [{"image": f"{i}.png", "code": None, "raw": hyp} for i, (_, hyp) in enumerate(PAIRS)]
    truth = {f"{i}.png": ref for i, (ref, _) in enumerate(PAIRS)}
    report = score_against_truth(truth, rows)
    assert report.matched == len(PAIRS) and report.overall is not None
    for score, (ref, hyp) in zip(report.images, PAIRS, strict=True):
        assert score.cer == pytest.approx(jiwer.cer(ref, hyp), abs=5e-5), (ref, hyp)
        assert score.wer == pytest.approx(jiwer.wer(ref, hyp), abs=5e-5), (ref, hyp)
        assert score.exact == (ref == hyp)
    refs, hyps = [r for r, _ in PAIRS], [h for _, h in PAIRS]
    assert report.overall.cer == pytest.approx(jiwer.cer(refs, hyps), abs=5e-5)
    assert report.overall.wer == pytest.approx(jiwer.wer(refs, hyps), abs=5e-5)
    assert report.overall.exact == round(1 / len(PAIRS), 4)
    assert accuracy(PAIRS) == report.overall


def test_the_code_is_scored_when_the_rules_accept_it_else_the_text_as_read_and_failures_count_as_empty():
    rows = [
        {"image": "a.png", "code": "25012345678", "raw": "Z5O1234S678"},
        {"image": "b.png", "code": None, "raw": "NO CODE"},
        {"image": "c.png", "code": None, "raw": None, "error": "recipe_misfit: ..."},
    ]
    report = score_against_truth({"a.png": "25012345678", "b.png": "NO CODE", "c.png": "25000000001"}, rows)
    assert [(s.prediction, s.exact) for s in report.images] == [("25012345678", True), ("NO CODE", True), ("", False)]
    assert report.images[2].error == "recipe_misfit: ..." and report.images[2].cer == 1.0


def test_no_match_is_reported_with_the_counts_not_as_zero_error():
    rows = [{"image": "part-00.png", "code": "25012345678", "raw": "25012345678"}]
    report = score_against_truth({"other.png": "25012345678", "more.png": "x"}, rows)
    assert report.overall is None and report.matched == 0 and report.unmatched == ["other.png", "more.png"]
    assert report.summary() == f"no match: 0 of 2 ground-truth rows matched (1 image read); {NAME_MATCHING}"
    assert "0.00%" not in report.summary()
    empty = score_against_truth({}, rows)
    assert empty.overall is None and empty.summary().startswith("no match: 0 of 0 ground-truth rows")


def test_names_match_exactly_then_without_folders_then_without_the_extension_and_never_ambiguously():
    rows = [
        {"image": "batch1/a.png", "code": "A", "raw": "A"},
        {"image": "b.png", "code": "B", "raw": "B"},
        {"image": "x/c.png", "code": "C1", "raw": "C1"},
        {"image": "y/c.png", "code": "C2", "raw": "C2"},
        {"image": "d.jpg", "code": "D", "raw": "D"},
    ]
    truth = {"batch1/a.png": "A", "b.png": "B", "b": "B", "c.png": "C", "x/c.png": "C1", "d.png": "D", "D": "D"}
    report = score_against_truth(truth, rows)
    matched = {s.image: s.prediction for s in report.images}
    assert matched == {"batch1/a.png": "A", "b.png": "B", "b": "B", "x/c.png": "C1"}
    # c.png fits two images; d.png names another extension; D differs in case
    assert report.unmatched == ["c.png", "d.png", "D"]
    folder_only = score_against_truth({"a.png": "A"}, rows)
    assert [s.prediction for s in folder_only.images] == ["A"]


def test_ground_truth_csv_columns_and_blank_rows():
    assert read_ground_truth(b"\xef\xbb\xbfimage,expected\na.png,25\n,orphan\nb.png,\n") == {"a.png": "25", "b.png": ""}
    assert read_ground_truth(b"image_name,text\n") == {}
    with pytest.raises(ValueError, match="image_name and text columns"):
        read_ground_truth(b"a,b\n1,2\n")


def test_reports_are_written_as_json_and_csv(tmp_path: Path):
    rows = [{"image": "a.png", "code": None, "raw": "hello word"}, {"image": "b.png", "code": "ok", "raw": "ok"}]
    report = score_against_truth({"a.png": "hello world", "b.png": "ok"}, rows)
    data = json.loads(write_truth_report(report, tmp_path / "r.json").read_text())
    assert data["matched"] == 2 and data["truth_rows"] == 2 and data["result_rows"] == 2
    assert data["overall"]["cer"] == pytest.approx(jiwer.cer(["hello world", "ok"], ["hello word", "ok"]), abs=5e-5)
    with open(write_truth_report(report, tmp_path / "r.csv"), newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["image"] for r in table] == ["a.png", "b.png", "(overall)"]
    assert table[0]["char_edits"] == "1" and table[0]["chars"] == "11" and table[2]["chars"] == "13"
    with pytest.raises(ValueError, match=".json or .csv"):
        write_truth_report(report, tmp_path / "r.txt")
