"""Seed 004's image identity, `hash_id`: blake2b of the pixels as PIL decodes the file (first frame, no EXIF
orientation applied, the file's own mode), 128 hex digits. The workbench names an image by the sha256 of its
file; a seed user's `input-metadata.json`, caches and scripts name it by `hash_id`. Both are accepted: the
seed's ids are kept in `image_aliases` (from an imported metadata file, or computed when first asked for).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.imaging import decode_image

log = logging.getLogger(__name__)

SEED_HASH_KIND = "seed-blake2b"
SEED_HASH_ID = re.compile(r"[0-9a-f]{128}")
CONTENT_HASH = re.compile(r"[0-9a-f]{64}")
_SWEEP_BATCH = 256


def seed_hash_id(data: bytes, max_pixels: int) -> str:
    """The seed's `compute_blake2b(Image.open(path))` for these file bytes (decoded within the pixel bound)."""
    image, _, _, _ = decode_image(data, max_pixels, orient=False)
    return hashlib.blake2b(image.tobytes()).hexdigest()


def remember_seed_hash_ids(ws: Workspace, pairs: list[tuple[str, str]]) -> int:
    """Record (image sha256, seed hash_id) pairs, e.g. from an imported seed metadata file; returns how many
    were new. An image keeps the first id recorded for it."""
    rows = [(alias, SEED_HASH_KIND, image_hash) for image_hash, alias in pairs if SEED_HASH_ID.fullmatch(alias)]
    with ws.catalog.write() as conn:
        before = conn.total_changes
        conn.executemany("INSERT OR IGNORE INTO image_aliases (alias, kind, image_hash) VALUES (?, ?, ?)", rows)
        return conn.total_changes - before


def seed_hash_id_of(ws: Workspace, image_hash: str) -> str | None:
    """The image's seed `hash_id`, computed from its stored file the first time (None: no such stored image)."""
    known = ws.catalog.scalar(
        "SELECT alias FROM image_aliases WHERE image_hash = ? AND kind = ?", (image_hash, SEED_HASH_KIND)
    )
    if known is not None:
        return str(known) or None  # '' : its file could not be decoded
    computed = _compute(ws, [image_hash])
    return computed.get(image_hash)


def find_image(ws: Workspace, hash_id: str, on_progress: Callable[[int], None] | None = None) -> str | None:
    """The sha256 of the image named `hash_id`: a sha256 itself, or a seed `hash_id`. An id not recorded yet is
    looked for by computing the seed ids of stored images that lack one (each recorded, so once per image)."""
    hash_id = hash_id.strip().lower()
    if CONTENT_HASH.fullmatch(hash_id):
        found = ws.catalog.scalar("SELECT hash FROM images WHERE hash = ? AND is_placeholder = 0", (hash_id,))
        return None if found is None else str(found)
    if not SEED_HASH_ID.fullmatch(hash_id):
        return None
    known = recorded_image(ws, hash_id)
    if known is not None:
        return known
    done = 0
    while True:
        batch = [
            r[0]
            for r in ws.catalog.query(
                """SELECT i.hash FROM images i WHERE i.is_placeholder = 0 AND i.path IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM image_aliases a WHERE a.image_hash = i.hash AND a.kind = ?)
                   ORDER BY i.hash LIMIT ?""",
                (SEED_HASH_KIND, _SWEEP_BATCH),
            )
        ]
        if not batch:
            return None
        computed = _compute(ws, batch)
        done += len(batch)
        if on_progress is not None:
            on_progress(done)
        if hash_id in computed.values():
            return recorded_image(ws, hash_id)


def recorded_image(ws: Workspace, alias: str) -> str | None:
    """The image a recorded seed `hash_id` names (the first stored, when pixel-equal files share it)."""
    found = ws.catalog.scalar(
        """SELECT a.image_hash FROM image_aliases a JOIN images i ON i.hash = a.image_hash
           WHERE a.kind = ? AND a.alias = ? ORDER BY i.created_at LIMIT 1""",
        (SEED_HASH_KIND, alias),
    )
    return None if found is None else str(found)


def _compute(ws: Workspace, hashes: list[str]) -> dict[str, str]:
    """Seed ids of these stored images, recorded; an image whose file cannot be read or decoded is recorded
    with an empty id (never matched, not read again)."""
    max_pixels = ws.settings.download.max_pixels
    out: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    marks = ",".join("?" * len(hashes))
    rows = ws.catalog.query(
        f"SELECT hash, path FROM images WHERE hash IN ({marks}) AND path IS NOT NULL AND is_placeholder = 0",
        tuple(hashes),
    )
    for row in rows:
        try:
            alias = seed_hash_id(ws.abspath(row["path"]).read_bytes(), max_pixels)
        except (OSError, WorkbenchError) as exc:
            log.warning("image %s: no seed hash_id (%s)", row["hash"][:12], exc)
            alias = ""
        else:
            out[row["hash"]] = alias
        pairs.append((row["hash"], alias))
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO image_aliases (alias, kind, image_hash) VALUES (?, ?, ?)",
            [(alias, SEED_HASH_KIND, image_hash) for image_hash, alias in pairs],
        )
    return out
