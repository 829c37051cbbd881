"""REAL vs GEN in embedding space: a 2-D projection, Fréchet distance, KID, a domain classifier's AUC and
cross-set near-duplicates, plus the image properties that could explain a difference on their own.

FD is the Fréchet distance between Gaussians fitted to the two sets' vectors (as FID, on whatever embedding
model the workspace has); KID is the unbiased MMD² with the cubic polynomial kernel, averaged over subsets
(as in clean-fid / dgm-eval). Both are biased when a set has fewer samples than the vector dimension, which
is warned about. The domain classifier is a logistic regression telling A from B, cross-validated: AUC 0.5
means the embedding cannot tell them apart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.workspace import Workspace


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import linalg

    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(cov_x @ cov_y)
    if not np.isfinite(covmean).all():  # a near-singular product: nudge both covariances
        eps = np.eye(cov_x.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_x + eps) @ (cov_y + eps))
    covmean = np.real(covmean)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(covmean))


def kernel_inception_distance(
    x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> float:
    """Unbiased MMD² with k(a, b) = (a.b / d + 1)^3, averaged over random subsets."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    m = min(len(x), len(y), subset_size)
    if m < 2:
        return float("nan")
    total = 0.0
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)].astype(np.float64)
        b = y[rng.choice(len(y), m, replace=False)].astype(np.float64)
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        total += (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total -= 2 * kxy.mean()
    return float(total / subsets)


def domain_auc(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    data = np.concatenate([x, y])
    target = np.array([0] * len(x) + [1] * len(y))
    folds = int(min(folds, len(x), len(y)))
    if folds < 2:
        return float("nan")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(max_iter=2000), data, target, cv=cv, scoring="roc_auc").mean())


def projection(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of both sets together: UMAP when installed, PCA otherwise."""
    data = np.concatenate([x, y])
    try:
        import umap

        return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(data)), "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(data), "PCA"


def near_duplicates(
    a_hashes: list[str], x: np.ndarray, b_hashes: list[str], y: np.ndarray, threshold: float = 0.95, limit: int = 50
) -> list[tuple[str, str, float]]:
    """Pairs across the sets whose vectors' cosine similarity is at least `threshold` (vectors are unit)."""
    pairs: list[tuple[str, str, float]] = []
    for start in range(0, len(x), 4096):
        sims = x[start : start + 4096] @ y.T
        rows, cols = np.nonzero(sims >= threshold)
        pairs.extend((a_hashes[start + r], b_hashes[c], float(sims[r, c])) for r, c in zip(rows, cols, strict=True))
    return sorted(pairs, key=lambda p: -p[2])[:limit]


@dataclass
class EmbeddingComparison:
    key: str
    n_a: int
    n_b: int
    fd: float
    kid: float
    auc: float
    method: str
    coords: np.ndarray
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    duplicates: list[tuple[str, str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compare_embeddings(
    ws: Workspace,
    key: str,
    a_hashes: list[str],
    b_hashes: list[str],
    labels: dict[str, dict[str, set[str]]] | None = None,
) -> EmbeddingComparison:
    """Both sets' stored vectors (model `key`) compared; per category too when labels are given."""
    from services.embeddings import EmbeddingStore

    store = EmbeddingStore(ws, key)
    ea, eb = store.load(a_hashes), store.load(b_hashes)
    if len(ea) < 2 or len(eb) < 2:
        raise ValueError(f"{key}: {len(ea)} and {len(eb)} vectors stored for the two sets; embed them first")
    x, y = ea.vectors.astype(np.float64), eb.vectors.astype(np.float64)
    dim = x.shape[1]
    warnings = [
        f"{name} has {n} vectors, fewer than the {dim} dimensions: FD is biased upwards and unstable"
        for name, n in (("A", len(x)), ("B", len(y)))
        if n < dim
    ]
    coords, method = projection(x, y)
    result = EmbeddingComparison(
        key, len(x), len(y), frechet_distance(x, y), kernel_inception_distance(x, y), domain_auc(x, y), method, coords,
        duplicates=near_duplicates(ea.hashes, ea.vectors, eb.hashes, eb.vectors), warnings=warnings,
    )  # fmt: skip
    for category, members in (labels or {}).items():
        in_a = [i for i, h in enumerate(ea.hashes) if h in members.get("a", set())]
        in_b = [i for i, h in enumerate(eb.hashes) if h in members.get("b", set())]
        if len(in_a) >= 2 and len(in_b) >= 2:
            result.per_category[category] = {
                "n_a": len(in_a), "n_b": len(in_b), "fd": frechet_distance(x[in_a], y[in_b]),
                "kid": kernel_inception_distance(x[in_a], y[in_b], subsets=10),
            }  # fmt: skip
    return result


# --- confounds ---------------------------------------------------------------------------------------

# The mean of the JPEG standard's luminance table (Annex K), which libjpeg scales by quality.
STANDARD_LUMINANCE_MEAN = 57.625


def jpeg_quality(data: bytes) -> int | None:
    """Estimated JPEG quality (1-100) from the luminance quantisation table; None for other formats."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            tables = getattr(img, "quantization", None)
    except OSError:
        return None
    if not tables:
        return None
    table = np.array(sorted(tables.items())[0][1], dtype=float)
    scale = float(table.mean() / STANDARD_LUMINANCE_MEAN) * 100  # the means: independent of table order
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
    return int(min(100, max(1, round(quality))))


@dataclass
class Confounds:
    rows: dict[str, list[dict[str, Any]]]  # per set: format, width, height, megapixels, bytes, jpeg_quality
    warnings: list[str]


def confounds(ws: Workspace, sets: dict[str, list[str]], sample: int = 2000) -> Confounds:
    """Image properties per set (a sample of stored images), with warnings when they alone separate the sets."""
    from scipy.stats import ks_2samp

    rows: dict[str, list[dict[str, Any]]] = {}
    for name, hashes in sets.items():
        rows[name] = []
        for h in hashes[:sample]:
            r = ws.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (h,)).fetchone()
            if r is None:
                continue
            quality = jpeg_quality(ws.abspath(r["path"]).read_bytes()) if r["format"] == "JPEG" and r["path"] else None
            rows[name].append({"format": r["format"], "width": r["width"], "height": r["height"],
                               "megapixels": r["width"] * r["height"] / 1e6, "bytes": r["bytes"],
                               "jpeg_quality": quality})  # fmt: skip
    warnings: list[str] = []
    names = list(rows)
    if len(names) == 2 and all(rows[n] for n in names):
        a, b = rows[names[0]], rows[names[1]]
        formats_a, formats_b = {r["format"] for r in a}, {r["format"] for r in b}
        if formats_a.isdisjoint(formats_b):
            warnings.append(f"the sets share no file format ({sorted(formats_a)} vs {sorted(formats_b)}): a model can "
                            "tell them apart by compression artefacts alone")  # fmt: skip
        for column, label in (("megapixels", "resolution"), ("bytes", "file size"), ("jpeg_quality", "JPEG quality")):
            va = [r[column] for r in a if r[column] is not None]
            vb = [r[column] for r in b if r[column] is not None]
            if len(va) >= 5 and len(vb) >= 5:
                stat = ks_2samp(va, vb)
                if stat.pvalue < 0.01 and stat.statistic > 0.3:
                    warnings.append(f"{label} differs strongly between the sets (KS {stat.statistic:.2f}, p "
                                    f"{stat.pvalue:.1e}): it may explain differences on its own")  # fmt: skip
    return Confounds(rows, warnings)
