"""Compare REAL vs GEN by category: label sets, counts aggregated in SQL, tests and divergence.

A label set is the categories of every item of one set: imported from a categorised CSV in the seeds' format
(`image_name,description,categories`, multi-label `"cat1, cat2"`), or built from a dataset's Gemini
categories for one list version. Labels live in one table keyed (set, label, item), so the counts behind
every chart are one indexed GROUP BY, whatever the number of rows. `unknown` and failed items are kept
apart from the categories in every table and chart.

Statistics per category compare the share of items carrying it (multi-label: shares can sum past 100%):
a G-test (or chi-square) on the 2x2 table, Benjamini-Hochberg correction across categories, the difference
with a 95% Newcombe (Wilson score) interval; overall, the Jensen-Shannon divergence of the label
distributions (base 2, 0..1).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.categories import UNKNOWN, CategoryList, load_list
from services.datasets import ensure_dataset, insert_rows
from services.workspace import Workspace

FAILED = "(failed)"
SPECIAL = (UNKNOWN, FAILED)
MIN_EXPECTED = 5  # below this expected count a category's test is flagged as unreliable
BATCH = 20_000


class CompareError(ValueError):
    pass


@dataclass(frozen=True)
class LabelSet:
    id: int
    name: str
    dataset_id: int | None
    source: str
    items: int


def get_label_set(ws: Workspace, name: str) -> LabelSet:
    row = ws.catalog.conn.execute("SELECT * FROM label_sets WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = ", ".join(s.name for s in list_label_sets(ws)) or "none yet"
        raise CompareError(f"no label set {name!r} (label sets: {known}); import a CSV or build one from a dataset")
    return LabelSet(row["id"], row["name"], row["dataset_id"], row["source"], row["items"])


def list_label_sets(ws: Workspace) -> list[LabelSet]:
    return [
        LabelSet(r["id"], r["name"], r["dataset_id"], r["source"], r["items"])
        for r in ws.catalog.query("SELECT * FROM label_sets ORDER BY name")
    ]


def _replace_set(ws: Workspace, name: str, dataset_id: int | None, source: str) -> int:
    with ws.catalog.write() as conn:
        old = conn.execute("SELECT id FROM label_sets WHERE name = ?", (name,)).fetchone()
        if old is not None:
            conn.execute("DELETE FROM labels WHERE set_id = ?", (old["id"],))
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
    with ws.catalog.write() as conn:
        conn.execute(
            "UPDATE label_sets SET items = (SELECT COUNT(DISTINCT item) FROM labels WHERE set_id = ?) WHERE id = ?",
            (set_id, set_id),
        )
    name = ws.catalog.scalar("SELECT name FROM label_sets WHERE id = ?", (set_id,))
    return get_label_set(ws, name)


def split_categories(value: str) -> list[str]:
    """The seeds' `"cat1, cat2"` cell as labels; empty means unknown, `ERROR:` means failed."""
    text = (value or "").strip()
    if not text:
        return [UNKNOWN]
    if text.upper().startswith("ERROR"):
        return [FAILED]
    parts = [" ".join(p.split()) for p in text.split(",")]
    labels = [UNKNOWN if p.lower() == UNKNOWN else p for p in parts if p]
    return list(dict.fromkeys(labels)) or [UNKNOWN]


def import_categorized_csv(ws: Workspace, path: Path, name: str | None = None) -> LabelSet:
    """A seeds' categorised CSV as a dataset (every column kept) and a label set of the same name."""
    name = name or path.stem
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CompareError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        lower = {c.strip().lower(): c for c in columns}
        if "categories" not in lower or "image_name" not in lower:
            raise CompareError(f"{path}: needs image_name and categories columns (columns: {', '.join(columns)})")
        ds = ensure_dataset(ws.catalog, name, "categorized-csv", str(path.resolve()), list(columns))
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
    """A dataset's Gemini categories for one list version (failed items kept as failed, pending ones out)."""
    from services.datasets import dataset_images, get_dataset
    from services.describe import CATEGORIZE_STAGE, categorize_settings_hash

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
                labels.extend((r["image_hash"], c) for c in json.loads(r["result"])["categories"])
        _insert_labels(ws, set_id, labels)
    built = _finish_set(ws, set_id)
    if built.items == 0:
        raise CompareError(f"dataset {dataset!r} has no categories for {category_list.label} yet; categorise it first")
    return built


