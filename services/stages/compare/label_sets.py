"""Compare REAL vs GEN by category: label sets, counts aggregated in SQL, tests and divergence.

A label set is the categories of every item of one set: imported from a categorised CSV in the seeds' format
(`image_name,description,categories`, multi-label `"cat1, cat2"`), or built from a dataset's Gemini
categories for one list version. Labels live in one table keyed (set, label, item), so the counts behind
every chart are one indexed GROUP BY, whatever the number of rows.

Denominators: a category's share is among the *categorised* items of a set, those with at least one
category. Failed items (`ERROR` rows, failed Gemini calls) and `unknown` ones are counted and compared on
their own (failure rate among all items, unknown rate among answered ones) but never enter a category's
denominator: a set with 30% failures and the same shares among its answered items is not "different".
An item carries either categories, or `unknown`, or the failed mark, never a mix (enforced when a set is
built), so the denominators come from the same GROUP BY as the counts.

Statistics per category compare the share of items carrying it (multi-label: shares can sum past 100%) on
the 2x2 table (carrying it or not, A or B): the G-test (or chi-square) when every expected count is at
least 5, Fisher's exact test (two-sided, scipy) otherwise, since the asymptotic tests are anti-conservative
there; Benjamini-Hochberg correction across categories over whichever p each got; the difference with a
95% Newcombe hybrid score interval. Overall, the Jensen-Shannon divergence of the label distributions
(base 2, 0..1).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from services.core import csv_safety
from services.core.datasets import SOURCE_JOB_KINDS, DatasetError, ensure_dataset, insert_rows
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.stages.describe.categories import UNKNOWN, CategoryList, load_list

FAILED = "(failed)"
SPECIAL = (UNKNOWN, FAILED)
MIN_EXPECTED = 5  # below this expected count a table is tested with Fisher's exact test
BATCH = 20_000
TESTS = ("g-test", "chi-square")
TEST_NAMES = {"g-test": "G-test", "chi-square": "chi-square", "fisher": "Fisher exact"}


class CompareError(WorkbenchError, ValueError):
    error_class = "compare"
    http_status = 400


@dataclass(frozen=True)
class LabelSet:
    id: int
    name: str
    dataset_id: int | None
    source: str
    items: int  # items with an answer, failed and unknown included
    created_at: float = 0.0


LABEL_SET_KIND = "categorized-csv"  # the dataset kind of an imported categorised CSV: labels, not images


def _label_set(row: Any) -> LabelSet:
    return LabelSet(row["id"], row["name"], row["dataset_id"], row["source"], row["items"], row["created_at"])


def get_label_set(ws: Workspace, name: str) -> LabelSet:
    row = ws.catalog.conn.execute("SELECT * FROM label_sets WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = ", ".join(s.name for s in list_label_sets(ws)) or "none yet"
        raise CompareError(f"no label set {name!r} (label sets: {known}); import a CSV or build one from a dataset")
    return _label_set(row)


def list_label_sets(ws: Workspace) -> list[LabelSet]:
    return [_label_set(r) for r in ws.catalog.query("SELECT * FROM label_sets ORDER BY name")]


def _replace_set(ws: Workspace, name: str, dataset_id: int | None, source: str) -> int:
    with ws.catalog.write() as conn:
        old = conn.execute("SELECT id FROM label_sets WHERE name = ?", (name,)).fetchone()
        if old is not None:
            for table in ("labels", "label_set_counts", "label_set_depths"):
                conn.execute(f"DELETE FROM {table} WHERE set_id = ?", (old["id"],))
            conn.execute("DELETE FROM label_sets WHERE id = ?", (old["id"],))
        cur = conn.execute(
            "INSERT INTO label_sets (name, dataset_id, source, items, created_at) VALUES (?, ?, ?, 0, ?)",
            (name, dataset_id, source, time.time()),
        )
        return int(cur.lastrowid or 0)


def _insert_labels(ws: Workspace, set_id: int, rows: list[tuple[str, str]]) -> None:
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO labels (set_id, label, item) VALUES (?, ?, ?)",
            [(set_id, label, item) for item, label in rows],
        )


def _finish_set(ws: Workspace, set_id: int) -> LabelSet:
    """Count the items, after making every item carry categories, or `unknown`, or failed, never a mix: an
    item listed twice (a CSV row repeated after a retry) keeps its best answer, categories over `unknown`
    over failed."""
    with ws.catalog.write() as conn:
        conn.execute(
            """DELETE FROM labels WHERE set_id = ? AND label IN (?, ?) AND item IN
               (SELECT item FROM labels WHERE set_id = ? AND label NOT IN (?, ?))""",
            (set_id, UNKNOWN, FAILED, set_id, UNKNOWN, FAILED),
        )
        conn.execute(
            """DELETE FROM labels WHERE set_id = ? AND label = ? AND item IN
               (SELECT item FROM labels WHERE set_id = ? AND label = ?)""",
            (set_id, FAILED, set_id, UNKNOWN),
        )
        conn.execute(
            "UPDATE label_sets SET items = (SELECT COUNT(DISTINCT item) FROM labels WHERE set_id = ?) WHERE id = ?",
            (set_id, set_id),
        )
        # the counts Compare reads (a set never changes after this)
        conn.execute("DELETE FROM label_set_counts WHERE set_id = ?", (set_id,))
        conn.execute("DELETE FROM label_set_depths WHERE set_id = ?", (set_id,))
        conn.execute(
            """INSERT INTO label_set_counts (set_id, label, items)
               SELECT set_id, label, COUNT(*) FROM labels WHERE set_id = ? GROUP BY label""",
            (set_id,),
        )
        conn.execute(
            """INSERT INTO label_set_depths (set_id, categories, items)
               SELECT ?, n, COUNT(*) FROM (SELECT COUNT(*) AS n FROM labels WHERE set_id = ? AND label NOT IN (?, ?)
                                          GROUP BY item)
               GROUP BY n""",
            (set_id, set_id, UNKNOWN, FAILED),
        )
    name = ws.catalog.scalar("SELECT name FROM label_sets WHERE id = ?", (set_id,))
    return get_label_set(ws, name)


def split_categories(value: str) -> list[str]:
    """The seeds' `"cat1, cat2"` cell as labels; empty means unknown, `ERROR:` means failed; `unknown` beside
    a category is dropped (the item has a category)."""
    text = (value or "").strip()
    if not text:
        return [UNKNOWN]
    if text.upper().startswith("ERROR"):
        return [FAILED]
    parts = [" ".join(p.split()) for p in text.split(",")]
    labels = [p for p in dict.fromkeys(parts) if p and p.lower() != UNKNOWN]
    return labels or [UNKNOWN]


def import_categorized_csv(ws: Workspace, path: Path, name: str | None = None) -> LabelSet:
    """A seeds' categorised CSV as a dataset (every column kept) and a label set of the same name."""
    name = name or path.stem
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CompareError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        reader = csv_safety.dict_reader(fh)  # our own categorised CSVs: formula guard stripped
        columns = reader.fieldnames or []
        lower = {c.strip().lower(): c for c in columns}
        if "categories" not in lower or "image_name" not in lower:
            raise CompareError(f"{path}: needs image_name and categories columns (columns: {', '.join(columns)})")
        try:
            ds = ensure_dataset(ws.catalog, name, LABEL_SET_KIND, str(path.resolve()), list(columns))
        except DatasetError as exc:  # the set's name is also the dataset's: the same rules apply
            raise CompareError(str(exc)) from None
        set_id = _replace_set(ws, name, ds.id, f"csv:{path.name}")
        rows: list[tuple[int, list[str], str | None]] = []
        labels: list[tuple[str, str]] = []
        for index, row in enumerate(reader):
            item = row[lower["image_name"]] or f"row-{index}"
            rows.append((index, [row.get(c) or "" for c in columns], item))
            labels.extend((item, label) for label in split_categories(row[lower["categories"]]))
            if len(rows) >= BATCH:
                insert_rows(ws.catalog, ds.id, rows)
                _insert_labels(ws, set_id, labels)
                rows, labels = [], []
        insert_rows(ws.catalog, ds.id, rows)
        _insert_labels(ws, set_id, labels)
    return _finish_set(ws, set_id)


