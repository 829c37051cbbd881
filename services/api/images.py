"""The catalog's routes: images by content hash, a random image, an image's embedding and its tags and scores."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from services.api.deps import authorised, image_row, workspace
from services.core.locators import import_roots, shown_locator
from services.core.names import SafeName
from services.core.workspace import Workspace
from services.io.embedding_store import EMBED_STAGE, list_embedding_keys, vector_for

router = APIRouter(dependencies=[Depends(authorised)])


@router.get("/images/random")
def random_image(ws: Annotated[Workspace, Depends(workspace)]) -> dict[str, Any]:
    """A random stored image (404 on an empty catalog, where seed 004 looped forever)."""
    point = secrets.token_hex(32)  # the first image whose hash follows a random one: an indexed lookup
    row = (
        ws.catalog.conn.execute(
            "SELECT hash FROM images WHERE hash >= ? AND is_placeholder = 0 ORDER BY hash LIMIT 1", (point,)
        ).fetchone()
        or ws.catalog.conn.execute("SELECT hash FROM images WHERE is_placeholder = 0 ORDER BY hash LIMIT 1").fetchone()
    )
    if row is None:
        raise HTTPException(404, "the catalog has no images yet")
    return image_metadata(row["hash"], ws)


@router.get("/images/{image_hash}")
def image_metadata(image_hash: str, ws: Annotated[Workspace, Depends(workspace)]) -> dict[str, Any]:
    row = image_row(ws, image_hash)
    image_hash = row["hash"]  # named by a seed hash_id: the sha256 from here on
    sources = ws.catalog.query("SELECT kind, locator FROM image_sources WHERE image_hash = ?", (image_hash,))
    roots = import_roots(ws.catalog) if any(s["kind"] in ("path", "zip") for s in sources) else []
    stages = ws.catalog.query(
        "SELECT stage, settings_hash, status FROM stage_results WHERE image_hash = ? ORDER BY stage", (image_hash,)
    )
    return {
        "hash": row["hash"],
        "format": row["format"],
        "bytes": row["bytes"],
        "width": row["width"],
        "height": row["height"],
        # files by their place in what was imported (`parts/p.png`), never the server's path (R9)
        "sources": [{"kind": s["kind"], "locator": shown_locator(s["locator"], roots)} for s in sources],
        "stages": [{"stage": s["stage"], "settings": s["settings_hash"], "status": s["status"]} for s in stages],
    }


@router.get("/images/{image_hash}/embedding")
def embedding(
    image_hash: str,
    ws: Annotated[Workspace, Depends(workspace)],
    model: Annotated[SafeName | None, Query(description="embedding key")] = None,
) -> dict[str, Any]:
    image_hash = image_row(ws, image_hash)["hash"]
    keys = [
        r["settings_hash"]
        for r in ws.catalog.query(
            "SELECT settings_hash FROM stage_results WHERE image_hash = ? AND stage = ? AND status = 'ok'",
            (image_hash, EMBED_STAGE),
        )
    ]
    if model is None:
        if len(keys) != 1:
            raise HTTPException(404 if not keys else 400, f"embeddings of this image: {keys}; pass ?model=")
        model = keys[0]
    if model not in list_embedding_keys(ws) or model not in keys:
        raise HTTPException(404, f"no {model!r} embedding for this image (it has: {keys})")
    vector = vector_for(ws, model, image_hash)
    if vector is None:
        raise HTTPException(404, f"no {model!r} embedding for this image")
    return {"hash": image_hash, "model": model, "dim": int(vector.shape[0]), "vector": vector.tolist()}


@router.get("/images/{image_hash}/tags")
def tags(image_hash: str, ws: Annotated[Workspace, Depends(workspace)]) -> dict[str, Any]:
    image_hash = image_row(ws, image_hash)["hash"]
    rows = ws.catalog.query(
        """SELECT DISTINCT d.name AS dataset, json_extract(r.data, '$[1]') AS tag
           FROM job_items j JOIN jobs jb ON jb.id = j.job_id AND jb.kind = 'import_folder'
           JOIN datasets d ON d.id = jb.dataset_id
           JOIN dataset_rows r ON r.dataset_id = d.id AND r.source_key = j.item_key
           WHERE j.image_hash = ? AND j.status = 'ok' AND d.columns = '["path", "tag"]'""",
        (image_hash,),
    )
    by_dataset: dict[str, list[str]] = {}
    for r in rows:
        if r["tag"]:
            by_dataset.setdefault(r["dataset"], []).append(r["tag"])
    scores = ws.catalog.query(
        "SELECT model, tag, score FROM tag_scores WHERE image_hash = ? ORDER BY score DESC", (image_hash,)
    )
    return {
        "hash": image_hash,
        "tags": {k: sorted(v) for k, v in by_dataset.items()},
        "scores": [{"model": s["model"], "tag": s["tag"], "score": s["score"]} for s in scores],
    }
