"""An uploaded image or zip scored by every trained model (`POST /classify`): in the workspace's worker, on the
CLIP model its jobs keep loaded (op `classify-upload`), or in the caller's process when no worker serves the
workspace. Stored vectors are reused; other images are decoded, preprocessed and embedded in small batches."""

from __future__ import annotations

import io
from typing import IO, Any

import numpy as np

from services.core.names import check_name
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, LoadedClip, ModelUnavailableError, autocast_for, load_clip
from services.io.embedding_store import EmbeddingStore
from services.jobs.worker_requests import RequestHandler, ask_worker
from services.jobs.worker_status import live_worker
from services.stages.classify.scoring import bin_edges, bin_index, score, stack_models
from services.stages.classify.uploads import UploadLimits, UploadRefused, UploadReport, read_upload
from services.stages.train.models import ModelFileError, TagModel, list_models

CLASSIFY_OP = "classify-upload"
WORKER_TIMEOUT_S = 600.0  # a large zip on a CPU worker; past it the caller scores the upload itself


def classify_upload_anywhere(
    ws: Workspace, upload: IO[bytes], filename: str, dataset: str | None, bins: int, max_images: int
) -> dict[str, Any]:
    """The scores of `POST /classify`, from the worker when one serves the workspace (one copy of the CLIP
    model per workspace, kept loaded), else computed here. The upload is bounded by the API's body limit."""
    limits = UploadLimits.from_settings(ws.settings, max_images)
    if live_worker(ws) is None:  # no copy of the upload in memory when it is scored here anyway
        return classify_upload(ws, upload, filename, dataset, bins, limits)
    data = upload.read()
    args = {"filename": filename, "dataset": dataset, "bins": bins, "max_images": max_images}
    answer = ask_worker(ws, CLASSIFY_OP, data, args, timeout=WORKER_TIMEOUT_S)
    if answer is None:  # the worker went away or did not answer
        return classify_upload(ws, io.BytesIO(data), filename, dataset, bins, limits)
    if "refused" in answer:  # the worker's refusal of the upload keeps its HTTP status and detail
        raise UploadRefused(int(answer["refused"]["status"]), answer["refused"]["detail"])
    return dict(answer["scores"])


def classify_upload_handler(ws: Workspace) -> RequestHandler:
    """What the worker does when the API asks: the same scoring, with the bounds built from its settings."""

    def handle(body: bytes, args: dict[str, Any]) -> dict[str, Any]:
        try:
            filename, bins, max_images = str(args["filename"]), int(args["bins"]), int(args["max_images"])
            dataset = None if args.get("dataset") is None else str(args["dataset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a classify request needs a file name, bins and an image count ({exc})") from None
        if not 1 <= bins <= 1000 or max_images < 1:
            raise ValueError("bins must be 1 to 1000 and the image count at least 1")
        if dataset is not None:
            check_name(dataset, "dataset")
        limits = UploadLimits.from_settings(ws.settings, max_images)
        try:
            return {"scores": classify_upload(ws, io.BytesIO(body), filename, dataset, bins, limits)}
        except UploadRefused as exc:
            return {"refused": {"status": exc.status, "detail": exc.detail}}

    return handle


def classify_upload(
    ws: Workspace, upload: IO[bytes], filename: str, dataset: str | None, bins: int, limits: UploadLimits
) -> dict[str, Any]:
    """The work of POST /classify: models, then the upload's images one at a time (stored
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
