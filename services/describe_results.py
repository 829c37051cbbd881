"""Reading Describe & Categorize results back: tables for the page, the seeds' CSV exports, full JSON as
JSONL or Parquet, and the agreement between Gemini's categories and CLIP zero-shot's.

Results are looked up by the settings hashes of the current model, image size and category list, so what a
page shows is exactly what a rerun with those settings would skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services import csv_safety
from services.categories import UNKNOWN, CategoryList
from services.datasets import dataset_entries
from services.describe import CATEGORIZE_STAGE, DESCRIBE_STAGE, categorize_settings_hash, describe_settings_hash
from services.names import file_name
from services.workspace import Workspace

EXPORT_FORMATS = ("descriptions-csv", "categories-csv", "jsonl", "parquet")


@dataclass(frozen=True)
class ResultKeys:
    """Which stage results belong together: one model's descriptions and categories, and a CLIP run's."""

    describe_hash: str
    categorize_hash: str | None = None
    clip_stage: str | None = None
    clip_hash: str | None = None

    @classmethod
    def current(
        cls, ws: Workspace, category_list: CategoryList | None = None, clip_key: tuple[str, str] | None = None
    ) -> ResultKeys:
        model = ws.settings.caption_model
        return cls(
            describe_hash=describe_settings_hash(model, ws.settings.processing.image_max_size),
            categorize_hash=categorize_settings_hash(model, category_list) if category_list else None,
            clip_stage=clip_key[0] if clip_key else None,
            clip_hash=clip_key[1] if clip_key else None,
        )


@dataclass
class ImageResult:
    image_hash: str
    name: str
    path: str
    description: dict[str, Any] | None = None
    describe_error: str | None = None
    categories: list[str] | None = None
    rejected: list[str] = field(default_factory=list)
    categorize_error: str | None = None
    clip_categories: list[str] | None = None
    clip_scores: dict[str, float] | None = None

    @property
    def summary(self) -> str:
        return str((self.description or {}).get("summary", ""))

    @property
    def agrees(self) -> bool | None:
        """CLIP's top category is one of Gemini's (None until both have answered)."""
        if not self.categories or not self.clip_categories:
            return None
        return self.clip_categories[0] in self.categories


def iter_results(ws: Workspace, dataset: str, keys: ResultKeys, batch: int = 500) -> Iterator[ImageResult]:
    """Every stored image of the dataset with whatever results it has, read 500 images per query."""
    entries = dataset_entries(ws, dataset)
    wanted = [(DESCRIBE_STAGE, keys.describe_hash)]
    if keys.categorize_hash:
        wanted.append((CATEGORIZE_STAGE, keys.categorize_hash))
    if keys.clip_stage and keys.clip_hash:
        wanted.append((keys.clip_stage, keys.clip_hash))
    for start in range(0, len(entries), batch):
        part = entries[start : start + batch]
        marks = ",".join("?" * len(part))
        pairs = " OR ".join("(stage = ? AND settings_hash = ?)" for _ in wanted)
        rows = ws.catalog.query(
            f"""SELECT image_hash, stage, status, result, error FROM stage_results
                WHERE image_hash IN ({marks}) AND ({pairs})""",
            (*[h for h, _, _ in part], *[x for pair in wanted for x in pair]),
        )
        found: dict[str, dict[str, Any]] = {}
        for r in rows:
            found.setdefault(r["image_hash"], {})[r["stage"]] = r
        for image_hash, path, name in part:
            yield _image_result(image_hash, path, name, found.get(image_hash, {}), keys)


def _image_result(image_hash: str, path: str, name: str, stages: dict[str, Any], keys: ResultKeys) -> ImageResult:
    out = ImageResult(image_hash=image_hash, name=name, path=path)
    row = stages.get(DESCRIBE_STAGE)
    if row is not None:
        if row["status"] == "ok":
            out.description = json.loads(row["result"])["description"]
        else:
            out.describe_error = row["error"]
    row = stages.get(CATEGORIZE_STAGE)
    if row is not None:
        if row["status"] == "ok":
            data = json.loads(row["result"])
            out.categories = list(data["categories"])
            out.rejected = list(data.get("rejected", []))
        else:
            out.categorize_error = row["error"]
    row = stages.get(keys.clip_stage or "")
    if row is not None and row["status"] == "ok":
        data = json.loads(row["result"])
        out.clip_categories = list(data["categories"])
        out.clip_scores = dict(data.get("scores", {}))
    return out


def filter_results(
    results: Iterator[ImageResult] | list[ImageResult],
    category: str | None = None,
    text: str | None = None,
    status: str = "all",
) -> list[ImageResult]:
    """The page's filters: a category (from either engine), words in the description, and a status
    (`all`, `described`, `categorized`, `failed`, `pending`, `disagree`)."""
    needle = (text or "").strip().lower()
    out = []
    for r in results:
        if category and category not in (r.categories or []) and category not in (r.clip_categories or [])[:1]:
            continue
        if needle and needle not in json.dumps(r.description or {}, ensure_ascii=False).lower():
            continue
        failed = bool(r.describe_error or r.categorize_error)
        if status == "described" and r.description is None:
            continue
        if status == "categorized" and r.categories is None:
            continue
        if status == "failed" and not failed:
            continue
        if status == "pending" and (r.description is not None or r.categories is not None or failed):
            continue
        if status == "disagree" and r.agrees is not False:
            continue
        out.append(r)
    return out


# --- exports ----------------------------------------------------------------------------------------


def export(
    ws: Workspace, dataset: str, keys: ResultKeys, fmt: str, out: Path | None = None, guard: bool | None = None
) -> tuple[Path, int]:
    """Write one export; returns the file and how many images it holds (failed and pending ones are left out).
    CSV cells are formula-guarded unless `guard` (default: the `csv_formula_guard` setting) is False."""
    guard = csv_safety.guard_enabled(ws.settings) if guard is None else guard
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "categories-csv" and not keys.categorize_hash:
        raise ValueError("the categories CSV needs a category list")
    suffix = {"descriptions-csv": "descriptions.csv", "categories-csv": "categorized.csv"}.get(fmt, fmt)
    out = out or ws.root / "exports" / file_name(dataset, f"-{suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = iter_results(ws, dataset, keys)
    if fmt == "descriptions-csv":
        described = ([r.name, r.summary] for r in results if r.description)
        return out, _write_csv(out, ["image_name", "description"], described, guard)
    if fmt == "categories-csv":
        rows = ([r.name, r.summary, ", ".join(r.categories)] for r in results if r.categories is not None)
        return out, _write_csv(out, ["image_name", "description", "categories"], rows, guard)
    records = (_record(r) for r in results if r.description is not None or r.categories is not None)
    if fmt == "jsonl":
        n = 0
        with open(out, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        return out, n
    import pandas as pd

    frame = pd.DataFrame(
        [{**r, "description": json.dumps(r["description"], ensure_ascii=False)} for r in records],
        columns=["image_name", "image_hash", "summary", "description", "categories", "clip_categories"],
    )
    frame.to_parquet(out, index=False)
    return out, len(frame)


def _write_csv(out: Path, header: list[str], rows: Iterator[list[str]], guard: bool) -> int:
    n = 0
    with csv_safety.open_for_write(out, guard) as writer:
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


def _record(r: ImageResult) -> dict[str, Any]:
    return {
        "image_name": r.name,
        "image_hash": r.image_hash,
        "summary": r.summary,
        "description": r.description,
        "categories": r.categories,
        "clip_categories": r.clip_categories,
    }


# --- agreement between engines ----------------------------------------------------------------------


@dataclass
class CategoryAgreement:
    category: str
    gemini: int  # images Gemini put in the category
    clip: int  # images whose CLIP top category it is
    both: int

    @property
    def agreement(self) -> float | None:
        """Of Gemini's images in this category, the share CLIP also put there first."""
        return self.both / self.gemini if self.gemini else None


def agreement(results: list[ImageResult], category_list: CategoryList) -> tuple[list[CategoryAgreement], float | None]:
    """Per category counts, and the overall share of images (answered by both) where CLIP's top is Gemini's."""
    rows = {c: CategoryAgreement(c, 0, 0, 0) for c in (*category_list.categories, UNKNOWN)}
    compared = agreed = 0
    for r in results:
        if not r.categories or not r.clip_categories:
            continue
        compared += 1
        top = r.clip_categories[0]
        agreed += top in r.categories
        for c in r.categories:
            if c in rows:
                rows[c].gemini += 1
                rows[c].both += c == top
        if top in rows:
            rows[top].clip += 1
    used = [a for a in rows.values() if a.gemini or a.clip]
    return used, (agreed / compared if compared else None)
