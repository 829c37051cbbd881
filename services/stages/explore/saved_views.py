"""Saved views: a selection (a filtered Browse grid, a search's results, the images a person picked) kept as a
dataset of its own, so every stage that takes a dataset takes it: embed, classify, describe, OCR, compare, export.

A view holds the same stored images as its source, nothing is copied on disk: its members (in the selection's
order), their folder tags, and their input rows (the source's columns, so exports and labelled CSVs read as the
source's do). A selection drawn from several datasets keeps each image's name and the dataset it came from. The
counters every page reads (images, tags, stage results, flags, score bins) are kept by the catalog's triggers as
for any dataset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.core.datasets import dataset_id_of, get_dataset
from services.core.errors import WorkbenchError
from services.core.names import dataset_name_problem
from services.core.workspace import Workspace
from services.stages.explore.browse import BrowseFilter, describe_filter, matching_hashes

VIEW_KIND = "view"
MAX_VIEW_IMAGES = 1_000_000
MIXED_COLUMNS = ["name", "from_dataset"]


class ViewError(WorkbenchError):
    """A selection that cannot be saved as asked."""

    http_status = 422


@dataclass(frozen=True)
class SavedView:
    name: str
    images: int
    source: str  # where the selection came from, in words


def save_browse_view(ws: Workspace, name: str, f: BrowseFilter, *, kind: str = VIEW_KIND) -> SavedView:
    """The images a Browse filter selects, in its order, as a new dataset."""
    hashes = matching_hashes(ws, f, MAX_VIEW_IMAGES + 1)
    return save_view(ws, name, hashes, source_dataset=f.one_dataset, description=describe_filter(f), kind=kind)


def save_view(
    ws: Workspace,
    name: str,
    hashes: Sequence[str],
    *,
    source_dataset: str | None = None,
    description: str,
    kind: str = VIEW_KIND,
) -> SavedView:
    """These images (in this order) as a new dataset named `name`. With `source_dataset` they must be its images
    and keep its columns and rows; without, each image is taken from the first dataset holding it."""
    if not hashes:
        raise ViewError(f"view {name!r}: the selection is empty; nothing to save")
    if len(hashes) > MAX_VIEW_IMAGES:
        raise ViewError(f"view {name!r}: more than {MAX_VIEW_IMAGES:,} images; narrow the selection")
    if not name.strip():
        raise ViewError("a view needs a name")
    if (problem := dataset_name_problem(name)) is not None:
        raise ViewError(f"view name {name[:40]!r} {problem}")
    if get_dataset(ws.catalog, name) is not None:
        raise ViewError(f"a dataset named {name!r} already exists; pick another name for the view")
    picked = list(dict.fromkeys(hashes))  # a hash twice (two search queries) is one member, at its first place
    source_id = None if source_dataset is None else dataset_id_of(ws.catalog, source_dataset)
    if source_dataset is not None:
        source = get_dataset(ws.catalog, source_dataset)
        columns, where_from = (source.columns if source else []), f"view of {source_dataset}: {description}"
    else:
        columns, where_from = MIXED_COLUMNS, f"view: {description}"
    with ws.catalog.write() as conn:  # one transaction: a refused selection leaves no dataset behind
        view_id = conn.execute(
            "INSERT INTO datasets (name, kind, source, columns, created_at) VALUES (?, ?, ?, ?, ?)",
            (name, kind, where_from, json.dumps(columns), time.time()),
        ).lastrowid
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS view_pick (pos INTEGER PRIMARY KEY, image_hash TEXT NOT NULL)")
        conn.execute("DELETE FROM temp.view_pick")
        conn.executemany("INSERT INTO temp.view_pick (pos, image_hash) VALUES (?, ?)", enumerate(picked))
        conn.execute("DROP TABLE IF EXISTS temp.view_from")
        conn.execute(  # each picked image's membership in the source (or in the first dataset that holds it)
            """CREATE TEMP TABLE view_from AS SELECT p.pos, p.image_hash,
                   (SELECT m.dataset_id FROM dataset_members m WHERE m.image_hash = p.image_hash
                      AND (? IS NULL OR m.dataset_id = ?) ORDER BY m.dataset_id LIMIT 1) AS dataset_id
               FROM temp.view_pick p""",
            (source_id, source_id),
        )
        missing = conn.execute("SELECT image_hash FROM temp.view_from WHERE dataset_id IS NULL LIMIT 1").fetchone()
        if missing is not None:
            held = f"dataset {source_dataset!r}" if source_dataset else "any dataset"
            raise ViewError(f"view {name!r}: image {str(missing[0])[:12]!r} is not in {held}")
        conn.execute(
            """INSERT INTO dataset_members (dataset_id, image_hash, seq, name, file_name)
               SELECT ?, f.image_hash, f.pos, m.name, m.file_name FROM temp.view_from f
               JOIN dataset_members m ON m.dataset_id = f.dataset_id AND m.image_hash = f.image_hash
               ORDER BY f.pos""",
            (view_id,),
        )
        conn.execute(
            """INSERT OR IGNORE INTO dataset_member_tags (dataset_id, tag, image_hash)
               SELECT ?, t.tag, t.image_hash FROM temp.view_from f
               JOIN dataset_member_tags t ON t.dataset_id = f.dataset_id AND t.image_hash = f.image_hash""",
            (view_id,),
        )
        if source_dataset is not None:  # the source's input rows, found by the name the member was stored under
            conn.execute(
                """INSERT INTO dataset_rows (dataset_id, row_index, data, source_key)
                   SELECT ?, f.pos, r.data, r.source_key FROM temp.view_from f
                   JOIN dataset_members m ON m.dataset_id = f.dataset_id AND m.image_hash = f.image_hash
                   JOIN dataset_rows r ON r.dataset_id = f.dataset_id AND r.row_index = (
                       SELECT MIN(r2.row_index) FROM dataset_rows r2 INDEXED BY dataset_rows_key
                       WHERE r2.dataset_id = f.dataset_id AND r2.source_key = m.name)
                   ORDER BY f.pos""",
                (view_id,),
            )
        else:
            rows = conn.execute(
                """SELECT f.pos, m.name, d.name FROM temp.view_from f JOIN datasets d ON d.id = f.dataset_id
                   JOIN dataset_members m ON m.dataset_id = f.dataset_id AND m.image_hash = f.image_hash"""
            ).fetchall()
            conn.executemany(
                "INSERT INTO dataset_rows (dataset_id, row_index, data, source_key) VALUES (?, ?, ?, ?)",
                [(view_id, pos, json.dumps([member, from_dataset]), member) for pos, member, from_dataset in rows],
            )
        conn.execute("DROP TABLE temp.view_from")
    return SavedView(name, len(picked), where_from)
