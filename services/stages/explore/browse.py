"""Browse a dataset's images as one paged grid, filtered and sorted on what the catalog knows about them.

One parameterised query over `dataset_members` (the dataset's images in input order) joined with `images`;
each filter adds a condition with bound values, never text pasted into the SQL: folder tags (any of), file
formats, a smallest width and height, a byte range, a part of the name, a quality flag, a classifier score at
least a value for one model, the keep/drop choice on near-duplicates. Sorts are a fixed list of named orders.
A page reads `limit` rows at `offset`; the total is counted by the same conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.core.catalog import SCORE_BINS
from services.core.datasets import dataset_id_of, image_count
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace

SORTS: dict[str, str] = {  # name -> ORDER BY (fixed text: never from the request)
    "input order": "m.seq",
    "name": "m.file_name, m.seq",
    "largest file": "i.bytes DESC, m.seq",
    "smallest file": "i.bytes, m.seq",
    "most pixels": "i.width * i.height DESC, m.seq",
    "fewest pixels": "i.width * i.height, m.seq",
    "highest score": "score DESC, m.seq",
    "lowest score": "score, m.seq",
}
MAX_PAGE = 500
MAX_NAME_CHARS = 200


class BrowseError(WorkbenchError):
    """A filter or sort that cannot be applied as asked."""

    http_status = 422


@dataclass(frozen=True)
class BrowseFilter:
    dataset: str
    tags: tuple[str, ...] = ()  # any of these folder tags
    formats: tuple[str, ...] = ()  # any of these (PIL names: JPEG, PNG...)
    min_width: int = 0
    min_height: int = 0
    min_bytes: int = 0
    max_bytes: int | None = None
    name_contains: str = ""
    flag: str | None = None  # a quality flag the image carries (any quality version)
    score_model: str | None = None  # a classifier (model_sha): its score is shown and sortable
    min_score: float | None = None  # with score_model: at least this score
    choice: Literal["any", "kept", "dropped"] = "any"  # "kept": not chosen to drop
    sort: str = "input order"


@dataclass(frozen=True)
class BrowseRow:
    image_hash: str
    name: str
    path: str | None
    format: str
    bytes: int
    width: int
    height: int
    score: float | None


def browse(ws: Workspace, f: BrowseFilter, offset: int = 0, limit: int = 24) -> tuple[list[BrowseRow], int]:
    """One page of the dataset's images that pass the filter, in the chosen order, and how many pass."""
    if f.sort not in SORTS:
        raise BrowseError(f"sort {f.sort!r}: use one of {', '.join(SORTS)}")
    if "score" in f.sort and f.score_model is None:
        raise BrowseError("sorting by score needs a classifier chosen")
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise BrowseError(f"a page is 1 to {MAX_PAGE} images from offset 0 or more")
    if len(f.name_contains) > MAX_NAME_CHARS:
        raise BrowseError(f"a name filter has at most {MAX_NAME_CHARS} characters")
    dataset_id = dataset_id_of(ws.catalog, f.dataset)
    where = ["m.dataset_id = ?"]
    args: list[object] = [dataset_id]
    if f.tags:  # the tag index read once, not one lookup a member
        where.append(
            f"""m.image_hash IN (SELECT t.image_hash FROM dataset_member_tags t WHERE t.dataset_id = ?
                AND t.tag IN ({",".join("?" * len(f.tags))}))"""
        )
        args += [dataset_id, *f.tags]
    if f.formats:
        where.append(f"i.format IN ({','.join('?' * len(f.formats))})")
        args += f.formats
    for column, value in (("i.width", f.min_width), ("i.height", f.min_height), ("i.bytes", f.min_bytes)):
        if value:
            where.append(f"{column} >= ?")
            args.append(int(value))
    if f.max_bytes is not None:
        where.append("i.bytes <= ?")
        args.append(int(f.max_bytes))
    if f.name_contains:
        where.append("instr(lower(m.name), lower(?)) > 0")
        args.append(f.name_contains)
    if f.flag:
        where.append("m.image_hash IN (SELECT image_hash FROM image_flags WHERE flag = ?)")  # one scan, not one a row
        args.append(f.flag)
    if f.choice != "any":
        dropped = """(SELECT c.image_hash FROM duplicate_choices c WHERE c.choice = 'drop'
                       AND c.id = (SELECT MAX(id) FROM duplicate_choices WHERE image_hash = c.image_hash))"""
        where.append(f"m.image_hash {'IN' if f.choice == 'dropped' else 'NOT IN'} {dropped}")
    score, join_score, join_args = "NULL", "", []
    if f.score_model is not None:  # an inner join when a score is asked for or sorted by (the classifier's
        kind = "JOIN" if f.min_score is not None or "score" in f.sort else "LEFT JOIN"  # scored images only)
        score, join_score, join_args = (
            "s.score",
            f"{kind} tag_scores s ON s.image_hash = m.image_hash AND s.model_sha = ?",
            [f.score_model],
        )
        if f.min_score is not None:
            where.append("s.score >= ?")
            args.append(float(f.min_score))
    conditions = " AND ".join(where)
    base = f"FROM dataset_members m JOIN images i ON i.hash = m.image_hash {join_score} WHERE {conditions}"
    if len(where) == 1 and not join_score.startswith("JOIN"):  # every image of the dataset: its counter
        total = image_count(ws, f.dataset)
    elif (bins := _score_bins_from(f, len(where))) is not None:  # a score alone: the score counters
        total = int(ws.catalog.scalar(
            "SELECT COALESCE(SUM(images), 0) FROM dataset_score_bins WHERE dataset_id = ? AND model_sha = ? "
            "AND bin >= ?", (dataset_id, f.score_model, bins)))  # fmt: skip
    else:  # images joined only when a filter reads them
        images_join = "JOIN images i ON i.hash = m.image_hash" if any(c.startswith("i.") for c in where) else ""
        total = int(ws.catalog.scalar(f"SELECT COUNT(*) FROM dataset_members m {images_join} {join_score} WHERE "
                                      f"{conditions}", (*join_args, *args)))  # fmt: skip
    rows = ws.catalog.query(
        f"""SELECT m.image_hash, m.name, i.path, i.format, i.bytes, i.width, i.height, {score} AS score {base}
            ORDER BY {SORTS[f.sort]} LIMIT ? OFFSET ?""",
        (*join_args, *args, limit, offset),
    )
    return [
        BrowseRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]), None if r[7] is None else float(r[7]))
        for r in rows
    ], total


