"""Vectors stored as the embed job stores them (a shard, and a stage result per image naming the model), for
tests that plant the vectors themselves instead of running a CLIP model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.core.workspace import Workspace
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore


def store_vectors(ws: Workspace, key: str, hashes: Sequence[str], matrix: np.ndarray) -> None:
    """Rows of `matrix` (L2-normalised) as the vectors of `hashes` from embedding model `key`."""
    shard = EmbeddingStore(ws, key).write_shard(list(hashes), matrix)
    with ws.catalog.write() as conn:
        for h in hashes:
            ws.catalog.record_stage(conn, h, EMBED_STAGE, key, "ok", {"shard": shard, "dim": matrix.shape[1]}, None)
