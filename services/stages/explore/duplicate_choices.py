"""Keep/drop choices on near-duplicate images, recorded in the catalog and honoured by exports.

A choice is about an image (its content hash), wherever it is catalogued: "drop" says it is a redundant copy
that exports leave out; "keep" says it stays (and undoes an earlier drop). Choices are appended, never
overwritten (`duplicate_choices`: who, when, why), and the latest one for an image counts, so every choice can
be traced and undone. The suggestion for a group keeps its best copy: the most pixels, then the most bytes,
then the most connected member, and drops the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.stages.explore.neighbours import DuplicateGroup

Choice = Literal["keep", "drop"]
CHOICES: tuple[Choice, ...] = ("keep", "drop")
MAX_WHO_CHARS = 200
QUERY_CHUNK = 500


class ChoiceError(WorkbenchError):
    """A choice that cannot be recorded as asked (an unknown image, an unknown choice)."""

    http_status = 422


@dataclass(frozen=True)
class ChoiceRecord:
    image_hash: str
    choice: Choice
    decided_by: str
    decided_at: float
    note: str


def record_choices(ws: Workspace, choices: Mapping[str, str], decided_by: str, note: str = "") -> int:
    """Append these choices (image hash -> 'keep' or 'drop'), checked first: every image must be catalogued.
    Returns how many were recorded."""
    for image_hash, choice in choices.items():
        if choice not in CHOICES:
            raise ChoiceError(f"{image_hash[:16]}...: choice {choice!r} is not keep or drop")
    unknown = sorted(set(choices) - _catalogued(ws, list(choices)))
    if unknown:
        raise ChoiceError(f"not a catalogued image: {', '.join(h[:16] + '...' for h in unknown[:5])}"
                          + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))  # fmt: skip
    who = (decided_by or "unknown")[:MAX_WHO_CHARS]
    now = time.time()
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT INTO duplicate_choices (image_hash, choice, decided_by, decided_at, note) VALUES (?, ?, ?, ?, ?)",
            [(h, c, who, now, note[:MAX_WHO_CHARS]) for h, c in choices.items()],
        )
    return len(choices)


def current_choices(ws: Workspace, hashes: Sequence[str]) -> dict[str, Choice]:
    """The latest choice for each of these images that has one."""
    sql = "SELECT image_hash, choice FROM duplicate_choices WHERE image_hash IN ({marks}) ORDER BY id"
    return {r[0]: r[1] for r in _rows_for(ws, sql, hashes)}  # in id order: the latest one stays


def dropped_among(ws: Workspace, hashes: Sequence[str]) -> set[str]:
    """Which of these images were last chosen to drop (what an export leaves out)."""
    return {h for h, c in current_choices(ws, hashes).items() if c == "drop"}


def dropped_count(ws: Workspace, dataset_id: int) -> int:
    """How many of a dataset's images are dropped now (one query: the export's plan and the page say it)."""
    return int(
        ws.catalog.scalar(
            """SELECT COUNT(*) FROM duplicate_choices c JOIN dataset_members m
                   ON m.dataset_id = ? AND m.image_hash = c.image_hash
               WHERE c.choice = 'drop'
                 AND c.id = (SELECT MAX(id) FROM duplicate_choices WHERE image_hash = c.image_hash)""",
            (dataset_id,),
        )
    )


def history(ws: Workspace, image_hash: str) -> list[ChoiceRecord]:
    """Every choice made on an image, oldest first (the audit trail)."""
    rows = ws.catalog.query(
        "SELECT image_hash, choice, decided_by, decided_at, note FROM duplicate_choices WHERE image_hash = ? "
        "ORDER BY id",
        (image_hash,),
    )
    return [ChoiceRecord(r[0], r[1], r[2], float(r[3]), r[4]) for r in rows]


def suggested_keep(ws: Workspace, group: DuplicateGroup) -> str:
    """The member to keep: the most pixels, then the most bytes, then the most connected (the group's order)."""
    dims = _dimensions(ws, group.members)
    order = {h: i for i, h in enumerate(group.members)}

    def rank(h: str) -> tuple[int, int, int]:
        width, height, size = dims.get(h, (0, 0, 0))
        return (width * height, size, -order[h])

    return max(group.members, key=rank)


def suggested_choices(ws: Workspace, groups: Iterable[DuplicateGroup]) -> dict[str, Choice]:
    """Keep each group's best copy, drop the others."""
    out: dict[str, Choice] = {}
    for group in groups:
        keep = suggested_keep(ws, group)
        out.update({h: ("keep" if h == keep else "drop") for h in group.members})
    return out


def image_sizes(ws: Workspace, hashes: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of each image (0 where unknown), to show beside a group's copies."""
    return {h: (width, height) for h, (width, height, _) in _dimensions(ws, hashes).items()}


def _dimensions(ws: Workspace, hashes: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """(width, height, bytes) of each catalogued image, 0 where unknown."""
    sql = "SELECT hash, COALESCE(width, 0), COALESCE(height, 0), COALESCE(bytes, 0) FROM images WHERE hash IN ({marks})"
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in _rows_for(ws, sql, hashes)}


def _catalogued(ws: Workspace, hashes: Sequence[str]) -> set[str]:
    return {r[0] for r in _rows_for(ws, "SELECT hash FROM images WHERE hash IN ({marks})", hashes)}


def _rows_for(ws: Workspace, sql: str, hashes: Sequence[str]) -> Iterable[Any]:
    """The rows of `sql` (its `{marks}`: the placeholders of an IN list) for these images, a chunk at a time."""
    for part in _chunks(hashes):
        yield from ws.catalog.query(sql.format(marks=",".join("?" * len(part))), tuple(part))


def _chunks(hashes: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(hashes), QUERY_CHUNK):
        yield hashes[start : start + QUERY_CHUNK]
