"""Perceptual hashes for edited copies: a resized, re-encoded, brightened or slightly cropped copy of an image.

CLIP cosine finds images of the same thing; a perceptual hash finds the same picture after edits that change
every byte. Each image's 64-bit pHash (ImageHash, BSD-2-Clause: the DCT of a 32x32 greyscale thumbnail) is
computed once from its stored file and kept in the catalog (`image_phashes`); pairs within `max_distance`
bits are found with faiss's binary index (Hamming distances by popcount, exact), a block of queries at a time.
Measured on scikit-image's photos: a half-size, a JPEG at quality 50 or a 15% brighter copy is 0-4 bits from
its original, a 3% crop 4-12, a different photo 22 or more; hence the default of 12.

A dataset's hashes are computed by a `phash` job (resumable, in worker processes, progress on the Jobs
panel: decoding every image is the slow part); a few missing ones (up to `MAX_INLINE`) are computed where
they are asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from services.core.datasets import image_paths
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.imaging import ImageCheckError, decode_image
from services.jobs.image_stage import ImageStageTask, require_images
from services.jobs.manager import ItemResult, JobManager
from services.jobs.params import DatasetParams, JobParams, job_params

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 12  # bits of 64
MAX_DISTANCE = 32  # beyond it two hashes say nothing (random pictures differ in about 32)
QUERY_BLOCK = 4096
CHUNK = 500
MAX_INLINE = 2000  # more missing hashes than this: a job computes them (a page does not wait minutes)
PHASH_STAGE = "phash"
PHASH_SETTINGS = "imagehash-phash-64"  # the one setting: ImageHash's 64-bit pHash of the stored file
KIND = "phash"


class PhashMissingError(WorkbenchError):
    """Too many images without a perceptual hash to compute them here: a job should."""

    http_status = 409


def phashes(ws: Workspace, hashes: Sequence[str], max_inline: int = MAX_INLINE) -> dict[str, int]:
    """Each image's 64-bit pHash (unsigned), as its dataset's `phash` job stored it, or computed here from the
    stored file and kept when at most `max_inline` are missing (else PhashMissingError: run the job); images
    without a readable stored file are left out (and logged)."""
    out = _stored(ws, hashes)
    missing = [h for h in hashes if h not in out]
    if len(missing) > max_inline:
        raise PhashMissingError(
            f"{len(missing):,} images have no perceptual hash yet: compute them first (Explore's Duplicates "
            "view offers the job, or `phash --dataset NAME`)"
        )
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


def unhashed_images(ws: Workspace, datasets: Sequence[str]) -> int:
    """How many images of these datasets the `phash` job has not tried yet, from the stage counters (one small
    read, not a pass over the images; an image in two datasets counts twice, one hashed where it was asked for
    counts as not tried, and so does an image without a stored file, which the job never reads): what decides
    whether a page offers the job. 0.0005 s at a million images, where a pass over them took 5.6 s."""
    from services.core.datasets import dataset_id_of

    ids = [dataset_id_of(ws.catalog, name) for name in datasets]
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return int(ws.catalog.scalar(
        f"""SELECT COALESCE(SUM(MAX(0, d.n_images - COALESCE((SELECT SUM(c.images) FROM dataset_stage_counts c
                   WHERE c.dataset_id = d.id AND c.stage = ? AND c.settings_hash = ? AND c.status IN ('ok', 'failed')),
                   0))), 0) FROM datasets d WHERE d.id IN ({marks})""",
        (PHASH_STAGE, PHASH_SETTINGS, *ids)))  # fmt: skip


def phash_of_file(path: Path, max_pixels: int) -> int:
    """The 64-bit pHash of an image file (decoded at about 256 px: the hash reads a 32x32 thumbnail)."""
    import imagehash

    image, _, _, _ = decode_image(path.read_bytes(), max_pixels, draft_side=256)
    return int(str(imagehash.phash(image)), 16)


def _compute(ws: Workspace, hashes: Sequence[str]) -> Iterable[tuple[str, int]]:
    paths = image_paths(ws, list(hashes))
    for image_hash in hashes:
        rel = paths.get(image_hash)
        if rel is None:
            continue  # no stored file (a metadata-only import)
        try:
            yield image_hash, phash_of_file(ws.abspath(rel), ws.settings.download.max_pixels)
        except (OSError, ImageCheckError) as exc:
            log.warning("no perceptual hash for %s: %s", image_hash[:16], exc)


def _stored(ws: Workspace, hashes: Sequence[str]) -> dict[str, int]:
    """Codes computed here (`image_phashes`) or by a job (its stage results, `{"phash": "<16 hex digits>"}`)."""
    out: dict[str, int] = {}
    for start in range(0, len(hashes), CHUNK):
        part = tuple(hashes[start : start + CHUNK])
        marks = ",".join("?" * len(part))
        for r in ws.catalog.query(f"SELECT image_hash, phash FROM image_phashes WHERE image_hash IN ({marks})", part):
            out[r[0]] = int(r[1]) % 2**64
        for r in ws.catalog.query(
            f"""SELECT image_hash, json_extract(result, '$.phash') FROM stage_results WHERE stage = ?
                AND settings_hash = ? AND status = 'ok' AND image_hash IN ({marks})""",
            (PHASH_STAGE, PHASH_SETTINGS, *part),
        ):
            if isinstance(r[1], str) and len(r[1]) == 16 and all(c in "0123456789abcdef" for c in r[1]):
                out.setdefault(r[0], int(r[1], 16))
    return out


# --- the job: a dataset's hashes computed in worker processes ------------------------------------------------


class PhashParams(DatasetParams):
    """Perceptual hashes for a dataset's stored images."""