def label_set_from_gemini(
    ws: Workspace, dataset: str, category_list: CategoryList, name: str | None = None
) -> LabelSet:
    """A dataset's Gemini categories for one list version (failed items kept as failed, pending ones out).

    Every valid category of an answer counts, also those past the two the prompt asks for (stored as
    `extra` by the answer check): the shares are "images the model put in this category", and which two of
    three the model happened to list first is no ranking. `category_depth` shows how many items had more."""
    from services.core.datasets import dataset_images, get_dataset
    from services.stages.describe.stage import CATEGORIZE_STAGE, categorize_settings_hash

    ds = get_dataset(ws.catalog, dataset)
    if ds is None:
        raise CompareError(f"no dataset named {dataset!r}")
    settings_hash = categorize_settings_hash(ws.settings.caption_model, category_list)
    name = name or dataset
    set_id = _replace_set(ws, name, ds.id, f"gemini:{category_list.label}:{settings_hash}")
    hashes = [h for h, _ in dataset_images(ws, dataset)]
    for start in range(0, len(hashes), 500):
        part = hashes[start : start + 500]
        marks = ",".join("?" * len(part))
        labels: list[tuple[str, str]] = []
        for r in ws.catalog.query(
            f"""SELECT image_hash, status, result FROM stage_results
                WHERE stage = ? AND settings_hash = ? AND image_hash IN ({marks})""",
            (CATEGORIZE_STAGE, settings_hash, *part),
        ):
            if r["status"] != "ok":
                labels.append((r["image_hash"], FAILED))
            else:
                result = json.loads(r["result"])
                labels.extend((r["image_hash"], c) for c in [*result["categories"], *result.get("extra", [])])
        _insert_labels(ws, set_id, labels)
    built = _finish_set(ws, set_id)
    if built.items == 0:
        raise CompareError(
            f"dataset {dataset!r} has no categories for {category_list.label} yet; categorise it first (Describe & "
            f"Categorize page, or `python -m services categorize --dataset {dataset} --list "
            f"{category_list.name}@v{category_list.version}`)"
        )
    return built


