"""Seed 004's Python interface, called as its scripts and notebooks call it, over the workbench's catalog:

    from services.compat.seed004 import FileCache, ClipCache, TagCache, list_models, generate_model_path, classify_main

- `list_models(folder)` prints the models of a folder by type (and returns None, as the seed did);
  `generate_model_path(folder, model_type=..., tag_name=...)` is the model file's path, or None;
  `classify_main(folder_path=..., output_dir=..., json_file_path=..., bins_number=..., model_path=...)` scores
  an image, a folder or a zip with the models and writes `output.json` (and the bins and scores) to
  `output_dir`; vectors in the seed's `input-metadata.json` for the same images are used instead of embedding
  again. Models are the workbench's `.skops` files: a seed `.pkl` is refused (loading a pickle runs code).
- `FileCache`, `ClipCache`, `TagCache` answer `get_random_hash`, `get_*_by_hash` and `get_random_*` from the
  workspace's catalog, read-only: their `create_*`, `add_folder_to_*` and `clear_cache` say which command does
  that now. `db_path` names the workspace (its folder, or any file in it such as `catalog.sqlite`); a path
  outside any workspace falls back to the one the facade was made with, then to the configured workspace.
- `hash_id` is seed 004's (blake2b of the decoded pixels); the sha256 content hash is accepted as well.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np

from services.compat.seed_hash_ids import find_image, seed_hash_id, seed_hash_id_of
from services.core.errors import WorkbenchError
from services.core.locators import METADATA_ONLY_PREFIX
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore, list_embedding_keys
from services.stages.embed.seed_json import SeedEntry, read_seed_json
from services.stages.train.models import MODEL_TYPES, TagModel, load_models_from

__all__ = [
    "ClipCache",
    "FileCache",
    "SeedCompatError",
    "TagCache",
    "classify_main",
    "compute_blake2b",
    "generate_model_path",
    "list_models",
]


class SeedCompatError(WorkbenchError):
    """A seed call the workbench answers differently; the message says what to do instead."""

    error_class = "seed_compat"


def compute_blake2b(path: str | Path) -> str:
    """Seed 004's `hash_id` of an image file."""
    return seed_hash_id(Path(path).read_bytes(), load_settings().download.max_pixels)


# --- helpers -------------------------------------------------------------------------------------------


def _models_in(folder: str | Path) -> list[TagModel]:
    path = Path(folder).expanduser()
    if path.suffix == ".pkl":
        raise SeedCompatError(_PICKLE)
    if (path / "catalog.sqlite").is_file():
        path = path / "models"  # a workspace: all its models
    if not path.exists():
        raise SeedCompatError(f"{folder}: no such model folder or file")
    if path.is_dir() and not list(path.rglob("model-*.skops")) and list(path.glob("*.pkl")):
        raise SeedCompatError(_PICKLE)
    return load_models_from(path)


_PICKLE = (
    "seed 004's .pkl models are not loaded here (loading a pickle runs whatever code it holds); train them again "
    "from the same images and tags: `python -m services import-tagged --metadata input-metadata.json` (the image "
    "files are optional), then `python -m services train`"
)


def list_models(model_folder_path: str | Path) -> None:
    """Seed 004's listing: model types, and under each the tags it has a model for."""
    by_type: dict[str, list[str]] = {}
    for model in _models_in(model_folder_path):
        by_type.setdefault(model.model_type, []).append(model.tag)
    for index, (model_type, tags) in enumerate(by_type.items()):
        print(f"\n{index + 1})  {model_type}")
        for tag in tags:
            print(f"\t \t \t{tag}")


def generate_model_path(model_folder_path: str | Path, model_type: str, tag_name: str) -> str | None:
    """The path of the model of this type for this tag in the folder (or workspace), or None as the seed did
    when there is none; an error when several trainings have one (pass the folder of one of them)."""
    full_type = MODEL_TYPES.get(model_type, model_type)
    found = [m for m in _models_in(model_folder_path) if m.model_type == full_type and m.tag == tag_name]
    if len(found) > 1:
        folders = ", ".join(sorted({str(m.path.parent) for m in found}))
        raise SeedCompatError(f"{len(found)} models for {full_type} / {tag_name!r}: in {folders}; pass one of them")
    return str(found[0].path) if found else None


