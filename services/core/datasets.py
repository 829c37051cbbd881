"""Datasets: named, kinded sets of input rows (every input column kept) linked to catalog images.

CSV input is streamed with the `csv` module in fixed-size batches, so a 1M-row file costs the same memory
as a 1k-row one. The labelled export is a streamed SQL join of rows, job items and images.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.core import csv_safety
from services.core.catalog import Catalog
from services.core.entity_units import ENTITY_VALUE_COLUMNS, parse_entity_value
from services.core.errors import WorkbenchError
from services.core.names import dataset_name_problem
from services.core.workspace import UPLOAD_PREFIX

if TYPE_CHECKING:
    from services.core.workspace import Workspace

INGEST_BATCH = 5000
# jobs that bring images into a dataset (the catalog's triggers of migration 5 name the same kinds)
SOURCE_JOB_KINDS = ("download_urls", "download_s3", "import_folder")
ADDED_COLUMNS = ["image_path", "image_hash", "status", "error"]


class DatasetError(WorkbenchError):
    """Bad dataset input; the message names the file, row or column and the cause."""

    error_class = "dataset"
    http_status = 400


@dataclass
class Dataset:
    id: int
    name: str
    kind: str
    source: str
    columns: list[str]
    created_at: float


@dataclass
class DatasetSummary:
    id: int
    name: str
    kind: str
    source: str
    rows: int
    images: int
    created_at: float


def get_dataset(catalog: Catalog, name: str) -> Dataset | None:
    row = catalog.conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    return Dataset(row["id"], row["name"], row["kind"], row["source"], json.loads(row["columns"]), row["created_at"])


def _last_part(source: str) -> str:
    """A source as errors name it: a URL or s3:// as it is, a server path by its last part, an upload by the
    name it was uploaded under (without the prefix that keeps uploads apart)."""
    if "://" in source:
        return source
    path = Path(source)
    match = UPLOAD_PREFIX.match(path.name)
    return match.group(1) if match and path.parent.name == "uploads" else path.name or source


def ensure_dataset(catalog: Catalog, name: str, kind: str, source: str, columns: list[str]) -> Dataset:
    """Create the dataset, or return it if it already holds this same source (a re-run or resume).

    A dataset name is data (any text, quotes included: SQL is parameterised), but it also names export files
    (`exports/<dataset>-job<N>.csv`), so it may not hold a path separator or be `.`/`..`: it can never reach
    outside `exports/`. Model folders use a safe form of it (services.stages.train.models)."""
    if not name.strip():
        raise DatasetError("dataset name is empty")
    if get_dataset(catalog, name) is None and (problem := dataset_name_problem(name)) is not None:
        raise DatasetError(f"dataset name {name[:40]!r} {problem}")
    existing = get_dataset(catalog, name)
    if existing is not None:
        if existing.source != source or existing.columns != columns:
            raise DatasetError(  # sources by their last part: a page never shows where the server keeps files
                f"dataset {name!r} already exists with source {_last_part(existing.source)!r} and columns "
                f"{existing.columns}; pick another name for {_last_part(source)!r}"
            )
        return existing
    with catalog.write() as conn:
        conn.execute(
            "INSERT INTO datasets (name, kind, source, columns, created_at) VALUES (?, ?, ?, ?, ?)",
            (name, kind, source, json.dumps(columns), time.time()),
        )
    found = get_dataset(catalog, name)
    assert found is not None
    return found


def list_datasets(catalog: Catalog) -> list[DatasetSummary]:
    """Every dataset with its row and stored-image counts: counters the catalog keeps as rows are ingested and
    items finish (migration 5), so listing costs one small read at any size."""
    rows = catalog.query("SELECT id, name, kind, source, created_at, n_rows, n_images FROM datasets ORDER BY id")
    return [
        DatasetSummary(r["id"], r["name"], r["kind"], r["source"], r["n_rows"], r["n_images"], r["created_at"])
        for r in rows
    ]


def read_csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            header = next(csv.reader(fh))
        except StopIteration:
            raise DatasetError(f"{path.name}: the file is empty") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path.name}: not a readable CSV ({exc})") from exc
    return [h.strip() for h in header]


def iter_csv_batches(path: Path, skip_header: bool = True, batch: int = INGEST_BATCH) -> Iterator[list[list[str]]]:
    """Rows of a CSV in batches; a malformed line is reported with its line number."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        if skip_header:
            next(reader, None)
        chunk: list[list[str]] = []
        try:
            for row in reader:
                chunk.append(row)
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path.name}, line {reader.line_num}: {exc}") from exc
        if chunk:
            yield chunk