# --- counts and statistics ---------------------------------------------------------------------------


def label_counts(ws: Workspace, label_set: LabelSet) -> dict[str, int]:
    """Items per label: counted once when the set was finished (`label_set_counts`)."""
    rows = ws.catalog.query("SELECT label, items FROM label_set_counts WHERE set_id = ?", (label_set.id,))
    return {r["label"]: int(r["items"]) for r in rows}


def categorised_items(label_set: LabelSet, counts: dict[str, int]) -> int:
    """The category denominator: items with at least one category (neither failed nor `unknown`)."""
    return max(0, label_set.items - counts.get(FAILED, 0) - counts.get(UNKNOWN, 0))


def category_depth(ws: Workspace, label_set: LabelSet) -> dict[int, int]:
    """Categorised items by how many categories each carries (1, 2, 3, ...): where answers gave more than the
    two asked for, and how multi-label a set is. Counted once when the set was finished (`label_set_depths`)."""
    rows = ws.catalog.query(
        "SELECT categories, items FROM label_set_depths WHERE set_id = ? ORDER BY categories", (label_set.id,)
    )
    return {int(r["categories"]): int(r["items"]) for r in rows}


def _denominator(ws: Workspace, label_set: LabelSet, counts: dict[str, int]) -> int:
    """`categorised_items`, or for a set built before items were kept to one kind of answer (an item both
    `unknown` and categorised), the exact count of items with a category (a slower DISTINCT)."""
    n = categorised_items(label_set, counts)
    if any(k > n for label, k in counts.items() if label not in SPECIAL):
        return int(
            ws.catalog.scalar(
                "SELECT COUNT(DISTINCT item) FROM labels WHERE set_id = ? AND label NOT IN (?, ?)",
                (label_set.id, UNKNOWN, FAILED),
            )
        )
    return n