def classify_main(
    folder_path: str | Path,
    output_dir: str | Path | None = None,
    json_file_path: str | Path | None = None,
    bins_number: int = 10,
    model_path: str | Path | None = None,
    workspace: str | Path | None = None,
) -> None:
    """Seed 004's `classify_main`: every model (one file or a folder of them) on an image, a folder or a zip;
    `output.json`, `bins.json` and `scores.csv` in `output_dir`. The run is a workbench job in the workspace
    the models belong to (or `workspace`, or the configured one)."""
    from services.jobs.manager import JobManager
    from services.stages.classify.stage import start_classify_dataset
    from services.stages.download.folder_import import start_folder_import

    if model_path is None:
        raise SeedCompatError("classify_main needs model_path: a model file, or a folder of models")
    models = _models_in(model_path)
    if not models:
        raise SeedCompatError(f"{model_path}: no models (model-*.skops with their .json manifests)")
    ws = _workspace(None, workspace if workspace is not None else _workspace_above(Path(model_path)))
    try:
        manager = JobManager(ws)
        source = Path(folder_path).expanduser()
        name = f"classify-{source.stem or 'input'}"
        imported = manager.run(start_folder_import(ws, manager, source, _free_dataset_name(ws, name), kind="classify"))
        if imported.state != "completed":
            raise SeedCompatError(f"{folder_path}: the import ended {imported.state}: {imported.error}")
        if json_file_path is not None:
            _reuse_seed_vectors(ws, imported.id, Path(json_file_path), models)
        out = Path(output_dir) if output_dir is not None else None
        job_id = start_classify_dataset(ws, manager, imported.params["dataset"], models, bins=bins_number, out=out)
        done = manager.run(job_id)
        if done.state != "completed":
            raise SeedCompatError(f"{folder_path}: classification ended {done.state}: {done.error}")
    finally:
        ws.close()