@dataclass(frozen=True)
class PhashOptions:
    workspace: str
    journal_dir: str
    max_pixels: int


def start_phash(ws: Workspace, manager: JobManager, dataset: str) -> int:
    """A `phash` job over the dataset's stored images (those already hashed are marked done at planning)."""
    dataset_id = require_images(ws, dataset)
    with job_params(KIND):
        params = PhashParams(dataset=dataset, chunk_size=200)
    return manager.create(KIND, f"Perceptual hashes: {dataset}", params, dataset_id)


class PhashTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = PhashParams
    kind: ClassVar[str] = KIND

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        return [(PHASH_STAGE, PHASH_SETTINGS)]

    def batch_work(self) -> Any:
        return phash_batch

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> PhashOptions:
        return PhashOptions(str(ws.root), str(ws.job_dir(job_id)), ws.settings.download.max_pixels)


def phash_batch(
    items: list[tuple[str, str | None]], opts: PhashOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """Each (image hash, stored path) item's pHash, as a stage result of the image."""
    for image_hash, rel in items:
        if cancelled():
            return
        path = Path(opts.workspace) / (rel or "")
        try:
            code = phash_of_file(path, opts.max_pixels)
        except FileNotFoundError:
            yield _failed(image_hash, "missing", f"{path} is gone from the workspace")
            continue
        except (OSError, ImageCheckError) as exc:
            yield _failed(image_hash, "not_image", f"{path.name}: cannot decode ({exc})")
            continue
        result = {"phash": f"{code:016x}"}
        yield ItemResult(key=image_hash, status="ok", image_hash=image_hash, result=result,
                         stages=[(PHASH_STAGE, PHASH_SETTINGS, "ok", result, None)])  # fmt: skip


def _failed(image_hash: str, error_class: str, message: str) -> ItemResult:
    return ItemResult(key=image_hash, status="failed", error_class=error_class, error_message=message,
                      image_hash=image_hash, stages=[(PHASH_STAGE, PHASH_SETTINGS, "failed", None,
                                                      f"{error_class}: {message}")])  # fmt: skip


def _signed(code: int) -> int:
    """SQLite integers are signed 64-bit."""
    return code - 2**64 if code >= 2**63 else code
