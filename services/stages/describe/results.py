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

from services.core import csv_safety
from services.core.datasets import STORED_PATH, dataset_entries, dataset_id_of, image_count, stage_count
from services.core.names import file_name
from services.core.workspace import Workspace
from services.stages.describe.categories import UNKNOWN, CategoryList
from services.stages.describe.stage import (
    CATEGORIZE_STAGE,
    DESCRIBE_STAGE,
    categorize_settings_hash,
    describe_settings_hash,
)

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


# --- the page's views: counts, a filtered table, the images both engines answered ----------------------------
#
# A page never reads every image of a dataset: counts come from the catalog's per-dataset counters (failures,
# which are few, from the results index), and a filtered table starts from the results the filter needs (so it
# costs what there are of them) or walks the images in input order until it has enough.


@dataclass
class ResultCounts:
    images: int
    described: int
    categorized: int
    clip: int
    failed: int


def result_counts(ws: Workspace, dataset: str, keys: ResultKeys) -> ResultCounts:
    """Images, and how many have a description, Gemini's categories, CLIP's, or a failure."""
    failed = 0
    failing = [(DESCRIBE_STAGE, keys.describe_hash)] + (
        [(CATEGORIZE_STAGE, keys.categorize_hash)] if keys.categorize_hash else []
    )
    if any(stage_count(ws, dataset, stage, h, "failed") for stage, h in failing):
        failed = _images_with_any(ws, dataset_id_of(ws.catalog, dataset), [(*pair, "failed") for pair in failing])
    return ResultCounts(
        images=image_count(ws, dataset),
        described=stage_count(ws, dataset, DESCRIBE_STAGE, keys.describe_hash),
        categorized=stage_count(ws, dataset, CATEGORIZE_STAGE, keys.categorize_hash) if keys.categorize_hash else 0,
        clip=stage_count(ws, dataset, keys.clip_stage, keys.clip_hash) if keys.clip_stage and keys.clip_hash else 0,
        failed=failed,
    )


STATUSES = ("all", "described", "categorized", "failed", "pending", "disagree")
COUNT_CAP = 10_000  # a category or text filter's matches are counted up to this ("10,000+")