def _score_bins_from(f: BrowseFilter, conditions: int) -> int | None:
    """The first fine score bin whose images are exactly those passing the filter, when a classifier's score is
    its only condition and the threshold falls on a bin edge (the bins: k / 1000 <= score < (k + 1) / 1000,
    kept by the catalog for Classify); else None."""
    if f.score_model is None or conditions != (1 if f.min_score is None else 2):
        return None
    if f.min_score is None:
        return 0 if "score" in f.sort else None  # sorted by score: every scored image
    k = round(f.min_score * SCORE_BINS)
    return k if 1 <= k < SCORE_BINS and abs(k - f.min_score * SCORE_BINS) < 1e-6 else None


def formats_of(ws: Workspace, dataset: str) -> list[str]:
    """The file formats a dataset's images come in (for the filter's choices)."""
    rows = ws.catalog.query(
        """SELECT DISTINCT i.format FROM dataset_members m JOIN images i ON i.hash = m.image_hash
           WHERE m.dataset_id = ? ORDER BY i.format""",
        (dataset_id_of(ws.catalog, dataset),),
    )
    return [r[0] for r in rows]


def classifiers_of(ws: Workspace, dataset: str) -> dict[str, str]:
    """The classifiers that scored a dataset's images: model_sha -> "model (tag)" (from the score counters)."""
    rows = ws.catalog.query(
        """SELECT DISTINCT b.model_sha, (SELECT s.model FROM tag_scores s WHERE s.model_sha = b.model_sha LIMIT 1)
           FROM dataset_score_bins b WHERE b.dataset_id = ? AND b.images > 0""",
        (dataset_id_of(ws.catalog, dataset),),
    )
    return {r[0]: f"{r[1]} ({r[0][:8]})" for r in rows if r[1]}


def flags_of(ws: Workspace, dataset: str) -> list[str]:
    """The quality flags a dataset's images carry (from the flag counters)."""
    rows = ws.catalog.query(
        "SELECT DISTINCT flag FROM dataset_flag_counts WHERE dataset_id = ? AND images > 0 ORDER BY flag",
        (dataset_id_of(ws.catalog, dataset),),
    )
    return [r[0] for r in rows]