@dataclass
class CategoryStat:
    category: str
    count_a: int
    count_b: int
    share_a: float  # of A's categorised items
    share_b: float
    difference: float  # share_b - share_a
    ci_low: float
    ci_high: float
    test: str  # which test this row used: G-test, chi-square, Fisher exact, or "none"
    statistic: float | None  # G or chi-square; Fisher's odds ratio is not a statistic on the same scale: None
    p_value: float | None
    q_value: float | None  # Benjamini-Hochberg adjusted, over every tested category
    warning: str | None


@dataclass
class RateStat:
    """Failed or `unknown` items, compared on their own: failed among all items, unknown among answered."""

    label: str
    count_a: int
    count_b: int
    of_a: int  # the rate's denominator
    of_b: int
    rate_a: float
    rate_b: float
    difference: float
    ci_low: float
    ci_high: float
    test: str
    p_value: float | None


@dataclass
class Comparison:
    a: LabelSet
    b: LabelSet
    n_a: int  # categorised items: every category's denominator
    n_b: int
    categories: list[CategoryStat]
    special: dict[str, tuple[int, int]]  # unknown / failed counts, kept apart
    rates: list[RateStat]  # failure and unknown rates, compared apart (not in the BH family)
    jsd: float
    test: str  # the asymptotic test asked for (used where every expected count is >= MIN_EXPECTED)
    warnings: list[str]

    def frame(self) -> list[dict[str, Any]]:
        return [vars(c) for c in self.categories]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def newcombe(k_a: int, n_a: int, k_b: int, n_b: int) -> tuple[float, float]:
    """95% interval for p_b - p_a (Newcombe's hybrid score method, from two Wilson intervals)."""
    p_a, p_b = k_a / n_a if n_a else 0.0, k_b / n_b if n_b else 0.0
    l_a, u_a = wilson(k_a, n_a)
    l_b, u_b = wilson(k_b, n_b)
    d = p_b - p_a
    return d - math.sqrt((p_b - l_b) ** 2 + (u_a - p_a) ** 2), d + math.sqrt((u_b - p_b) ** 2 + (p_a - l_a) ** 2)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Divergence (base 2, 0..1) between two count vectors over the same categories."""
    from scipy.spatial.distance import jensenshannon

    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def test_table(k_a: int, n_a: int, k_b: int, n_b: int, test: str = "g-test") -> tuple[str, float | None, float | None]:
    """(test used, statistic, p) for "k of n in A vs k of n in B": `test` when every expected count is at
    least MIN_EXPECTED, else Fisher's exact test; ("none", None, None) when nothing varies."""
    from scipy.stats import chi2_contingency, fisher_exact

    table = np.array([[k_a, n_a - k_a], [k_b, n_b - k_b]])
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return "none", None, None
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    if expected.min() < MIN_EXPECTED:
        return TEST_NAMES["fisher"], None, float(fisher_exact(table, alternative="two-sided").pvalue)
    result = chi2_contingency(table, correction=False, lambda_="log-likelihood" if test == "g-test" else None)
    return TEST_NAMES[test], float(result.statistic), float(result.pvalue)


