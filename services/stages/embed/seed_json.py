"""Seed 004's JSON files: `input-metadata.json` (per image: file, format, size, resolution, tags, model and
CLIP vector) and `input-tag-to-image-hash-list.json` (tag -> image hashes), exported from and imported into
the workspace.

Export keys images by our content hash (sha256 of the file). Import reads the seed's files as they are: each
image is imported from its `file_path` (hashed again by content), tagged from the tag file (or its own
`image_tags`), and its vector, when present, goes into the embedding store under its model and pretrained
tag, so `train` can run without embedding again.

An entry whose image file is not there (the metadata copied without the images) is kept as a metadata-only
image: a catalog row with the file's recorded format, size and resolution but no stored file, named by a hash
derived from its seed `hash_id`, carrying its tags and vector. Training reads it (tags and stored vectors);
stages that read image files skip it (it has no stored path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.compat.seed_hash_ids import SEED_HASH_ID, remember_seed_hash_ids
from services.core.datasets import DatasetError, dataset_entries, dataset_tags, ensure_dataset
from services.core.locators import METADATA_ONLY_PREFIX
from services.core.workspace import Workspace, write_atomic
from services.io.clip_models import ClipSpec
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore, embedding_key
from services.jobs.manager import JobManager
from services.stages.download.folder_import import FolderImportParams

METADATA_NAME = "input-metadata.json"
TAGS_NAME = "input-tag-to-image-hash-list.json"


def export_seed_json(ws: Workspace, dataset: str, key: str | None, out_dir: Path) -> tuple[Path, Path, int]:
    """Both files for a dataset; vectors from the embedding model `key` when given."""
    tags = dataset_tags(ws, dataset)
    vectors = EmbeddingStore(ws, key).load(list(tags)) if key else None
    index = {h: i for i, h in enumerate(vectors.hashes)} if vectors else {}
    metadata: dict[str, Any] = {}
    for image_hash, rel, name in dataset_entries(ws, dataset):
        row = ws.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (image_hash,)).fetchone()
        entry = {
            "hash_id": image_hash,
            "file_name": Path(name.split("!")[-1]).name,
            "file_path": str(ws.abspath(rel)),
            "source_path": name,
            "file_type": Path(rel).suffix,
            "image_format": row["format"],
            "image_size_bytes": row["bytes"],
            "image_resolution": [row["width"], row["height"]],
            "image_tags": sorted(tags.get(image_hash, set())),
        }
        if vectors is not None and image_hash in index:
            entry.update(embedding_key=key, embeddings_vector=vectors.vectors[index[image_hash]].tolist())
        metadata[image_hash] = entry
    by_tag: dict[str, list[str]] = {}
    for image_hash, image_tags in tags.items():
        for tag in sorted(image_tags):
            by_tag.setdefault(tag, []).append(image_hash)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path, tags_path = out_dir / METADATA_NAME, out_dir / TAGS_NAME
    write_atomic(meta_path, json.dumps(metadata).encode("utf-8"))
    write_atomic(tags_path, json.dumps(by_tag, indent=1, sort_keys=True).encode("utf-8"))
    return meta_path, tags_path, len(metadata)


@dataclass
class SeedEntry:
    hash_id: str
    path: str
    tags: list[str]
    vector: list[float] | None
    model: str | None
    pretrained: str | None
    embedding_key: str | None = None  # in files the workbench exported: the exact embedding model
    recorded: dict[str, Any] = field(default_factory=dict)  # format, bytes, width, height as the file recorded


def read_seed_json(metadata_path: Path, tags_path: Path | None = None) -> list[SeedEntry]:
    """Entries of a seed metadata file (a dict keyed by hash, or a list), tags from the tag file if given."""
    try:
        data = json.loads(metadata_path.read_text(encoding="utf-8"))
        tag_map = json.loads(tags_path.read_text(encoding="utf-8")) if tags_path else None
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read seed JSON: {exc}") from None
    records = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise DatasetError(f"{metadata_path}: expected a JSON object keyed by hash, or a list")
    tags_of: dict[str, list[str]] = {}
    if isinstance(tag_map, dict):
        for tag, hashes in tag_map.items():
            for h in hashes:
                tags_of.setdefault(str(h), []).append(str(tag))
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DatasetError(f"{metadata_path}: entry {i} is not an object")
        hash_id = str(rec.get("hash_id") or rec.get("hash") or i)
        path = rec.get("file_path") or rec.get("path")
        if not path:
            raise DatasetError(f"{metadata_path}: entry {hash_id} has no file_path")
        vector = rec.get("embeddings_vector") or rec.get("clip_vector")
        out.append(
            SeedEntry(
                hash_id=hash_id,
                path=str(path),
                tags=tags_of.get(hash_id, []) if tag_map is not None else list(rec.get("image_tags") or []),
                vector=[float(v) for v in vector] if vector else None,
                model=rec.get("model") or rec.get("clip_model"),
                pretrained=rec.get("pretrained"),
                embedding_key=rec.get("embedding_key"),
                recorded=_recorded_file(rec),
            )
        )
    return out


def _recorded_file(rec: dict[str, Any]) -> dict[str, Any]:
    """What a metadata entry says about its file (seed 004's keys), with safe defaults for what it lacks."""
    size = rec.get("image_resolution") or rec.get("image_size") or [0, 0]
    try:
        width, height = (int(size[0]), int(size[1])) if isinstance(size, list | tuple) and len(size) == 2 else (0, 0)
        nbytes = int(rec.get("image_size_bytes") or 0)
    except (TypeError, ValueError):
        width = height = nbytes = 0
    fmt = str(rec.get("image_format") or str(rec.get("file_type") or "").lstrip(".").upper() or "UNKNOWN")
    return {"format": fmt[:16], "bytes": max(0, nbytes), "width": max(0, width), "height": max(0, height)}


def metadata_only_hash(metadata_path: Path, hash_id: str) -> str:
    """The catalog name of an entry without its file: from the seed's `hash_id` (a blake2b of the pixels names
    the image wherever the file was), else from the metadata file and the entry's key."""
    if SEED_HASH_ID.fullmatch(hash_id):
        basis = f"seed-blake2b:{hash_id}"
    else:
        basis = f"seed-entry:{metadata_path.resolve()}#{hash_id}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()


def _record_metadata_only(ws: Workspace, metadata_path: Path, entries: list[SeedEntry]) -> dict[str, str]:
    """Catalog rows for entries without their file; returns {hash_id: locator} for the import job, whose plan
    finds each as an already stored source (so nothing is fetched for it)."""
    locators: dict[str, str] = {}
    with ws.catalog.write() as conn:
        for e in entries:
            image_hash = metadata_only_hash(metadata_path, e.hash_id)
            locator = f"{METADATA_ONLY_PREFIX}{e.path}"  # where the file was, as the metadata says
            rec = e.recorded or _recorded_file({})
            ws.catalog.record_image(
                conn,
                image_hash=image_hash,
                fmt=rec["format"],
                nbytes=rec["bytes"],
                width=rec["width"],
                height=rec["height"],
                path=None,
            )
            ws.catalog.record_source(conn, "path", locator, image_hash)
            locators[e.hash_id] = locator
    return locators


def start_seed_import(
    ws: Workspace, manager: JobManager, metadata_path: Path, tags_path: Path | None, dataset: str
) -> int:
    """A folder-import job over the files the metadata names (one dataset row per image and tag); entries whose
    file is not there are kept as metadata-only images (see the module's docstring)."""
    entries = read_seed_json(metadata_path, tags_path)
    absent = [e for e in entries if not Path(e.path).expanduser().is_file()]
    only_metadata = _record_metadata_only(ws, metadata_path, absent) if absent else {}
    rows = [
        (e.hash_id, only_metadata.get(e.hash_id) or str(Path(e.path).expanduser()), tag)
        for e in entries
        for tag in (e.tags or [""])
    ]
    source = str(metadata_path.resolve())
    ds = ensure_dataset(ws.catalog, dataset, "folder", source, ["path", "tag"])
    entries_file = ws.root / "uploads" / f"seed-import-{ds.id}.json"
    write_atomic(entries_file, json.dumps(rows).encode("utf-8"))
    params = FolderImportParams(folder=source, dataset=dataset, workers=0, entries_file=str(entries_file))
    return manager.create("import_folder", f"Import seed JSON: {dataset} ({metadata_path.name})", params, ds.id)


def store_seed_vectors(ws: Workspace, job_id: int, metadata_path: Path) -> dict[str, int]:
    """After the import: the file's vectors into the embedding store, per model; returns counts per key. The
    file's `hash_id`s (seed 004's blake2b) are kept as the images' other names, so they find them."""
    entries = [e for e in read_seed_json(metadata_path) if e.vector is not None]
    hash_of = {
        r["item_key"]: r["image_hash"]
        for r in ws.catalog.query(
            "SELECT item_key, image_hash FROM job_items WHERE job_id = ? AND status = 'ok'", (job_id,)
        )
    }
    remember_seed_hash_ids(ws, [(image_hash, seed_id) for seed_id, image_hash in hash_of.items()])
    groups: dict[str, tuple[ClipSpec, list[str], list[list[float]]]] = {}
    for e in entries:
        if e.hash_id not in hash_of or not e.model:
            continue
        spec = ClipSpec(model=e.model, pretrained=e.pretrained or "openai")
        _, hashes, vectors = groups.setdefault(embedding_key(spec), (spec, [], []))
        hashes.append(hash_of[e.hash_id])
        vectors.append(e.vector or [])
    counts = {}
    for key, (spec, hashes, vectors) in groups.items():
        try:
            matrix = np.asarray(vectors, dtype=np.float32)
        except ValueError:
            raise DatasetError(f"{metadata_path}: the vectors of {spec.model} differ in length") from None
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        store = EmbeddingStore(ws, key)
        store.write_spec({"model": spec.model, "pretrained": spec.pretrained, "checkpoint": None, "device": "auto"})
        shard = store.write_shard(hashes, matrix)
        with ws.catalog.write() as conn:
            for h in hashes:
                ws.catalog.record_stage(conn, h, EMBED_STAGE, key, "ok", {"shard": shard, "dim": matrix.shape[1]}, None)
        counts[key] = len(hashes)
    return counts


def metadata_only_count(ws: Workspace, job_id: int) -> int:
    """How many entries of a seed import had no file here and were kept as metadata-only images."""
    found = ws.catalog.scalar(
        "SELECT COUNT(*) FROM job_items WHERE job_id = ? AND status = 'ok' AND locator LIKE ?",
        (job_id, METADATA_ONLY_PREFIX + "%"),
    )
    return int(found or 0)
