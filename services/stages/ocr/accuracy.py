"""OCR accuracy against a ground-truth CSV: CER and WER per image and overall, and exact-match rate.

CER is character edits (Levenshtein: insertions, deletions, substitutions) over reference characters; WER the
same over whitespace-separated words. Overall rates sum the edits and the reference lengths over every matched
image (as jiwer does), so long references weigh more than short ones. The prediction for an image is its code
after the rules when the rules accept it, else the text as read, else "" (a failed or empty reading).

Truth rows are matched to result rows by name (`NAME_MATCHING`); when none match, the report says so with the
row counts instead of showing a 0% error over nothing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from services.core import csv_safety

NAME_MATCHING = (
    "a truth name matches a result's image name exactly, else its file name without folders, else (for a truth "
    "name without an extension) the file name without its extension; a name that fits several images matches none"
)


def edit_distance(a: list[str] | str, b: list[str] | str) -> int:
    """Levenshtein distance between two strings (or two word lists)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@dataclass
class Accuracy:
    images: int
    cer: float  # character error rate: edits / reference characters
    wer: float  # word error rate: word edits / reference words
    exact: float  # share of images read exactly


def accuracy(pairs: list[tuple[str, str]]) -> Accuracy:
    """(reference, prediction) pairs -> CER, WER and exact-match rate (callers check there is a pair)."""
    chars = sum(len(ref) for ref, _ in pairs) or 1
    words = sum(len(ref.split()) for ref, _ in pairs) or 1
    cer = sum(edit_distance(ref, hyp) for ref, hyp in pairs) / chars
    wer = sum(edit_distance(ref.split(), hyp.split()) for ref, hyp in pairs) / words
    exact = sum(ref == hyp for ref, hyp in pairs) / (len(pairs) or 1)
    return Accuracy(len(pairs), round(cer, 4), round(wer, 4), round(exact, 4))


def read_ground_truth(data: bytes) -> dict[str, str]:
    """A CSV with `image_name,text` (or `image,expected`) columns; rows without a name are skipped."""
    rows = list(csv_safety.dict_reader(io.StringIO(data.decode("utf-8-sig"))))  # may be our own guarded CSV
    if not rows:
        return {}
    columns = {c.lower(): c for c in rows[0] if c is not None}
    name_col = next((columns[c] for c in ("image_name", "image", "file", "name") if c in columns), None)
    text_col = next((columns[c] for c in ("text", "expected", "code", "label") if c in columns), None)
    if name_col is None or text_col is None:
        raise ValueError(f"ground truth needs image_name and text columns (columns: {', '.join(map(str, rows[0]))})")
    return {r[name_col].strip(): r[text_col] or "" for r in rows if (r[name_col] or "").strip()}


@dataclass
class ImageScore:
    image: str
    reference: str
    prediction: str
    char_edits: int
    chars: int
    cer: float | None  # None when the reference is empty (no rate to give)
    word_edits: int
    words: int
    wer: float | None
    exact: bool
    error: str | None = None  # why the image has no reading, when it failed


@dataclass
class TruthReport:
    truth_rows: int
    result_rows: int
    images: list[ImageScore] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # truth names with no result
    overall: Accuracy | None = None  # None when no name matched

    @property
    def matched(self) -> int:
        return len(self.images)

    def summary(self) -> str:
        """One line: the overall figures, or why there are none."""
        read = _count(self.result_rows, "image") + " read"
        if self.overall is None:
            return f"no match: 0 of {_count(self.truth_rows, 'ground-truth row')} matched ({read}); {NAME_MATCHING}"
        o = self.overall
        return (
            f"{self.matched} of {_count(self.truth_rows, 'ground-truth row')} matched ({read}): "
            f"CER {o.cer:.2%}, WER {o.wer:.2%}, exact {o.exact:.0%}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "truth_rows": self.truth_rows, "result_rows": self.result_rows, "matched": self.matched,
            "matching": NAME_MATCHING, "overall": asdict(self.overall) if self.overall else None,
            "unmatched": self.unmatched, "images": [asdict(s) for s in self.images],
        }  # fmt: skip


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def prediction_of(row: dict[str, Any]) -> str:
    """The code when the rules accept the reading, else the text as read, else ""."""
    return str(row.get("code") or row.get("raw") or "")


