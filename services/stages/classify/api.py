"""The Classify stage's routes: the trained models, and an uploaded image or zip scored by every model."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile

from services.api.deps import authorised, worker_slots, workspace
from services.core.names import SafeName
from services.core.workspace import Workspace
from services.stages.classify.upload_scoring import classify_upload_anywhere
from services.stages.classify.uploads import UploadRefused
from services.stages.train.models import ModelFileError, TagModel, list_models

router = APIRouter(dependencies=[Depends(authorised)])


@router.get("/models")
def models(
    ws: Annotated[Workspace, Depends(workspace)],
    dataset: Annotated[SafeName | None, Query(description="only this dataset's models (a name)")] = None,
) -> list[dict[str, Any]]:
    try:
        return [_model_summary(m) for m in list_models(ws, dataset)]
    except ModelFileError as exc:
        raise HTTPException(422, f"dataset: {exc}") from None


@router.post("/classify")
async def classify(
    request: Request,
    file: UploadFile = File(..., description="an image, or a zip of images"),
    dataset: Annotated[SafeName | None, Query(description="use only this dataset's models (a name)")] = None,
    bins: int = Query(10, ge=1, le=1000),
) -> dict[str, Any]:
    """Scores of every model for the image, or for each image of the zip (members that cannot be used
    are listed under `skipped` with the reason). Scored by the workspace's worker on its loaded CLIP model when
    one serves, else here; either way in a thread, at most `api.workers` requests at once, so the server keeps
    answering meanwhile."""
    ws = workspace(request)
    name = file.filename or "upload"
    max_images = request.app.state.upload_limits.max_images
    try:
        return await anyio.to_thread.run_sync(
            partial(classify_upload_anywhere, ws, file.file, name, dataset, bins, max_images),
            limiter=worker_slots(request),
        )
    except UploadRefused as exc:
        raise HTTPException(exc.status, exc.detail) from None


def _model_summary(m: TagModel) -> dict[str, Any]:
    metrics = m.manifest["metrics"]
    return {
        "name": m.name,
        "tag": m.tag,
        "model_type": m.model_type,
        "dataset": m.manifest["dataset"],
        "embedding": m.manifest["embedding_key"],
        "version": m.manifest["sha256"][:16],
        "average_precision": metrics["average_precision"],
        "roc_auc": metrics["roc_auc"],
        "f1": metrics["f1"],
    }
