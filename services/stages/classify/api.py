"""The Classify stage's routes: the trained models, and an uploaded image or zip scored by every model."""

from __future__ import annotations

from functools import partial
from typing import IO, Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile

from services.api.deps import authorised, worker_slots, workspace
from services.core.names import SafeName
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, LoadedClip, ModelUnavailableError, autocast_for, load_clip
from services.io.embedding_store import EmbeddingStore
from services.stages.classify.scoring import bin_edges, bin_index, score, stack_models
from services.stages.classify.uploads import UploadLimits, UploadRefused, UploadReport, read_upload
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
    are listed under `skipped` with the reason). Decoding and embedding run in a worker thread, at most
    `api.workers` requests at once, so the server keeps answering meanwhile."""
    ws = workspace(request)
    name = file.filename or "upload"
    try:
        return await anyio.to_thread.run_sync(
            partial(_classify_upload, ws, file.file, name, dataset, bins, request.app.state.upload_limits),
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


def _classify_upload(
    ws: Workspace, upload: IO[bytes], filename: str, dataset: str | None, bins: int, limits: UploadLimits
) -> dict[str, Any]:
    """The work of POST /classify, in a worker thread: models, then the upload's images one at a time (stored
    vectors reused; the others decoded, preprocessed and embedded in small batches), then one scoring pass."""
    try:
        chosen = list_models(ws, dataset)
    except ModelFileError as exc:
        raise UploadRefused(422, f"dataset: {exc}") from None
    if not chosen:
        raise UploadRefused(404, "no trained models" + (f" for dataset {dataset!r}" if dataset else ""))
    try:
        stacked = stack_models(chosen)
    except ModelFileError as exc:
        raise UploadRefused(409, f"{exc}; pass ?dataset= to pick one set of models") from None
    store = EmbeddingStore(ws, stacked.embedding_key)
    stored = store.stored_hashes()
    embedder = _Embedder(chosen[0], ws.settings.clip.batch_size)
    report = UploadReport()
    images: list[tuple[str, str]] = []
    seen: set[str] = set()  # an image twice in one upload is decoded once
    vectors: dict[str, np.ndarray] = {}

    def known(image_hash: str) -> bool:
        return image_hash in stored or image_hash in seen

    for image in read_upload(upload, filename, limits, embedder.prepare, known, report=report):
        images.append((image.name, image.hash))
        seen.add(image.hash)
        if image.prepared is not None:
            vectors.update(embedder.add(image.hash, image.prepared))
    vectors.update(embedder.flush())
    if not images:
        raise UploadRefused(422, {"message": "no image in the upload", "skipped": report.skipped})
    from_store = sorted({h for _, h in images if h in stored} - vectors.keys())
    if from_store:
        loaded = store.load(from_store)
        vectors.update(zip(loaded.hashes, loaded.vectors, strict=True))
    matrix = np.stack([vectors[h] for _, h in images]).astype(np.float32)
    probabilities = score(matrix, stacked)
    idx = bin_index(probabilities, bins)
    labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in bin_edges(bins)]
    results = [
        {
            "name": name,
            "hash": image_hash,
            "scores": [
                {
                    "model": stacked.names[m],
                    "tag": stacked.tags[m],
                    "model_type": stacked.types[m],
                    "score": round(float(probabilities[i, m]), 6),
                    "bin": labels[idx[i, m]],
                }
                for m in range(len(stacked))
            ],
        }  # fmt: skip
        for i, (name, image_hash) in enumerate(images)
    ]
    return {"embedding": stacked.embedding_key, "results": results, "skipped": report.skipped}


class _Embedder:
    """The models' CLIP model, loaded on the first image that needs it; images arrive as preprocessed tensors
    (224x224) and are embedded `batch` at a time, so decoded images are never collected."""

    def __init__(self, model: TagModel, batch: int) -> None:
        self.model = model
        self.batch = max(1, batch)
        self.loaded: LoadedClip | None = None
        self.pending: list[tuple[str, Any]] = []

    def _clip(self) -> LoadedClip:
        if self.loaded is None:
            spec = self.model.manifest.get("embedding_spec")
            if not spec:
                raise UploadRefused(409, f"{self.model.name}: its manifest does not name the CLIP model to embed with")
            try:
                self.loaded = load_clip(ClipSpec(**spec))
            except ModelUnavailableError as exc:
                raise UploadRefused(503, str(exc)) from None
        return self.loaded

    def prepare(self, image: Any) -> Any:
        return self._clip().preprocess(image)

    def add(self, image_hash: str, tensor: Any) -> dict[str, np.ndarray]:
        self.pending.append((image_hash, tensor))
        return self.flush() if len(self.pending) >= self.batch else {}

    def flush(self) -> dict[str, np.ndarray]:
        if not self.pending:
            return {}
        import torch

        loaded = self._clip()
        batch = torch.stack([t for _, t in self.pending]).to(loaded.device)
        with torch.inference_mode(), autocast_for(loaded.device):
            features = loaded.model.encode_image(batch).float().cpu().numpy()
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        out = {h: features[i].astype(np.float32) for i, (h, _) in enumerate(self.pending)}
        self.pending = []
        return out