def results_view(
    ws: Workspace,
    dataset: str,
    keys: ResultKeys,
    category: str | None = None,
    text: str | None = None,
    status: str = "all",
    limit: int = 1000,
) -> tuple[list[ImageResult], int]:
    """The first `limit` images in input order that pass the page's filters (as `filter_results` has them), and
    how many pass in all (with a category or text filter, or `disagree`: up to COUNT_CAP + 1)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: use one of {', '.join(STATUSES)}")
    dataset_id = dataset_id_of(ws.catalog, dataset)
    needle = (text or "").strip().lower()
    d = (DESCRIBE_STAGE, keys.describe_hash)
    c = (CATEGORIZE_STAGE, keys.categorize_hash or "")
    k = (keys.clip_stage or "", keys.clip_hash or "")
    where: list[str] = []
    params: list[Any] = []
    if category:
        where.append(
            """(EXISTS (SELECT 1 FROM json_each(CASE WHEN c.status = 'ok' THEN c.result ELSE '{}' END, '$.categories')
                        WHERE value = ?)
                OR (k.status = 'ok' AND json_extract(k.result, '$.categories[0]') = ?))"""
        )
        params += [category, category]
    if needle:  # matched as filter_results does: in the description's JSON text, any case, any script
        ws.catalog.conn.create_function("description_text", 1, _description_text, deterministic=True)
        if needle.isascii():  # a quick necessary test in SQL first: the stored JSON escapes only non-ASCII
            where.append("instr(lower(d.result), ?) > 0")
            params.append(needle)
        where.append("d.status = 'ok' AND instr(description_text(d.result), ?) > 0")
        params.append(needle)
    where.append({
        "all": "1",
        "described": "d.status = 'ok'",
        "categorized": "c.status = 'ok'",
        "failed": "(d.status = 'failed' OR c.status = 'failed')",
        "pending": "COALESCE(d.status, '') NOT IN ('ok', 'failed') AND COALESCE(c.status, '') NOT IN ('ok', 'failed')",
        "disagree": """c.status = 'ok' AND k.status = 'ok' AND json_array_length(c.result, '$.categories') > 0
            AND json_extract(k.result, '$.categories[0]') NOT IN
                (SELECT value FROM json_each(c.result, '$.categories'))""",
    }[status])  # fmt: skip
    # which results every passing image must have, to start from them instead of from every image
    drivers: list[tuple[str, str, str]] = []
    if needle or status == "described":
        drivers = [(*d, "ok")]
    elif status in ("categorized", "disagree"):
        drivers = [(*c, "ok")]
    elif status == "failed":
        drivers = [(*d, "failed")] + ([(*c, "failed")] if keys.categorize_hash else [])
    elif category:
        drivers = [(*c, "ok")] + ([(*k, "ok")] if keys.clip_stage else [])
    n_images = image_count(ws, dataset)
    # counted from the results the filter needs (or the counters); listed from those results too unless the
    # images passing are many, when walking the images in order finds `limit` of them soon
    dense = not drivers
    joins = """JOIN images i ON i.hash = m.image_hash
        LEFT JOIN stage_results d ON d.image_hash = m.image_hash AND d.stage = ? AND d.settings_hash = ?
        LEFT JOIN stage_results c ON c.image_hash = m.image_hash AND c.stage = ? AND c.settings_hash = ?
        LEFT JOIN stage_results k ON k.image_hash = m.image_hash AND k.stage = ? AND k.settings_hash = ?"""
    join_params = [*d, *c, *k]
    union = " UNION ".join(
        "SELECT image_hash FROM stage_results WHERE stage = ? AND settings_hash = ? AND status = ?" for _ in drivers
    )
    driven = (
        f"""FROM ({union}) x CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = x.image_hash
            {joins} WHERE {" AND ".join(where)}""",
        [*[v for driver in drivers for v in driver], dataset_id, *join_params, *params],
    )
    walked = (
        f"FROM dataset_members m {joins} WHERE {' AND '.join(['m.dataset_id = ?', *where])}",
        [*join_params, dataset_id, *params],
    )
    if category or needle or status == "disagree":  # counted up to COUNT_CAP + 1 ("10,000+"): a broad filter
        body, every = driven if drivers else walked  # stops early, a narrow one reads only the results it needs
        total = int(ws.catalog.scalar(f"SELECT COUNT(*) FROM (SELECT 1 {body} LIMIT ?)", (*every, COUNT_CAP + 1)))
    else:  # a status alone: from the counters, or from the results (never from every image)
        any_result = [(*d, "ok"), (*d, "failed"), (*c, "ok"), (*c, "failed")]
        total = {
            "all": lambda: n_images,
            "described": lambda: stage_count(ws, dataset, *d),
            "categorized": lambda: stage_count(ws, dataset, *c),
            "failed": lambda: _images_with_any(ws, dataset_id, [(*d, "failed"), (*c, "failed")]),
            "pending": lambda: n_images - _images_with_any(ws, dataset_id, any_result),
        }[status]()
    many = total > COUNT_CAP or total * 10 >= n_images  # many pass: walking the images finds `limit` soon
    body, every = walked if dense or many else driven
    if not total:
        return [], 0
    rows = ws.catalog.query(
        f"""SELECT m.image_hash, m.name, {STORED_PATH} AS path,
                   d.status AS d_status, d.result AS d_result, d.error AS d_error,
                   c.status AS c_status, c.result AS c_result, c.error AS c_error,
                   k.status AS k_status, k.result AS k_result, k.error AS k_error
            {body} ORDER BY m.seq LIMIT ?""",
        (*every, limit),
    )
    return [_row_result(r, keys) for r in rows], total


def _images_with_any(ws: Workspace, dataset_id: int, results: list[tuple[str, str, str]]) -> int:
    """How many of the dataset's images have at least one of these (stage, settings hash, status) results,
    counted from the results (an index), so it costs what there are of them."""
    union = " UNION ".join(
        "SELECT image_hash FROM stage_results WHERE stage = ? AND settings_hash = ? AND status = ?" for _ in results
    )
    return int(
        ws.catalog.scalar(
            f"""SELECT COUNT(*) FROM ({union}) x
                CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = x.image_hash""",
            (*[v for result in results for v in result], dataset_id),
        )
    )


def _description_text(result: str | None) -> str:
    """A describe result's description as `filter_results` searches it: its JSON text, lower case."""
    try:
        description = json.loads(result or "{}").get("description") or {}
    except (ValueError, AttributeError):
        return ""
    return json.dumps(description, ensure_ascii=False).lower()


def _row_result(r: Any, keys: ResultKeys) -> ImageResult:
    stages: dict[str, Any] = {}
    for prefix, stage in (("d", DESCRIBE_STAGE), ("c", CATEGORIZE_STAGE), ("k", keys.clip_stage or "")):
        if r[f"{prefix}_status"] is not None:
            stages[stage] = {
                "status": r[f"{prefix}_status"],
                "result": r[f"{prefix}_result"],
                "error": r[f"{prefix}_error"],
            }
    return _image_result(r["image_hash"], r["path"] or "", r["name"], stages, keys)


def answered_by_both(ws: Workspace, dataset: str, keys: ResultKeys) -> list[ImageResult]:
    """Images with Gemini's and CLIP's categories (what `agreement` compares), from the categorised ones."""
    if not (keys.categorize_hash and keys.clip_stage and keys.clip_hash):
        return []
    dataset_id = dataset_id_of(ws.catalog, dataset)
    rows = ws.catalog.query(
        """SELECT c.image_hash, c.result AS c_result, k.result AS k_result
           FROM stage_results c CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = c.image_hash
           JOIN stage_results k ON k.image_hash = c.image_hash AND k.stage = ? AND k.settings_hash = ?
                AND k.status = 'ok'
           WHERE c.stage = ? AND c.settings_hash = ? AND c.status = 'ok'""",
        (dataset_id, keys.clip_stage, keys.clip_hash, CATEGORIZE_STAGE, keys.categorize_hash),
    )
    out = []
    for r in rows:
        stages = {CATEGORIZE_STAGE: {"status": "ok", "result": r["c_result"], "error": None},
                  keys.clip_stage: {"status": "ok", "result": r["k_result"], "error": None}}  # fmt: skip
        out.append(_image_result(r["image_hash"], "", "", stages, keys))
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
