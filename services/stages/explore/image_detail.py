"""One image as the catalog knows it: its file, every source it came from, every dataset holding it (with the
name and tags it has there), every stage result under every setting, classifier scores, categorised-CSV labels,
near-duplicate choices, and its other names. What Explore's detail panel and `image-detail` show.

Reads are by the image's hash through the tables' indexes (a few rows each), so a detail opens at once at any
catalog size. Sources are returned as stored: pages and the API show them through their locator guard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.stages.explore.duplicate_choices import history

MAX_RESULT_CHARS = 20_000  # a stage result larger than this is cut (an OCR result with many lines)


class ImageNotFoundError(WorkbenchError):
    """No stored image has this hash."""

    error_class = "not_found"
    http_status = 404


@dataclass
class ImageDetail:
    hash: str
    format: str
    bytes: int
    width: int
    height: int
    path: str | None  # the stored original, relative to the workspace
    aliases: dict[str, str] = field(default_factory=dict)  # kind -> other name (seed 004's hash_id)
    sources: list[dict[str, Any]] = field(default_factory=list)  # kind, locator, first_seen
    datasets: list[dict[str, Any]] = field(default_factory=list)  # name, kind, member name, tags
    results: list[dict[str, Any]] = field(default_factory=list)  # stage, settings, status, result, error, updated
    scores: list[dict[str, Any]] = field(default_factory=list)  # classifier model, tag, score
    labels: list[dict[str, Any]] = field(default_factory=list)  # label set, label (categorised CSVs, Gemini sets)
    choices: list[dict[str, Any]] = field(default_factory=list)  # keep/drop history, oldest first
    phash: str | None = None  # the perceptual hash, when computed (hex)
    derived: list[dict[str, Any]] = field(default_factory=list)  # preprocessed variants

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_detail(ws: Workspace, image_hash: str) -> ImageDetail:
    """Everything the catalog holds about one stored image."""
    row = ws.catalog.conn.execute(
        "SELECT hash, format, bytes, width, height, path FROM images WHERE hash = ?", (image_hash,)
    ).fetchone()
    if row is None:
        raise ImageNotFoundError(f"no image {image_hash[:16]!r} in this workspace")
    detail = ImageDetail(row[0], row[1], int(row[2]), int(row[3]), int(row[4]), row[5])
    q = ws.catalog.query
    detail.aliases = {r[0]: r[1] for r in q("SELECT kind, alias FROM image_aliases WHERE image_hash = ?", (row[0],))}
    detail.sources = [
        {"kind": r[0], "locator": r[1], "first_seen": float(r[2])}
        for r in q(
            "SELECT kind, locator, first_seen FROM image_sources WHERE image_hash = ? ORDER BY first_seen",
            (row[0],),
        )
    ]
    members = q(
        """SELECT d.id, d.name, d.kind, m.name, m.file_name FROM dataset_members m
           JOIN datasets d ON d.id = m.dataset_id WHERE m.image_hash = ? ORDER BY d.id""",
        (row[0],),
    )
    tags: dict[int, list[str]] = {}
    for r in q("SELECT dataset_id, tag FROM dataset_member_tags WHERE image_hash = ? ORDER BY tag", (row[0],)):
        tags.setdefault(int(r[0]), []).append(r[1])
    detail.datasets = [{"dataset": r[1], "kind": r[2], "name": r[3], "tags": tags.get(int(r[0]), [])} for r in members]
    detail.results = [
        {"stage": r[0], "settings": r[1], "status": r[2], "result": _parsed(r[3]), "error": r[4], "updated": r[5]}
        for r in q(
            """SELECT stage, settings_hash, status, result, error, updated_at FROM stage_results
               WHERE image_hash = ? ORDER BY stage, updated_at DESC""",
            (row[0],),
        )
    ]
    detail.scores = [
        {"model": r[0], "tag": r[1], "score": float(r[2]), "model_sha": r[3]}
        for r in q(
            "SELECT model, tag, score, model_sha FROM tag_scores WHERE image_hash = ? ORDER BY score DESC", (row[0],)
        )
    ]
    names = sorted({r[4] for r in members})  # a categorised CSV names its items by file name, a Gemini set by hash
    detail.labels = [
        {"label_set": r[0], "label": r[1]}
        for r in q(
            f"""SELECT s.name, l.label FROM labels l JOIN label_sets s ON s.id = l.set_id
                WHERE l.item IN ({",".join("?" * (1 + len(names)))}) ORDER BY s.name, l.label""",
            (row[0], *names),
        )
    ]
    detail.choices = [
        {"choice": c.choice, "by": c.decided_by, "at": c.decided_at, "note": c.note} for c in history(ws, row[0])
    ]
    phash = ws.catalog.scalar("SELECT phash FROM image_phashes WHERE image_hash = ?", (row[0],))
    detail.phash = None if phash is None else f"{int(phash) & (2**64 - 1):016x}"
    detail.derived = [
        {"variant": r[0], "path": r[1], "width": int(r[2]), "height": int(r[3])}
        for r in q("SELECT variant, path, width, height FROM derived_images WHERE image_hash = ?", (row[0],))
    ]
    return detail


def _parsed(text: str | None) -> Any:
    """A stored result as data (JSON), cut when very large; text that is not JSON as it is."""
    if text is None:
        return None
    if len(text) > MAX_RESULT_CHARS:
        return text[:MAX_RESULT_CHARS] + f"… ({len(text):,} characters)"
    try:
        return json.loads(text)
    except ValueError:
        return text
