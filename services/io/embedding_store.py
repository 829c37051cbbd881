"""The embedding store: L2-normalised float32 vectors per (image hash, model), in shard files, never a pickle.

Each model (open_clip name + weights identity) has a folder `embeddings/<key>/` of shards: `NAME.npy` (an
N x D float32 matrix) and `NAME.hashes` (N image hashes, one per line, written last: a shard without it is
an unfinished write and is ignored). Loading every vector of a model is a handful of `np.load` calls, so a
million vectors load in seconds. The catalog's `stage_results` row (`embed`, key) says an image is done,
so a vector is computed once; `compact` merges small shards without touching the catalog.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec

EMBED_STAGE = "embed"
COMPACT_ROWS = 100_000
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def embedding_key(spec: ClipSpec) -> str:
    """Readable and unique per weights: `ViT-B-32-openai-1a2b3c4d`, `tiny-ckpt-...` for a checkpoint."""
    weights = "ckpt" if spec.checkpoint else (spec.pretrained or "none")
    readable = _SAFE.sub("_", f"{spec.model}-{weights}")[:200]  # a folder name: file systems allow 255 bytes
    return readable + "-" + spec.identity_hash()[:8]


@dataclass
class Embeddings:
    hashes: list[str]
    vectors: np.ndarray  # float32, one L2-normalised row per hash

    def __len__(self) -> int:
        return len(self.hashes)

    def subset(self, wanted: list[str]) -> Embeddings:
        """Rows for `wanted` hashes that are present, in the order given."""
        index = {h: i for i, h in enumerate(self.hashes)}
        rows = [index[h] for h in wanted if h in index]
        return Embeddings([self.hashes[i] for i in rows], self.vectors[rows])


_COUNTS: dict[tuple[str, tuple[str, ...]], int] = {}  # EmbeddingStore.count per store and set of shards
_COUNT_LOCK = threading.Lock()


class EmbeddingStore:
    def __init__(self, ws: Workspace, key: str) -> None:
        self.ws = ws
        self.key = key
        self.folder = ws.root / "embeddings" / key
        self._lock = threading.Lock()

    def write_shard(self, hashes: list[str], vectors: np.ndarray) -> str:
        """Write one shard atomically (matrix first, hash list last); returns its name."""
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes for {len(vectors)} vectors")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.folder / f".{name}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
        os.replace(tmp, self.folder / f"{name}.npy")
        tmp_hashes = self.folder / f".{name}.hashes.tmp"
        tmp_hashes.write_text("\n".join(hashes) + "\n", encoding="ascii")
        os.replace(tmp_hashes, self.folder / f"{name}.hashes")
        return name

    def write_spec(self, spec: dict[str, Any]) -> None:
        """Which model made these vectors (classification needs it to embed new images the same way)."""
        path = self.folder / "spec.json"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(spec), encoding="utf-8")

    def read_spec(self) -> dict[str, Any] | None:
        path = self.folder / "spec.json"
        return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def shards(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(".hashes")] for p in self.folder.glob("*.hashes"))

    def count(self) -> int:
        """How many images have a vector. Shards are written once and never change under their name, so the
        count is read once per set of shards and kept in the process: a page's rerun lists a folder."""
        shards = tuple(self.shards())
        key = (str(self.folder), shards)
        with _COUNT_LOCK:
            if key in _COUNTS:
                return _COUNTS[key]
        found = len(self.stored_hashes())
        with _COUNT_LOCK:
            if len(_COUNTS) > 64:
                _COUNTS.clear()
            _COUNTS[key] = found
        return found

    def stored_hashes(self) -> set[str]:
        """Which images have a vector: the hash lists only, no vector is read (for counts and checks)."""
        out: set[str] = set()
        for name in self.shards():
            out.update((self.folder / f"{name}.hashes").read_text(encoding="ascii").split())
        return out

    def load(self, wanted: list[str] | None = None, mmap: bool = False) -> Embeddings:
        """All vectors of this model (or those of `wanted`, in that order), each hash once.

        One pass: the hash lists are read first, then every kept row is copied once from a memory-mapped
        shard into a preallocated matrix (`mmap=True` skips even that copy when a single shard holds all).
        """
        want = set(wanted) if wanted is not None else None
        plan: list[tuple[str, list[int] | None, int]] = []  # shard, rows to keep (None: all), shard rows
        hashes: list[str] = []
        seen: set[str] = set()
        for name in self.shards():
            shard_hashes = (self.folder / f"{name}.hashes").read_text(encoding="ascii").split()
            fresh = seen.isdisjoint(shard_hashes) and len(set(shard_hashes)) == len(shard_hashes)
            if want is None and fresh:
                plan.append((name, None, len(shard_hashes)))
                hashes.extend(shard_hashes)
                seen.update(shard_hashes)
                continue
            keep = []
            for i, h in enumerate(shard_hashes):
                if h not in seen and (want is None or h in want):
                    seen.add(h)
                    keep.append(i)
                    hashes.append(h)
            if keep:
                plan.append((name, keep, len(shard_hashes)))
        matrices = []
        for name, rows, count in plan:
            matrix = np.load(self.folder / f"{name}.npy", mmap_mode="r")
            if matrix.shape[0] != count:
                raise ValueError(f"embedding shard {name}: {matrix.shape[0]} rows for {count} hashes")
            matrices.append((matrix, rows))
        dim = matrices[0][0].shape[1] if matrices else 0
        if mmap and len(matrices) == 1 and matrices[0][1] is None:
            vectors = matrices[0][0]
        else:
            vectors = np.empty((len(hashes), dim), dtype=np.float32)
            at = 0
            for matrix, rows in matrices:
                part = matrix if rows is None else matrix[rows]
                vectors[at : at + len(part)] = part
                at += len(part)
        result = Embeddings(hashes, vectors)
        return result.subset(wanted) if wanted is not None else result

    def compact(self, rows_per_shard: int = COMPACT_ROWS) -> int:
        """Merge small shards into shards of `rows_per_shard`; returns how many files were merged away."""
        with self._lock:
            names = self.shards()
            if len(names) < 2:
                return 0
            everything = self.load()
            for start in range(0, len(everything), rows_per_shard):
                end = start + rows_per_shard
                self.write_shard(everything.hashes[start:end], everything.vectors[start:end])
            for name in names:  # the merged copies exist now; a kill here leaves duplicates, which load() skips
                (self.folder / f"{name}.hashes").unlink(missing_ok=True)
                (self.folder / f"{name}.npy").unlink(missing_ok=True)
            return len(names)


def list_embedding_keys(ws: Workspace) -> list[str]:
    folder = ws.root / "embeddings"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def vector_for(ws: Workspace, key: str, image_hash: str) -> np.ndarray | None:
    """One image's vector (reads the hash lists, then one row of one shard)."""
    store = EmbeddingStore(ws, key)
    for name in store.shards():
        shard_hashes = (store.folder / f"{name}.hashes").read_text(encoding="ascii").split()
        if image_hash in shard_hashes:
            matrix = np.load(store.folder / f"{name}.npy", mmap_mode="r")
            return np.array(matrix[shard_hashes.index(image_hash)])
    return None
