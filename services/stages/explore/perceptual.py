"""Perceptual hashes for edited copies: a resized, re-encoded, brightened or slightly cropped copy of an image.

CLIP cosine finds images of the same thing; a perceptual hash finds the same picture after edits that change
every byte. Each image's 64-bit pHash (ImageHash, BSD-2-Clause: the DCT of a 32x32 greyscale thumbnail) is
computed once from its stored file and kept in the catalog (`image_phashes`); pairs within `max_distance`
bits are found with faiss's binary index (Hamming distances by popcount, exact), a block of queries at a time.
Measured on scikit-image's photos: a half-size, a JPEG at quality 50 or a 15% brighter copy is 0-4 bits from
its original, a 3% crop 4-12, a different photo 22 or more; hence the default of 12.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from services.core.datasets import image_paths
from services.core.workspace import Workspace
from services.io.imaging import ImageCheckError, decode_image

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 12  # bits of 64
MAX_DISTANCE = 32  # beyond it two hashes say nothing (random pictures differ in about 32)
QUERY_BLOCK = 4096
CHUNK = 500


def phashes(ws: Workspace, hashes: Sequence[str]) -> dict[str, int]:
    """Each image's 64-bit pHash (unsigned), computed from its stored file the first time and kept; images
    without a readable stored file are left out (and logged)."""
    out = _stored(ws, hashes)
    missing = [h for h in hashes if h not in out]
    for start in range(0, len(missing), CHUNK):
        part = missing[start : start + CHUNK]
        computed = {h: code for h, code in _compute(ws, part)}
        with ws.catalog.write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO image_phashes (image_hash, phash) VALUES (?, ?)",
                [(h, _signed(code)) for h, code in computed.items()],
            )
        out.update(computed)
    return out


def phash_pairs(codes: dict[str, int], max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[str, str, int]]:
    """Every pair of images whose hashes differ in at most `max_distance` bits: (a, b, bits), a < b."""
    import faiss

    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"a perceptual hash distance is 0 to {MAX_DISTANCE} bits ({max_distance} given)")
    names = sorted(codes)
    if len(names) < 2:
        return []
    packed = np.array([codes[n] for n in names], dtype=np.uint64).byteswap().view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(packed)
    out = []
    for start in range(0, len(names), QUERY_BLOCK):
        limits, distances, ids = index.range_search(packed[start : start + QUERY_BLOCK], max_distance + 1)
        for q in range(len(limits) - 1):
            a = start + q
            for j in range(limits[q], limits[q + 1]):
                b = int(ids[j])
                if b > a:
                    out.append((names[a], names[b], int(distances[j])))
    return out


def _compute(ws: Workspace, hashes: Sequence[str]) -> Iterable[tuple[str, int]]:
    import imagehash

    paths = image_paths(ws, list(hashes))
    for image_hash in hashes:
        rel = paths.get(image_hash)
        if rel is None:
            continue  # no stored file (a metadata-only import)
        try:
            data = ws.abspath(rel).read_bytes()
            image, _, _, _ = decode_image(data, ws.settings.download.max_pixels, draft_side=256)
            yield image_hash, int(str(imagehash.phash(image)), 16)
        except (OSError, ImageCheckError) as exc:
            log.warning("no perceptual hash for %s: %s", image_hash[:16], exc)


def _stored(ws: Workspace, hashes: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for start in range(0, len(hashes), CHUNK):
        part = hashes[start : start + CHUNK]
        marks = ",".join("?" * len(part))
        for r in ws.catalog.query(
            f"SELECT image_hash, phash FROM image_phashes WHERE image_hash IN ({marks})", tuple(part)
        ):
            out[r[0]] = int(r[1]) % 2**64
    return out


def _signed(code: int) -> int:
    """SQLite integers are signed 64-bit."""
    return code - 2**64 if code >= 2**63 else code