def score_image(name: str, reference: str, prediction: str, error: str | None = None) -> ImageScore:
    chars, words = len(reference), len(reference.split())
    char_edits = edit_distance(reference, prediction)
    word_edits = edit_distance(reference.split(), prediction.split())
    return ImageScore(
        image=name, reference=reference, prediction=prediction, char_edits=char_edits, chars=chars,
        cer=round(char_edits / chars, 4) if chars else None, word_edits=word_edits, words=words,
        wer=round(word_edits / words, 4) if words else None, exact=reference == prediction, error=error,
    )  # fmt: skip


def _file_name(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).name


Row = dict[str, Any]


def match_rows(truth: dict[str, str], rows: Iterable[Row]) -> tuple[list[tuple[str, Row]], list[str]]:
    """(truth name, result row) pairs by `NAME_MATCHING`, and the truth names left unmatched."""
    exact: dict[str, dict[str, Any]] = {}
    by_file: dict[str, list[dict[str, Any]]] = {}
    by_stem: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        name = str(row["image"])
        exact.setdefault(name, row)
        by_file.setdefault(_file_name(name), []).append(row)
        by_stem.setdefault(PurePosixPath(_file_name(name)).stem, []).append(row)
    pairs, unmatched = [], []
    for name in truth:
        file_name = _file_name(name)
        candidates = [exact[name]] if name in exact else by_file.get(file_name, [])
        if not candidates and not PurePosixPath(file_name).suffix:
            candidates = by_stem.get(file_name, [])
        if len(candidates) == 1:
            pairs.append((name, candidates[0]))
        else:
            unmatched.append(name)
    return pairs, unmatched


def score_against_truth(truth: dict[str, str], rows: list[dict[str, Any]]) -> TruthReport:
    """Rows are results with `image`, `code`, `raw` and optionally `error` (failed items count as read "")."""
    pairs, unmatched = match_rows(truth, rows)
    report = TruthReport(truth_rows=len(truth), result_rows=len(rows), unmatched=unmatched)
    for name, row in pairs:
        report.images.append(score_image(name, truth[name], prediction_of(row), row.get("error")))
    if report.images:
        report.overall = accuracy([(s.reference, s.prediction) for s in report.images])
    return report


REPORT_COLUMNS = ["image", "reference", "prediction", "char_edits", "chars", "cer", "word_edits", "words", "wer",
                  "exact", "error"]  # fmt: skip


def truth_report_csv(report: TruthReport, guard: bool = True) -> str:
    """A row per image, then an `(overall)` row with the summed edits and lengths (when anything matched)."""
    buffer = io.StringIO()
    writer = csv_safety.writer(buffer, guard)  # OCR readings and image names are hostile text
    writer.writerow(REPORT_COLUMNS)
    for score in report.images:
        writer.writerow([asdict(score)[c] for c in REPORT_COLUMNS])
    if report.overall is not None:
        o, images = report.overall, report.images
        chars, words = sum(s.chars for s in images), sum(s.words for s in images)
        char_edits, word_edits = sum(s.char_edits for s in images), sum(s.word_edits for s in images)
        writer.writerow(["(overall)", "", "", char_edits, chars, o.cer, word_edits, words, o.wer, o.exact, ""])
    return buffer.getvalue()


def write_truth_report(report: TruthReport, path: Path, guard: bool = True) -> Path:
    """JSON (the whole report) or CSV (`truth_report_csv`) by the file's suffix."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: the accuracy report is written as .json or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=1) if suffix == ".json" else truth_report_csv(report, guard)
    path.write_text(text, encoding="utf-8", newline="")
    return path