def compare_sets(ws: Workspace, a: LabelSet, b: LabelSet, test: str = "g-test") -> Comparison:
    """Every category either set uses (not only the top of one), tested and corrected."""
    from scipy.stats import false_discovery_control

    if test not in TESTS:
        raise CompareError(f"test {test!r}: use g-test or chi-square")
    counts_a, counts_b = label_counts(ws, a), label_counts(ws, b)
    n_a, n_b = _denominator(ws, a, counts_a), _denominator(ws, b, counts_b)
    categories = sorted((set(counts_a) | set(counts_b)) - set(SPECIAL), key=str.lower)
    warnings = [
        f"{s.name} has {n} categorised items: shares and tests are rough at this size"
        for s, n in ((a, n_a), (b, n_b))
        if n < 30
    ]
    stats: list[CategoryStat] = []
    for category in categories:
        k_a, k_b = counts_a.get(category, 0), counts_b.get(category, 0)
        share_a, share_b = k_a / n_a if n_a else 0.0, k_b / n_b if n_b else 0.0
        low, high = newcombe(k_a, n_a, k_b, n_b)
        used, statistic, p_value = test_table(k_a, n_a, k_b, n_b, test)
        warning = None
        if used == "none":
            warning = "no variation (every item has it, or a set is empty): no test"
        elif used == TEST_NAMES["fisher"]:
            warning = f"an expected count is under {MIN_EXPECTED}: Fisher's exact test"
        stats.append(
            CategoryStat(
                category,
                k_a,
                k_b,
                share_a,
                share_b,
                share_b - share_a,
                low,
                high,
                used,
                statistic,
                p_value,
                None,
                warning,
            )  # fmt: skip
        )
    tested = [stat for stat in stats if stat.p_value is not None]
    if tested:
        p_values = [stat.p_value for stat in tested if stat.p_value is not None]
        for stat, q_value in zip(tested, false_discovery_control(p_values, method="bh"), strict=True):
            stat.q_value = float(q_value)
    p = np.array([counts_a.get(c, 0) for c in categories], dtype=float)
    q = np.array([counts_b.get(c, 0) for c in categories], dtype=float)
    special = {label: (counts_a.get(label, 0), counts_b.get(label, 0)) for label in SPECIAL}
    rates = _special_rates(a, b, special, test)
    return Comparison(a, b, n_a, n_b, stats, special, rates, jensen_shannon(p, q), test, warnings)


def _special_rates(a: LabelSet, b: LabelSet, special: dict[str, tuple[int, int]], test: str) -> list[RateStat]:
    failed_a, failed_b = special[FAILED]
    unknown_a, unknown_b = special[UNKNOWN]
    rates = []
    for label, (k_a, of_a), (k_b, of_b) in (
        (FAILED, (failed_a, a.items), (failed_b, b.items)),
        (UNKNOWN, (unknown_a, a.items - failed_a), (unknown_b, b.items - failed_b)),
    ):
        used, _, p_value = test_table(k_a, of_a, k_b, of_b, test)
        rate_a, rate_b = k_a / of_a if of_a else 0.0, k_b / of_b if of_b else 0.0
        low, high = newcombe(k_a, of_a, k_b, of_b)
        rates.append(RateStat(label, k_a, k_b, of_a, of_b, rate_a, rate_b, rate_b - rate_a, low, high, used, p_value))
    return rates


# --- items and the images behind them ----------------------------------------------------------------


def items_with_label(
    ws: Workspace, label_set: LabelSet, label: str, limit: int = 24, offset: int = 0
) -> list[tuple[str, str | None]]:
    """(item, stored image path or None) of items carrying a label, a page at a time: the gallery behind a
    bar. Items of a CSV set are file names, resolved through the dataset their names were found in."""
    rows = ws.catalog.query(
        "SELECT item FROM labels WHERE set_id = ? AND label = ? ORDER BY item LIMIT ? OFFSET ?",
        (label_set.id, label, limit, offset),
    )
    items = [r["item"] for r in rows]
    found = item_images(ws, label_set, items)
    return [(item, found[item][1] if item in found else None) for item in items]


def count_with_label(ws: Workspace, label_set: LabelSet, label: str) -> int:
    return int(ws.catalog.scalar("SELECT COUNT(*) FROM labels WHERE set_id = ? AND label = ?", (label_set.id, label)))


def iter_set_items(ws: Workspace, label_set: LabelSet) -> Iterator[str]:
    for r in ws.catalog.conn.execute("SELECT DISTINCT item FROM labels WHERE set_id = ?", (label_set.id,)):
        yield r["item"]


def category_members(ws: Workspace, label_set: LabelSet) -> dict[str, set[str]]:
    """Items per category (specials left out): the per-category groups of the embedding comparison."""
    out: dict[str, set[str]] = {}
    for r in ws.catalog.conn.execute(
        "SELECT label, item FROM labels WHERE set_id = ? AND label NOT IN (?, ?)", (label_set.id, UNKNOWN, FAILED)
    ):
        out.setdefault(r["label"], set()).add(r["item"])
    return out


