"""Vectorised scoring: every per-tag model applied to every image in one matrix product.

Each trained model reduces to p = sigmoid(scale * (x . w + bias) + shift) (see `tag_models`), so a set of
M models is a D x M matrix plus three length-M vectors, and N images are scored in N/chunk products instead
of N x M `predict_proba` calls. Vectors are centred first on the models' common mean c, computing
(x - c) . w + (bias + c . w): the same number, but without the float32 cancellation a scaler's large
folded weights would bring. Each model also brings its decision threshold (chosen on validation data
at training time; 0.5 for older manifests). Bins follow seed 004's `output_bins`, fixed: exactly n equal
bins over [0, 1], a score of 1.0 in the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.stages.train.models import ModelFileError, TagModel

CHUNK_ROWS = 65_536


@dataclass
class StackedModels:
    names: list[str]
    tags: list[str]
    types: list[str]
    shas: list[str]
    weights: np.ndarray  # D x M, float32
    bias: np.ndarray  # M, float64
    scale: np.ndarray  # M
    shift: np.ndarray  # M
    embedding_key: str
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))  # M; a score >= it means "tagged"
    center: np.ndarray | None = None  # D, float32: subtracted from every vector before the product

    def __len__(self) -> int:
        return len(self.names)


def stack_models(models: list[TagModel]) -> StackedModels:
    """One matrix from models trained on the same embedding model (mixing embeddings is refused)."""
    if not models:
        raise ModelFileError("no models to score with; train some first (python -m services train)")
    keys = {m.manifest["embedding_key"] for m in models}
    if len(keys) > 1:
        raise ModelFileError(f"the models were trained on different embeddings ({', '.join(sorted(keys))}); pick one")
    dims = {int(m.manifest["dim"]) for m in models}
    if len(dims) > 1:
        raise ModelFileError(f"the models expect different vector sizes: {sorted(dims)}")
    linear = [m.linear for m in models]
    centers = [c for c in (m.center for m in models) if c is not None]
    return StackedModels(
        names=[m.name for m in models],
        tags=[m.tag for m in models],
        types=[m.model_type for m in models],
        shas=[str(m.manifest["sha256"]) for m in models],
        weights=np.stack([w for w, _, _, _ in linear], axis=1).astype(np.float32),
        bias=np.array([b for _, b, _, _ in linear], dtype=np.float64),  # large when a scaler is folded in
        scale=np.array([s for _, _, s, _ in linear], dtype=np.float32),
        shift=np.array([c for _, _, _, c in linear], dtype=np.float32),
        embedding_key=keys.pop(),
        thresholds=np.array([m.threshold for m in models], dtype=np.float64),
        center=np.mean(centers, axis=0).astype(np.float32) if centers else None,
    )


def score(vectors: np.ndarray, stacked: StackedModels, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """N x M probabilities, float32, computed in chunks so memory stays bounded at any N."""
    if vectors.shape[1] != stacked.weights.shape[0]:
        expected = stacked.weights.shape[0]
        raise ModelFileError(f"vectors have {vectors.shape[1]} dimensions; the models expect {expected}")
    out = np.empty((vectors.shape[0], len(stacked)), dtype=np.float32)
    center = stacked.center
    bias = stacked.bias.astype(np.float64)
    if center is not None:  # x . w + b == (x - c) . w + (b + c . w); the last term in float64, once
        bias = bias + center.astype(np.float64) @ stacked.weights.astype(np.float64)
    bias = bias.astype(np.float32)
    rows = min(chunk_rows, vectors.shape[0]) if center is not None else 0
    centred = np.empty((rows, vectors.shape[1]), dtype=np.float32)  # reused: no page faults per chunk
    for start in range(0, vectors.shape[0], chunk_rows):
        chunk = np.asarray(vectors[start : start + chunk_rows], dtype=np.float32)
        if center is not None:
            chunk = np.subtract(chunk, center, out=centred[: len(chunk)])
        logits = chunk @ stacked.weights
        logits += bias
        logits *= stacked.scale
        logits += stacked.shift
        np.negative(logits, out=logits)
        np.exp(logits, out=logits)
        logits += 1.0
        np.reciprocal(logits, out=out[start : start + chunk_rows])
    return out


def bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each score among `bins` equal bins over [0, 1] (1.0 falls in the last bin)."""
    if bins < 1:
        raise ValueError("bins must be at least 1")
    result: np.ndarray = np.minimum((np.clip(scores, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    return result


def bin_edges(bins: int) -> list[tuple[float, float]]:
    return [(i / bins, (i + 1) / bins) for i in range(bins)]


def histogram(scores: np.ndarray, bins: int) -> np.ndarray:
    """M x bins counts: for each model, how many images fall in each bin."""
    idx = bin_index(scores, bins)
    return np.stack([np.bincount(idx[:, m], minlength=bins) for m in range(scores.shape[1])])
