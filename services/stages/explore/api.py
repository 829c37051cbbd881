"""Explore's routes: `POST /search` (a text, or an uploaded image) and `GET /images/{hash}/similar`, under the
API's token and limits; the search runs in the workspace's worker when one serves, in a thread either way."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile

from services.api.deps import authorised, image_row, worker_slots, workspace
from services.core.names import SafeName
from services.core.workspace import Workspace
from services.stages.explore.search import MAX_K, MAX_TEXT_CHARS, SearchResult, hit_names, search

router = APIRouter(dependencies=[Depends(authorised)])


@router.post("/search")
async def search_images(
    request: Request,
    text: Annotated[str | None, Query(max_length=MAX_TEXT_CHARS, description="what to look for, in words")] = None,
    file: Annotated[UploadFile | None, File(description="or an image: images like it")] = None,
    dataset: Annotated[SafeName | None, Query(description="only this dataset's images (a name)")] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
) -> dict[str, Any]:
    """The stored images nearest to the text or the image in CLIP space (the model the images were embedded
    with), best first, each with its cosine score."""
    ws = workspace(request)
    data = None
    if file is not None:
        limit = request.app.state.upload_limits.max_image_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{file.filename or 'upload'}: over the {limit} byte image limit")
    run = partial(search, ws, text=text, image=data, dataset=dataset, k=k)
    result, where = await anyio.to_thread.run_sync(run, limiter=worker_slots(request))
    return _answer(ws, result, where, dataset)


@router.get("/images/{image_hash}/similar")
async def similar_images(
    request: Request,
    image_hash: str,
    dataset: Annotated[SafeName | None, Query(description="only this dataset's images (a name)")] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
) -> dict[str, Any]:
    """The stored images most like this one (itself left out), best first."""
    ws = workspace(request)
    row = image_row(ws, image_hash)
    run = partial(search, ws, like=str(row["hash"]), dataset=dataset, k=k)
    result, where = await anyio.to_thread.run_sync(run, limiter=worker_slots(request))
    return _answer(ws, result, where, dataset)


def _answer(ws: Workspace, result: SearchResult, where: str, dataset: str | None) -> dict[str, Any]:
    names = hit_names(ws, [h.image_hash for h in result.hits], dataset)
    return {
        "embedding": result.key,
        "index": result.index,
        "seconds": result.seconds,
        "where": where,
        "results": [{"hash": h.image_hash, "score": h.score, "name": names.get(h.image_hash, "")} for h in result.hits],
    }