@dataclass(frozen=True)
class ImageLink:
    """Where a set's items are stored images: `dataset` (None: nowhere) and how items name them."""

    dataset: str | None
    match: str  # "hash" (Gemini sets), "name" (the dataset's item names), "file name" (their last part), "none"
    sampled: int  # items tried when choosing the dataset
    matched: int  # of those, found in it

    def explain(self, name: str) -> str:
        """Where the set's images are, or why none are found, in words a user can act on."""
        if self.dataset is None:
            return (f"{name}: its names match no imported image (tried {self.sampled} of them against every "
                    "dataset's file names); import the images they name (Download, or Embed & Train's folder "
                    "import) and they are found by file name")  # fmt: skip
        how = {"hash": "its own dataset", "name": "names", "file name": "file names"}[self.match]
        return f"{name}: images of dataset {self.dataset!r} (matched by {how})"


def _source_job_ids(ws: Workspace, dataset_id: int) -> list[int]:
    marks = ",".join("?" * len(SOURCE_JOB_KINDS))
    return [
        int(r[0])
        for r in ws.catalog.query(
            f"SELECT id FROM jobs WHERE dataset_id = ? AND kind IN ({marks})", (dataset_id, *SOURCE_JOB_KINDS)
        )
    ]


def _file_name(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/").split("?", 1)[0]).name


def image_link(ws: Workspace, label_set: LabelSet, sample: int = 200) -> ImageLink:
    """The image dataset a set's items are in. A Gemini set's items are image hashes of its own dataset. A CSV
    set's items are file names: the dataset whose item names (folder paths, URLs, S3 keys) match most of a
    sample of them, exactly (an indexed lookup) or else by file name. Ties (REAL and GEN folders both holding
    `0001.jpg`) go to the dataset whose kind or name says the set's role (REAL/GEN), then to the first by name."""
    if not label_set.source.startswith("csv:"):
        name = ws.catalog.scalar("SELECT name FROM datasets WHERE id = ?", (label_set.dataset_id,))
        return ImageLink(name, "hash" if name else "none", 0, 0)
    items = [
        r[0]
        for r in ws.catalog.query(
            "SELECT DISTINCT item FROM labels WHERE set_id = ? LIMIT ?",
            (label_set.id, sample),  # stops at the limit
        )
    ]
    candidates = ws.catalog.query("SELECT id, name, kind FROM datasets WHERE kind != 'categorized-csv' ORDER BY name")
    role = set_role(ws, label_set)
    best, best_score = ImageLink(None, "none", len(items), 0), (0, False)
    for row in candidates:
        jobs = _source_job_ids(ws, row["id"])
        if not jobs or not items:
            continue
        hits = int(
            ws.catalog.scalar(
                f"""SELECT COUNT(DISTINCT item_key) FROM job_items WHERE job_id IN ({",".join("?" * len(jobs))})
                    AND item_key IN ({",".join("?" * len(items))}) AND +status = 'ok'""",  # `+`: by key, not status
                (*jobs, *items),
            )
        )
        score = (hits, role is not None and _role(row["name"], row["kind"]) == role)  # namesakes: the same role
        if hits and score > best_score:
            best, best_score = ImageLink(row["name"], "name", len(items), hits), score
    if best.dataset is not None:
        return best
    wanted = sorted({_file_name(i) for i in items})
    for row in candidates:  # by file name: the stored file names of the dataset's images, an index
        hits = int(
            ws.catalog.scalar(
                f"""SELECT COUNT(DISTINCT file_name) FROM dataset_members
                    WHERE dataset_id = ? AND file_name IN ({",".join("?" * len(wanted))})""",
                (row["id"], *wanted),
            )
        )
        score = (hits, role is not None and _role(row["name"], row["kind"]) == role)
        if hits and score > best_score:
            best, best_score = ImageLink(row["name"], "file name", len(items), hits), score
    return best


def _stored_paths(ws: Workspace, hashes: list[str]) -> dict[str, str]:
    """Image hash -> the stored original, or its largest derived copy when the original was discarded."""
    out: dict[str, str] = {}
    for start in range(0, len(hashes), 500):
        part = hashes[start : start + 500]
        for r in ws.catalog.query(
            f"""SELECT i.hash, COALESCE(i.path, (SELECT d.path FROM derived_images d WHERE d.image_hash = i.hash
                                                 ORDER BY d.width DESC LIMIT 1)) AS path
                FROM images i WHERE i.is_placeholder = 0 AND i.hash IN ({",".join("?" * len(part))})""",
            tuple(part),
        ):
            if r["path"]:
                out[r["hash"]] = r["path"]
    return out


def item_images(
    ws: Workspace, label_set: LabelSet, items: list[str], link: ImageLink | None = None
) -> dict[str, tuple[str, str]]:
    """item -> (image hash, stored path) for the items that are stored images."""
    link = link or image_link(ws, label_set)
    if link.dataset is None or not items:
        return {}
    if link.match == "hash":
        return {h: (h, p) for h, p in _stored_paths(ws, items).items()}
    dataset_id = ws.catalog.scalar("SELECT id FROM datasets WHERE name = ?", (link.dataset,))
    if link.match == "name":
        jobs = _source_job_ids(ws, dataset_id)
        found: dict[str, str] = {}
        for start in range(0, len(items), 500):
            part = items[start : start + 500]
            for r in ws.catalog.query(
                f"""SELECT item_key, image_hash FROM job_items WHERE job_id IN ({",".join("?" * len(jobs))})
                    AND item_key IN ({",".join("?" * len(part))}) AND +status = 'ok'""",  # `+`: by key, not status
                (*jobs, *part),
            ):
                found.setdefault(r["item_key"], r["image_hash"])
        paths = _stored_paths(ws, list(set(found.values())))
        return {item: (h, paths[h]) for item, h in found.items() if h in paths}
    from services.core.datasets import STORED_PATH

    by_file: dict[str, tuple[str, str]] = {}
    names = sorted({_file_name(item) for item in items})
    for start in range(0, len(names), 500):  # the first image (input order) stored under each file name
        part = names[start : start + 500]
        for r in ws.catalog.query(
            f"""SELECT m.file_name, m.image_hash, {STORED_PATH} AS path FROM dataset_members m
                JOIN images i ON i.hash = m.image_hash
                WHERE m.dataset_id = ? AND m.file_name IN ({",".join("?" * len(part))}) ORDER BY m.seq""",
            (dataset_id, *part),
        ):
            if r["path"]:
                by_file.setdefault(r["file_name"], (r["image_hash"], r["path"]))
    return {item: by_file[_file_name(item)] for item in items if _file_name(item) in by_file}


def set_image_hashes(ws: Workspace, label_set: LabelSet) -> dict[str, str]:
    """item -> image hash for every item of the set that is a stored image."""
    return set_images(ws, label_set).hashes


@dataclass
class SetImages:
    """A label set's items as stored images: what the embedding comparison, confounds and galleries use."""

    link: ImageLink
    hashes: dict[str, str]  # item -> image hash, for the items that are stored images
    items: int  # every item of the set

    @property
    def missing(self) -> int:
        return self.items - len(self.hashes)

    def explain(self, name: str) -> str:
        """Why some or all of a set's items have no image, in words a user can act on."""
        if not self.missing:
            return f"{name}: all {self.items:,} items are images of dataset {self.link.dataset!r}"
        if self.link.dataset is None:
            return self.link.explain(name)
        return (
            f"{name}: {len(self.hashes):,} of {self.items:,} items found as images of dataset "
            f"{self.link.dataset!r} (matched by {self.link.match}); {self.missing:,} are not stored images"
        )


def set_images(ws: Workspace, label_set: LabelSet) -> SetImages:
    """Every item of the set that is a stored image, with its hash: one joined query for hashes and exact
    names (the primary keys do the matching, about a second per million items), a scan for file names."""
    link = image_link(ws, label_set)
    if link.dataset is None:  # nothing to look up: do not list a million names
        return SetImages(link, {}, label_set.items)
    if link.match == "file name":
        found = item_images(ws, label_set, list(iter_set_items(ws, label_set)), link)
        return SetImages(link, {item: image_hash for item, (image_hash, _) in found.items()}, label_set.items)
    if link.match == "hash":
        rows = ws.catalog.conn.execute(
            """SELECT DISTINCT l.item, l.item FROM labels l JOIN images i ON i.hash = l.item
               WHERE l.set_id = ? AND i.is_placeholder = 0""",
            (label_set.id,),
        )
    else:
        dataset_id = ws.catalog.scalar("SELECT id FROM datasets WHERE name = ?", (link.dataset,))
        jobs = _source_job_ids(ws, dataset_id)
        rows = ws.catalog.conn.execute(
            f"""SELECT l.item, MIN(j.image_hash) FROM labels l
                JOIN job_items j ON j.job_id IN ({",".join("?" * len(jobs))}) AND j.item_key = l.item
                JOIN images i ON i.hash = j.image_hash
                WHERE l.set_id = ? AND j.status = 'ok' AND i.is_placeholder = 0 GROUP BY l.item""",
            (*jobs, label_set.id),
        )
    return SetImages(link, dict(rows.fetchall()), label_set.items)


def category_hashes(ws: Workspace, a: LabelSet, b: LabelSet, images_a: SetImages, images_b: SetImages
                    ) -> dict[str, dict[str, set[str]]]:  # fmt: skip
    """category -> {"a": image hashes, "b": image hashes}: the per-category groups of the embedding comparison."""
    out: dict[str, dict[str, set[str]]] = {}
    for key, label_set, images in (("a", a, images_a), ("b", b, images_b)):
        for category, items in category_members(ws, label_set).items():
            out.setdefault(category, {"a": set(), "b": set()})[key] = {
                images.hashes[i] for i in items if i in images.hashes
            }
    return out


ROLE_WORDS = {"REAL": {"real", "reals", "photo", "photos"}, "GEN": {"gen", "generated", "synthetic", "fake", "fakes"}}


def _role(name: str, kind: str | None = None) -> str | None:
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    for role, names in ROLE_WORDS.items():
        if words & names:
            return role
    return str(kind).upper() if str(kind).upper() in ROLE_WORDS else None


def set_role(ws: Workspace, label_set: LabelSet) -> str | None:
    """REAL, GEN or None: a word of the set's name (`REAL-categorised`, `gen_descriptions`), else the kind of
    the dataset it was built from. Presets the page's A (REAL) and B (GEN), and breaks ties between datasets
    holding the same file names."""
    kind = ws.catalog.scalar("SELECT kind FROM datasets WHERE id = ?", (label_set.dataset_id,))
    return _role(label_set.name, kind)


def image_dataset_names(ws: Workspace) -> list[str]:
    """Datasets a Gemini label set can be built from (not the CSV imports), by name."""
    return [r[0] for r in ws.catalog.query("SELECT name FROM datasets WHERE kind != 'categorized-csv' ORDER BY name")]


def resolve_list(ws: Workspace, name: str) -> CategoryList:
    list_name, _, version = name.partition("@v")
    try:
        return load_list(ws, list_name, int(version) if version else None)
    except ValueError as exc:
        raise CompareError(str(exc)) from None


def resolve_set(ws: Workspace, name: str, list_name: str | None) -> LabelSet:
    """A CSV file (imported), an existing label set, or a dataset's Gemini categories for `list_name`."""
    from services.core.datasets import get_dataset

    path = Path(name).expanduser()
    if path.suffix.lower() == ".csv" and path.is_file():
        return import_categorized_csv(ws, path)
    if get_dataset(ws.catalog, name) is not None and list_name:
        return label_set_from_gemini(ws, name, resolve_list(ws, list_name))
    return get_label_set(ws, name)