# --- counts and statistics ---------------------------------------------------------------------------


def label_counts(ws: Workspace, label_set: LabelSet) -> dict[str, int]:
    """Items per label, one indexed GROUP BY (no row leaves the database)."""
    rows = ws.catalog.query("SELECT label, COUNT(*) AS n FROM labels WHERE set_id = ? GROUP BY label", (label_set.id,))
    return {r["label"]: int(r["n"]) for r in rows}


@dataclass
class CategoryStat:
    category: str
    count_a: int
    count_b: int
    share_a: float
    share_b: float
    difference: float  # share_b - share_a
    ci_low: float
    ci_high: float
    statistic: float | None
    p_value: float | None
    q_value: float | None  # Benjamini-Hochberg adjusted
    warning: str | None


@dataclass
class Comparison:
    a: LabelSet
    b: LabelSet
    categories: list[CategoryStat]
    special: dict[str, tuple[int, int]]  # unknown / failed counts, kept apart
    jsd: float
    test: str
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


def compare_sets(ws: Workspace, a: LabelSet, b: LabelSet, test: str = "g-test") -> Comparison:
    """Every category either set uses (not only the top of one), tested and corrected."""
    from scipy.stats import chi2_contingency, false_discovery_control

    if test not in ("g-test", "chi-square"):
        raise CompareError(f"test {test!r}: use g-test or chi-square")
    counts_a, counts_b = label_counts(ws, a), label_counts(ws, b)
    categories = sorted((set(counts_a) | set(counts_b)) - set(SPECIAL), key=str.lower)
    warnings = []
    for s in (a, b):
        if s.items < 30:
            warnings.append(f"{s.name} has {s.items} items: shares and tests are rough at this size")
    stats: list[CategoryStat] = []
    for category in categories:
        k_a, k_b = counts_a.get(category, 0), counts_b.get(category, 0)
        table = np.array([[k_a, a.items - k_a], [k_b, b.items - k_b]])
        low, high = newcombe(k_a, a.items, k_b, b.items)
        statistic = p_value = None
        warning = None
        expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / max(1, table.sum())
        if (table.sum(axis=0) == 0).any():
            warning = "no variation (every item has it, or none): no test"
        else:
            result = chi2_contingency(table, correction=False, lambda_="log-likelihood" if test == "g-test" else None)
            statistic, p_value = float(result.statistic), float(result.pvalue)
            if expected.min() < MIN_EXPECTED:
                warning = f"expected count {expected.min():.1f} < {MIN_EXPECTED}: the test is unreliable"
        stats.append(
            CategoryStat(
                category,
                k_a,
                k_b,
                k_a / a.items if a.items else 0.0,
                k_b / b.items if b.items else 0.0,
                (k_b / b.items if b.items else 0.0) - (k_a / a.items if a.items else 0.0),
                low,
                high,
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
    return Comparison(a, b, stats, special, jensen_shannon(p, q), test, warnings)


def items_with_label(ws: Workspace, label_set: LabelSet, label: str, limit: int = 24) -> list[tuple[str, str | None]]:
    """(item, stored image path or None) of items carrying a label: the gallery behind a bar."""
    rows = ws.catalog.query(
        """SELECT l.item, i.path FROM labels l LEFT JOIN images i ON i.hash = l.item
           WHERE l.set_id = ? AND l.label = ? ORDER BY l.item LIMIT ?""",
        (label_set.id, label, limit),
    )
    return [(r["item"], r["path"]) for r in rows]


def iter_set_items(ws: Workspace, label_set: LabelSet) -> Iterator[str]:
    for r in ws.catalog.conn.execute("SELECT DISTINCT item FROM labels WHERE set_id = ?", (label_set.id,)):
        yield r["item"]


def resolve_list(ws: Workspace, name: str) -> CategoryList:
    list_name, _, version = name.partition("@v")
    try:
        return load_list(ws, list_name, int(version) if version else None)
    except ValueError as exc:
        raise CompareError(str(exc)) from None