def insert_rows(catalog: Catalog, dataset_id: int, rows: Sequence[tuple[int, list[str], str | None]]) -> None:
    """(row_index, values, source_key) rows; re-inserting the same index is a no-op (idempotent ingest)."""
    with catalog.write() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO dataset_rows (dataset_id, row_index, data, source_key) VALUES (?, ?, ?, ?)",
            [(dataset_id, idx, json.dumps(values, ensure_ascii=False), key) for idx, values, key in rows],
        )


def export_labelled_csv(
    catalog: Catalog,
    workspace_root: Path,
    dataset_id: int,
    job_id: int,
    out: Path | io.TextIOBase,
    variant: str | None = None,
    guard: bool = True,
    unit_map: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Every input column, in order, plus image_path, image_hash, status, error; returns the row count. With
    `unit_map` and the seed's `entity_name` and `entity_value` columns, also value, unit, value_valid and
    value_problem (services/core/entity_units.py). Cells are formula-guarded unless `guard` is False
    (services/core/csv_safety.py); a file is written atomically."""
    row = catalog.conn.execute("SELECT columns FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
    if row is None:
        raise DatasetError(f"no dataset with id {dataset_id}")
    columns: list[str] = json.loads(row["columns"])
    entity_at = (
        (columns.index("entity_name"), columns.index("entity_value"))
        if unit_map is not None and "entity_name" in columns and "entity_value" in columns
        else None
    )
    value_columns = [c for c in ENTITY_VALUE_COLUMNS if c not in columns] if entity_at else []
    header = columns + value_columns + [c for c in ADDED_COLUMNS if c not in columns]
    count = 0
    with contextlib.ExitStack() as stack:
        if isinstance(out, Path):
            writer = stack.enter_context(csv_safety.open_for_write(out, guard))
        else:
            writer = csv_safety.writer(out, guard)
        writer.writerow(header)
        cursor = catalog.conn.execute(
            """SELECT r.data, j.status, j.error_class, j.error_message, j.image_hash,
                      i.path AS original, i.is_placeholder, d.path AS derived
               FROM dataset_rows r
               LEFT JOIN job_items j ON j.job_id = ? AND j.item_key = r.source_key
               LEFT JOIN images i ON i.hash = j.image_hash
               LEFT JOIN derived_images d ON d.image_hash = j.image_hash AND d.variant = ?
               WHERE r.dataset_id = ? ORDER BY r.row_index""",
            (job_id, variant or "", dataset_id),
        )
        for r in cursor:
            values = json.loads(r["data"])
            values += [""] * (len(columns) - len(values))
            status = r["status"] or "pending"
            rel = r["derived"] or r["original"]
            if r["is_placeholder"]:
                status, rel = "placeholder", r["original"]
            error = f"{r['error_class']}: {r['error_message']}" if r["error_class"] else ""
            image_path = str(workspace_root / rel) if rel else ""
            image_hash = r["image_hash"] if status == "ok" else ""
            extra = {"image_path": image_path, "image_hash": image_hash, "status": status, "error": error}
            if entity_at is not None and unit_map is not None:
                checked = parse_entity_value(values[entity_at[0]], values[entity_at[1]], unit_map)
                extra.update(zip(ENTITY_VALUE_COLUMNS, checked.cells(), strict=True))
            added = [extra[c] for c in value_columns] + [extra[c] for c in ADDED_COLUMNS if c not in columns]
            writer.writerow(values[: len(columns)] + added)
            count += 1
    return count


# --- the stored images of a dataset -------------------------------------------------------------
#
# `dataset_members` (kept by the catalog's triggers) holds one row per stored image of a dataset, in input order
# by `seq`. Pages read it a page or a sample at a time through the indexed keys; jobs and exports that need every
# image read it whole.

# an image's stored file (its original, else its largest derived copy), for queries that join `images i`
STORED_PATH = """COALESCE(i.path, (SELECT d.path FROM derived_images d WHERE d.image_hash = i.hash
                                    ORDER BY d.width DESC LIMIT 1))"""


def dataset_id_of(catalog: Catalog, dataset: str) -> int:
    """The dataset's id; an unknown name is an error that lists the first datasets there are."""
    dataset_id = catalog.scalar("SELECT id FROM datasets WHERE name = ?", (dataset,))
    if dataset_id is None:
        names = [r[0] for r in catalog.query("SELECT name FROM datasets ORDER BY name LIMIT 21")]
        listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise DatasetError(f"no dataset named {dataset!r}; datasets: {listed or '(none yet)'}")
    return int(dataset_id)


def image_count(ws: Workspace, dataset: str) -> int:
    """How many stored images the dataset has (a counter, not a count)."""
    return int(ws.catalog.scalar("SELECT n_images FROM datasets WHERE id = ?", (dataset_id_of(ws.catalog, dataset),)))


def dataset_images(ws: Workspace, dataset: str) -> list[tuple[str, str]]:
    """(image hash, path relative to the workspace) of every stored image of the dataset, once each."""
    return [(h, path) for h, path, _ in dataset_entries(ws, dataset)]


def dataset_entries(ws: Workspace, dataset: str) -> list[tuple[str, str, str]]:
    """(image hash, stored path, name) per stored image of the dataset, in input order; the name is what the
    input called it (S3 file name, path in the folder, URL), first occurrence wins. Every image: for jobs and
    exports; pages read `entries_page` or `sample_entries`."""
    return entries_page(ws, dataset, 0, None)


def entries_page(ws: Workspace, dataset: str, offset: int, limit: int | None) -> list[tuple[str, str, str]]:
    """`limit` entries (all with None) from position `offset` in input order, read through the order index."""
    dataset_id = dataset_id_of(ws.catalog, dataset)
    rows = ws.catalog.query(  # the offset is walked in the order index alone (74 ms at a million), then joined
        f"""SELECT m.image_hash AS hash, m.name, {STORED_PATH} AS path
            FROM (SELECT image_hash, seq FROM dataset_members INDEXED BY dataset_members_order
                  WHERE dataset_id = ? ORDER BY seq LIMIT ? OFFSET ?) k
            JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = k.image_hash
            JOIN images i ON i.hash = m.image_hash ORDER BY k.seq""",
        (dataset_id, -1 if limit is None else limit, max(0, offset), dataset_id),
    )
    return [(r["hash"], r["path"], r["name"]) for r in rows if r["path"]]


def sample_entries(ws: Workspace, dataset: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """About `n` distinct entries picked at random (reproducibly for a seed), in input order: each is the first
    image whose hash follows a random 256-bit number, one indexed lookup apiece. Content hashes are uniform, so
    this is a uniform sample without reading the dataset."""
    dataset_id = dataset_id_of(ws.catalog, dataset)
    total = int(ws.catalog.scalar("SELECT n_images FROM datasets WHERE id = ?", (dataset_id,)))
    if total <= n:
        return entries_page(ws, dataset, 0, None)
    rng = random.Random(seed)
    picked: dict[str, tuple[int, tuple[str, str, str]]] = {}
    for _ in range(8 * n):
        if len(picked) >= n:
            break
        point = f"{rng.getrandbits(256):064x}"
        row = (
            ws.catalog.conn.execute(  # the first hash at or after the point, else (past the last) the first
                f"""SELECT m.image_hash AS hash, m.name, m.seq, {STORED_PATH} AS path
                FROM dataset_members m JOIN images i ON i.hash = m.image_hash
                WHERE m.dataset_id = ? AND m.image_hash >= ? ORDER BY m.image_hash LIMIT 1""",
                (dataset_id, point),
            ).fetchone()
            or ws.catalog.conn.execute(
                f"""SELECT m.image_hash AS hash, m.name, m.seq, {STORED_PATH} AS path
                FROM dataset_members m JOIN images i ON i.hash = m.image_hash
                WHERE m.dataset_id = ? ORDER BY m.image_hash LIMIT 1""",
                (dataset_id,),
            ).fetchone()
        )
        if row is not None and row["path"]:
            picked[row["hash"]] = (row["seq"], (row["hash"], row["path"], row["name"]))
    return [entry for _, entry in sorted(picked.values())]


def stage_count(ws: Workspace, dataset: str, stage: str, settings_hash: str, status: str = "ok") -> int:
    """How many of the dataset's images have a result of this stage, settings and status (a counter)."""
    found = ws.catalog.scalar(
        """SELECT c.images FROM dataset_stage_counts c JOIN datasets d ON d.id = c.dataset_id
           WHERE d.name = ? AND c.stage = ? AND c.settings_hash = ? AND c.status = ?""",
        (dataset, stage, settings_hash, status),
    )
    return int(found or 0)


def flag_counts(ws: Workspace, dataset: str, settings_hash: str) -> dict[str, int]:
    """How many of the dataset's measured images carry each quality flag (counters)."""
    rows = ws.catalog.query(
        """SELECT c.flag, c.images FROM dataset_flag_counts c JOIN datasets d ON d.id = c.dataset_id
           WHERE d.name = ? AND c.settings_hash = ? AND c.images > 0""",
        (dataset, settings_hash),
    )
    return {r["flag"]: r["images"] for r in rows}


NEGATIVE_TAGS = ("other-training", "other-validation")  # seed 004's folders of negatives


def _tagged_dataset(ws: Workspace, dataset: str) -> Dataset:
    ds = get_dataset(ws.catalog, dataset)
    if ds is None:
        raise DatasetError(f"no dataset named {dataset!r}")
    if "tag" not in ds.columns:
        raise DatasetError(f"dataset {dataset!r} has no tags (import a folder tree or zip with folder names as tags)")
    return ds


def dataset_tags(ws: Workspace, dataset: str) -> dict[str, set[str]]:
    """Tags per stored image of a folder or zip dataset (the `tag` column: the folder each copy sat in);
    an image found in two folders carries both, one at the top of the tree none."""
    ds = _tagged_dataset(ws, dataset)
    tags: dict[str, set[str]] = {
        r[0]: set() for r in ws.catalog.query("SELECT image_hash FROM dataset_members WHERE dataset_id = ?", (ds.id,))
    }
    for r in ws.catalog.query("SELECT tag, image_hash FROM dataset_member_tags WHERE dataset_id = ?", (ds.id,)):
        tags.setdefault(r[1], set()).add(r[0])
    return tags


def tag_counts(ws: Workspace, dataset: str) -> dict[str, int]:
    """Stored images per tag, negatives included, by tag name: counters, read in one small query."""
    ds = _tagged_dataset(ws, dataset)
    rows = ws.catalog.query("SELECT tag, images FROM dataset_tag_counts WHERE dataset_id = ? ORDER BY tag", (ds.id,))
    return {r["tag"]: r["images"] for r in rows}


def image_paths(ws: Workspace, hashes: list[str]) -> dict[str, str]:
    """Stored path (relative to the workspace) of each of these images that has one."""
    out: dict[str, str] = {}
    for start in range(0, len(hashes), 500):
        part = hashes[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = ws.catalog.query(
            f"SELECT hash, path FROM images WHERE path IS NOT NULL AND hash IN ({marks})", tuple(part)
        )
        out.update({r["hash"]: r["path"] for r in rows})
    return out