def _free_dataset_name(ws: Workspace, name: str) -> str:
    from services.core.datasets import get_dataset

    candidate, n = name, 1
    while get_dataset(ws.catalog, candidate) is not None:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _reuse_seed_vectors(ws: Workspace, import_job: int, metadata: Path, models: list[TagModel]) -> int:
    """Vectors of the seed metadata file for the imported images (matched by `hash_id`, or the sha256 in a file
    the workbench exported) made by the models' CLIP model, stored so the classify job does not embed them."""
    key = str(models[0].manifest["embedding_key"])
    by_id = {e.hash_id: e for e in read_seed_json(metadata) if e.vector is not None and _entry_key(e) == key}
    if not by_id:
        return 0
    store = EmbeddingStore(ws, key)
    have = store.stored_hashes()
    hashes: list[str] = []
    vectors: list[list[float]] = []
    for row in ws.catalog.query(
        "SELECT DISTINCT image_hash FROM job_items WHERE job_id = ? AND status = 'ok'", (import_job,)
    ):
        image_hash = row[0]
        if image_hash in have:
            continue
        entry = by_id.get(image_hash) or by_id.get(seed_hash_id_of(ws, image_hash) or "")
        if entry is not None and entry.vector is not None:
            hashes.append(image_hash)
            vectors.append(entry.vector)
    if not hashes:
        return 0
    matrix = np.asarray(vectors, dtype=np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    shard = store.write_shard(hashes, matrix)
    with ws.catalog.write() as conn:
        for image_hash in hashes:
            ws.catalog.record_stage(
                conn, image_hash, EMBED_STAGE, key, "ok", {"shard": shard, "dim": matrix.shape[1]}, None
            )
    return len(hashes)


def _entry_key(entry: SeedEntry) -> str | None:
    """The embedding key of a seed metadata entry: the one the workbench exported, or its model and pretrained
    tag (the seed's ViT-B-32 / openai)."""
    from services.io.clip_models import ClipSpec
    from services.io.embedding_store import embedding_key

    if entry.embedding_key:
        return entry.embedding_key
    if not entry.model:
        return None
    return embedding_key(ClipSpec(model=entry.model, pretrained=entry.pretrained or "openai"))


# --- caches --------------------------------------------------------------------------------------------


def _workspace_above(path: Path) -> Path | None:
    """The workspace folder holding `path` (a folder with catalog.sqlite), if any."""
    path = path.expanduser().resolve()
    for folder in [path, *path.parents]:
        if (folder / "catalog.sqlite").is_file():
            return folder
    return None


def _workspace(db_path: str | Path | None, fallback: str | Path | None) -> Workspace:
    settings = load_settings()
    for candidate in (
        _workspace_above(Path(db_path)) if db_path is not None else None,
        Path(fallback).expanduser() if fallback is not None else None,
        settings.workspace.expanduser(),
    ):
        if candidate is not None and (candidate / "catalog.sqlite").is_file():
            return Workspace.open(candidate, settings)
    raise SeedCompatError(
        f"{db_path}: not in a workspace (no catalog.sqlite in it or above it), and no workspace was given: "
        "pass the workspace folder as db_path, make the cache with FileCache(workspace=...), or set "
        "WORKBENCH_WORKSPACE"
    )


class _CatalogCache:
    """What the three seed caches share: the workspace behind `db_path`, the read-only refusals, random picks."""

    what = "images"
    command = "python -m services download folder DIR"

    def __init__(self, workspace: str | Path | None = None) -> None:
        self.workspace = workspace

    def _refuse(self, *_: object, **__: object) -> None:
        raise SeedCompatError(
            f"the workbench keeps {self.what} in the workspace's catalog, read-only here; use `{self.command}` "
            "(or the dashboard) to add them; nothing is cleared or deleted from Python"
        )

    def _open(self, db_path: str | Path | None) -> Workspace:
        return _workspace(db_path, self.workspace)

    def _random_image(self, ws: Workspace) -> str | None:
        point = secrets.token_hex(32)  # the first image hash after a random one: an indexed lookup
        for sql, args in (
            ("SELECT hash FROM images WHERE hash >= ? AND is_placeholder = 0 ORDER BY hash LIMIT 1", (point,)),
            ("SELECT hash FROM images WHERE is_placeholder = 0 ORDER BY hash LIMIT 1", ()),
        ):
            found = ws.catalog.scalar(sql, args)
            if found is not None:
                return str(found)
        return None

    def _random(self, ws: Workspace) -> str | None:
        return self._random_image(ws)

    def get_random_hash(self, db_path: str | Path | None = None) -> dict[str, str] | None:
        """{'hash_id': the seed id of a random image}, or None in an empty workspace."""
        ws = self._open(db_path)
        try:
            image_hash = self._random(ws)
            if image_hash is None:
                return None
            return {"hash_id": seed_hash_id_of(ws, image_hash) or image_hash}
        finally:
            ws.close()

    def _by_hash(self, db_path: str | Path | None, hash_id: str) -> dict[str, Any] | None:
        ws = self._open(db_path)
        try:
            image_hash = find_image(ws, str(hash_id))
            return None if image_hash is None else self._describe(ws, image_hash, str(hash_id))
        finally:
            ws.close()

    def _random_entry(self, db_path: str | Path | None) -> dict[str, Any] | None:
        ws = self._open(db_path)
        try:
            image_hash = self._random(ws)
            if image_hash is None:
                return None
            return self._describe(ws, image_hash, seed_hash_id_of(ws, image_hash) or image_hash)
        finally:
            ws.close()

    def _describe(self, ws: Workspace, image_hash: str, hash_id: str) -> dict[str, Any] | None:
        raise NotImplementedError


class FileCache(_CatalogCache):
    """Seed 004's file cache: where each image came from (the catalog's images and their sources)."""

    create_file_cache = _CatalogCache._refuse
    add_folder_to_file_cache = _CatalogCache._refuse
    clear_cache = _CatalogCache._refuse

    def get_img_by_hash(self, db_path: str | Path | None, hash_id: str) -> dict[str, Any] | None:
        """The image's file data (the seed's keys, and `hash`: the sha256 and `stored_path`), or None."""
        return self._by_hash(db_path, hash_id)

    def get_random_image(self, db_path: str | Path | None = None) -> dict[str, Any] | None:
        return self._random_entry(db_path)

    def _describe(self, ws: Workspace, image_hash: str, hash_id: str) -> dict[str, Any]:
        image = ws.catalog.conn.execute("SELECT path FROM images WHERE hash = ?", (image_hash,)).fetchone()
        source = ws.catalog.conn.execute(
            """SELECT kind, locator FROM image_sources WHERE image_hash = ?
               ORDER BY kind IN ('path', 'zip') DESC, first_seen LIMIT 1""",
            (image_hash,),
        ).fetchone()
        locator = str(source["locator"]) if source is not None else str(image["path"] or "")
        locator = locator.removeprefix(METADATA_ONLY_PREFIX)  # imported without its file: where the seed had it
        archive, _, member = locator.rpartition("!") if source is not None and source["kind"] == "zip" else ("", "", "")
        name = (member or locator).rstrip("/").rsplit("/", 1)[-1]
        return {
            "hash_id": hash_id,
            "file_name": name,
            "file_path": f"{archive}/{member}" if archive else locator,
            "file_type": Path(name).suffix,
            "is_archive": None,  # an image is never an archive in the catalog (zips are read through)
            "n_content": None,
            "container_archive": archive or None,
            "hash": image_hash,
            "stored_path": str(ws.abspath(image["path"])) if image["path"] else None,
        }


class ClipCache(_CatalogCache):
    """Seed 004's CLIP cache: an image's vector from the workspace's embedding store, for one CLIP model (its
    embedding key, or its model name when one key has it; the only one when the workspace has one)."""

    what = "CLIP vectors"
    command = "python -m services embed DATASET"
    create_clip_cache = _CatalogCache._refuse
    add_folder_to_clip_cache = _CatalogCache._refuse
    clear_cache = _CatalogCache._refuse

    def __init__(self, workspace: str | Path | None = None, model: str | None = None) -> None:
        super().__init__(workspace)
        self.model = model

    def _key(self, ws: Workspace) -> str:
        keys = list_embedding_keys(ws)
        if self.model is not None:
            chosen = [k for k in keys if k == self.model] or [
                k for k in keys if (EmbeddingStore(ws, k).read_spec() or {}).get("model") == self.model
            ]
        else:
            chosen = keys
        if len(chosen) != 1:
            have = ", ".join(keys) or "none"
            raise SeedCompatError(
                f"{len(chosen)} embedding models match {self.model or 'any'}; pick one: ClipCache(model=KEY) "
                f"(this workspace has: {have})"
            )
        return chosen[0]

    def _random(self, ws: Workspace) -> str | None:
        hashes = sorted(EmbeddingStore(ws, self._key(ws)).stored_hashes())
        return hashes[secrets.randbelow(len(hashes))] if hashes else None

    def get_clip_by_hash(self, db_path: str | Path | None, hash_id: str) -> dict[str, Any] | None:
        """{'hash_id', 'clip_vector' (1 x dim, float32, L2-normalised), 'model', 'embedding_key'}, or None when
        the image has no vector for this model."""
        return self._by_hash(db_path, hash_id)

    def get_random_clip(self, db_path: str | Path | None = None) -> dict[str, Any] | None:
        return self._random_entry(db_path)

    def _describe(self, ws: Workspace, image_hash: str, hash_id: str) -> dict[str, Any] | None:
        key = self._key(ws)
        store = EmbeddingStore(ws, key)
        if image_hash not in store.stored_hashes():
            return None
        vector = store.load([image_hash]).vectors[0]
        spec = store.read_spec() or {}
        return {
            "hash_id": hash_id,
            "clip_vector": np.asarray(vector, dtype=np.float32).reshape(1, -1),
            "model": spec.get("model", key),
            "embedding_key": key,
            "hash": image_hash,
        }


class TagCache(_CatalogCache):
    """Seed 004's tag cache: an image's tag (the folder it was imported from), over every tagged dataset."""

    what = "tags"
    command = "python -m services download folder DIR (each image tagged by its folder)"
    create_tag_cache = _CatalogCache._refuse
    add_folder_to_tag_cache = _CatalogCache._refuse
    clear_cache = _CatalogCache._refuse

    def _random(self, ws: Workspace) -> str | None:
        found = ws.catalog.scalar("SELECT image_hash FROM dataset_member_tags ORDER BY random() LIMIT 1")
        return None if found is None else str(found)

    def get_tag_by_hash(self, db_path: str | Path | None, hash_id: str) -> dict[str, Any] | None:
        """{'hash_id', 'tag' (the first, by name), 'tags' (all of them)}, or None for an untagged image."""
        return self._by_hash(db_path, hash_id)

    def get_random_tag(self, db_path: str | Path | None = None) -> dict[str, Any] | None:
        return self._random_entry(db_path)

    def _describe(self, ws: Workspace, image_hash: str, hash_id: str) -> dict[str, Any] | None:
        tags = sorted(
            {r[0] for r in ws.catalog.query("SELECT tag FROM dataset_member_tags WHERE image_hash = ?", (image_hash,))}
        )
        if not tags:
            return None
        return {"hash_id": hash_id, "tag": tags[0], "tags": tags, "hash": image_hash}
