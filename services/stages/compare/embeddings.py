"""REAL vs GEN in embedding space: a 2-D projection, Fréchet distance, KID, a domain classifier's AUC and
cross-set near-duplicates, plus the image properties that could explain a difference on their own.

Every figure is computed on vectors sorted by image hash and, past `MAX_VECTORS` per set, on a seeded sample
of them: the numbers never depend on the order rows came out of SQL or the embedding store.

FD is the Fréchet distance between Gaussians fitted to the two sets' vectors (as FID, on whatever embedding
model the workspace has), with tr sqrt(S1 S2) taken as the nuclear norm of a small matrix rather than a
matrix square root. KID is the unbiased MMD² with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 over
every pair of a seeded sample of up to `KID_MAX` vectors per set (the value clean-fid's subset average
estimates). Both get a 95% bootstrap interval: each set resampled with replacement, `RESAMPLES` times, the
*basic* (reverse percentile) interval from scipy.stats.bootstrap, which corrects FD's upward small-sample
bias (the percentile interval covered a known FD 0% of the time in a simulation at n = 150, d = 16; the
basic one 97.5%). Per category only where both sets have `MIN_CATEGORY_IMAGES` embedded images of it. The
domain classifier is a logistic regression telling A from B, cross-validated: AUC 0.5 means the embedding
cannot tell them apart.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.core.workspace import Workspace

MAX_VECTORS = 5000  # per set, for every figure (a seeded sample past it)
KID_MAX = 2000  # per set for KID's kernel matrices (3 matrices of KID_MAX² doubles)
RESAMPLES = 100  # bootstrap resamples per interval
MIN_CATEGORY_IMAGES = 20  # embedded images of a category in *both* sets before it gets FD and KID


def _centred(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = x - x.mean(axis=0)
    return result


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(A^T A B^T B) for centred data A (n1 x d) and B (n2 x d): the nuclear norm of A B^T, taken on
    whichever is smaller, the n x n Gram matrices or d x d Cholesky factors of the scatter matrices."""
    n1, n2, d = len(a), len(b), a.shape[1]
    if min(n1, n2) <= d:
        m = a @ b.T
        gram = m @ m.T if n1 <= n2 else m.T @ m
        return float(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum())
    factors = []
    for data in (a, b):
        scatter = data.T @ data
        try:
            factors.append(np.linalg.cholesky(scatter + np.eye(d) * 1e-12 * max(np.trace(scatter), 1e-300)))
        except np.linalg.LinAlgError:  # singular despite n > d: a square-root factor from the eigenvectors
            w, v = np.linalg.eigh(scatter)
            factors.append(v * np.sqrt(np.clip(w, 0, None)))
    core = factors[0].T @ factors[1]
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(core @ core.T), 0, None)).sum())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """|mu_x - mu_y|² + tr(S_x) + tr(S_y) - 2 tr sqrt(S_x S_y), sample covariances (n - 1)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = _centred(x), _centred(y)
    n1, n2 = len(x) - 1, len(y) - 1
    mean_term = float(((x.mean(axis=0) - y.mean(axis=0)) ** 2).sum())
    traces = float((a * a).sum()) / n1 + float((b * b).sum()) / n2
    result: float = max(0.0, mean_term + traces - 2 * _trace_sqrt_product(a, b) / np.sqrt(n1 * n2))
    return result


def kernel_inception_distance(
    x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> float:
    """Unbiased MMD² with k(a, b) = (a.b / d + 1)^3, averaged over random subsets (clean-fid's estimator)."""
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


@dataclass
class Kernels:
    """The cubic polynomial kernel matrices of two samples, computed once for KID and its bootstrap."""

    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> Kernels:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        d = x.shape[1]
        return cls((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)

    def mmd2(self, count_x: np.ndarray | None = None, count_y: np.ndarray | None = None) -> float:
        """Unbiased MMD² over every pair; with counts (how often a bootstrap resample drew each row), pairs of
        a row with a copy of itself are left out, as the unbiased estimator leaves out the diagonal."""
        cx = np.ones(len(self.xx)) if count_x is None else count_x.astype(np.float64)
        cy = np.ones(len(self.yy)) if count_y is None else count_y.astype(np.float64)

        def within(k: np.ndarray, c: np.ndarray) -> float:
            m, same = c.sum(), (c * c).sum()
            return float((c @ k @ c - (c * c) @ np.diag(k)) / (m * m - same))

        cross = float(cx @ self.xy @ cy) / (cx.sum() * cy.sum())
        result: float = within(self.xx, cx) + within(self.yy, cy) - 2 * cross
        return result


def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """KID over every pair of the two samples (no subsets)."""
    if min(len(x), len(y)) < 2:
        return float("nan")
    return Kernels.of(x, y).mmd2()


def bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], float], n_x: int, n_y: int, resamples: int, seed: int
) -> tuple[float, float]:
    """95% basic bootstrap interval of statistic(rows of x, rows of y), each set resampled on its own."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.arange(n_x), np.arange(n_y)), statistic, n_resamples=resamples, method="basic", paired=False,
        vectorized=False, confidence_level=0.95, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass
class Distance:
    """FD and KID of two groups of vectors, each with its 95% bootstrap interval."""

    n_a: int
    n_b: int
    fd: float
    fd_ci: tuple[float, float]
    kid: float
    kid_ci: tuple[float, float]


def distances(x: np.ndarray, y: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> Distance:
    """FD on every row given, KID on a seeded sample of up to KID_MAX rows per set; intervals by bootstrap
    (resamples = 0: no interval, NaN bounds)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # many small products: threads only contend (BENCHMARKS.md)
        return _distances(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), resamples, seed)


def _distances(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> Distance:
    rng = np.random.default_rng(seed)
    kx = np.sort(rng.choice(len(x), min(len(x), KID_MAX), replace=False))
    ky = np.sort(rng.choice(len(y), min(len(y), KID_MAX), replace=False))
    kernels = Kernels.of(x[kx], y[ky])
    fd, kid = frechet_distance(x, y), kernels.mmd2()
    nan = (float("nan"), float("nan"))
    if resamples <= 0:
        return Distance(len(x), len(y), fd, nan, kid, nan)
    low, high = bootstrap_interval(lambda i, j: frechet_distance(x[i], y[j]), len(x), len(y), resamples, seed)
    kid_ci = bootstrap_interval(
        lambda i, j: kernels.mmd2(np.bincount(i, minlength=len(kx)), np.bincount(j, minlength=len(ky))),
        len(kx), len(ky), resamples, seed,
    )  # fmt: skip
    return Distance(len(x), len(y), fd, (max(0.0, low), max(0.0, high)), kid, kid_ci)


def domain_auc(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling x from y. Rows should come in a fixed order
    (compare_embeddings sorts them by hash): the folds are seeded, so the same rows give the same AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    data = np.concatenate([x, y])
    target = np.array([0] * len(x) + [1] * len(y))
    folds = int(min(folds, len(x), len(y)))
    if folds < 2:
        return float("nan")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    return float(cross_val_score(model, data, target, cv=cv, scoring="roc_auc").mean())


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
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:limit]


@dataclass
class CategoryDistance:
    category: str
    embedded_a: int  # images of the category with a vector, per set
    embedded_b: int
    distance: Distance | None  # None: too few in a set (see `note`)
    note: str


@dataclass
class EmbeddingComparison:
    key: str
    n_a: int  # vectors used (after sampling)
    n_b: int
    embedded_a: int  # images of the set with a vector for this model
    embedded_b: int
    fd: float
    fd_ci: tuple[float, float]
    kid: float
    kid_ci: tuple[float, float]
    auc: float
    method: str
    coords: np.ndarray
    hashes_a: list[str] = field(default_factory=list)  # the rows of `coords`, A then B
    hashes_b: list[str] = field(default_factory=list)
    per_category: list[CategoryDistance] = field(default_factory=list)
    duplicates: list[tuple[str, str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resamples: int = RESAMPLES


@dataclass(frozen=True)
class EmbeddingModel:
    """A model the Compare page can offer: its vectors' key, the spec that made them, and whether its weights
    are on this machine (so more images can be embedded): True, False, or None when not checked yet."""

    key: str
    spec: Any  # services.io.clip_models.ClipSpec | None (a store without a readable spec)
    label: str
    local: bool | None


def weights_on_disk(spec: Any) -> bool:
    """Whether `spec` can embed here without a network: a checkpoint file that exists, or a pretrained tag in
    the local cache (this one imports open_clip, seconds on a cold process)."""
    from services.io.clip_models import ModelUnavailableError, resolve_weights

    if spec.checkpoint:
        return Path(spec.checkpoint).is_file()
    try:
        resolve_weights(spec)
        return True
    except (ModelUnavailableError, OSError, ValueError):
        return False


def local_models(ws: Workspace, check_pretrained: bool = False) -> list[EmbeddingModel]:
    """Models with vectors in this workspace, plus the configured model when its weights are local; never
    touches the network. Checkpoints are checked at once; pretrained tags only with `check_pretrained`
    (it imports open_clip), else `local` is None. (A stand-in until the shared local-model picker in ui/.)"""
    from services.io.clip_models import ClipSpec
    from services.io.embedding_store import EmbeddingStore, embedding_key, list_embedding_keys

    def checked(spec: ClipSpec) -> bool | None:
        return weights_on_disk(spec) if spec.checkpoint or check_pretrained else None

    out: list[EmbeddingModel] = []
    for key in list_embedding_keys(ws):
        stored = EmbeddingStore(ws, key).read_spec()
        try:
            spec = ClipSpec(**stored) if stored else None
            local = checked(spec) if spec is not None else False
            if local and spec is not None and embedding_key(spec) != key:  # its checkpoint changed: a new key
                local = False
        except (TypeError, ValueError, OSError):  # an unreadable spec or name, or a checkpoint that is gone
            spec, local = None, False
        label = spec.label if spec is not None else key
        out.append(EmbeddingModel(key, spec, label if local is not False else f"{label} (vectors only)", local))
    configured = ClipSpec.from_settings(ws.settings)
    try:
        key = embedding_key(configured)
    except OSError:  # a configured checkpoint that does not exist
        return out
    if key not in {m.key for m in out} and checked(configured):
        out.append(EmbeddingModel(key, configured, configured.label, True))
    return out


def _sample(hashes: list[str], cap: int, seed: int) -> list[str]:
    """The sorted hashes, or a seeded sample of `cap` of them (sorted), so row order never matters."""
    ordered = sorted(set(hashes))
    if len(ordered) <= cap:
        return ordered
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in np.sort(rng.choice(len(ordered), cap, replace=False))]


def vector_coverage(ws: Workspace, key: str, hashes: list[str]) -> int:
    """How many of these images have a vector for `key` (hash lists only, no vector read)."""
    from services.io.embedding_store import EmbeddingStore

    return len(set(hashes) & EmbeddingStore(ws, key).stored_hashes())


def compare_embeddings(
    ws: Workspace,
    key: str,
    a_hashes: list[str],
    b_hashes: list[str],
    labels: dict[str, dict[str, set[str]]] | None = None,
    resamples: int = RESAMPLES,
    max_vectors: int = MAX_VECTORS,
    min_per_category: int = MIN_CATEGORY_IMAGES,
    seed: int = 0,
) -> EmbeddingComparison:
    """Both sets' stored vectors (model `key`) compared; per category too when labels (category -> {"a":
    image hashes, "b": image hashes}) are given."""
    from services.io.embedding_store import EmbeddingStore

    store = EmbeddingStore(ws, key)
    stored = store.stored_hashes()
    have_a, have_b = sorted(set(a_hashes) & stored), sorted(set(b_hashes) & stored)
    if len(have_a) < 2 or len(have_b) < 2:
        raise ValueError(
            f"{key}: {len(have_a)} of {len(set(a_hashes))} images of A and {len(have_b)} of {len(set(b_hashes))} "
            "of B have vectors; embed them first (at least 2 per set)"
        )
    sample_a, sample_b = _sample(have_a, max_vectors, seed), _sample(have_b, max_vectors, seed + 1)
    groups: dict[str, tuple[list[str], list[str], int, int]] = {}
    for category, members in sorted((labels or {}).items()):
        in_a = [h for h in have_a if h in members.get("a", set())]
        in_b = [h for h in have_b if h in members.get("b", set())]
        groups[category] = (
            _sample(in_a, max_vectors, seed),
            _sample(in_b, max_vectors, seed + 1),
            len(in_a),
            len(in_b),
        )
    needed = sorted(set(sample_a) | set(sample_b) | {h for g in groups.values() for h in g[0] + g[1]})
    loaded = store.load(needed)
    row = {h: i for i, h in enumerate(loaded.hashes)}

    def vectors(hashes: list[str]) -> np.ndarray:
        return loaded.vectors[[row[h] for h in hashes]].astype(np.float64)

    x, y = vectors(sample_a), vectors(sample_b)
    dim = x.shape[1]
    warnings = [
        f"{name} has {n} vectors, fewer than the {dim} dimensions: FD is biased upwards and unstable"
        for name, n in (("A", len(x)), ("B", len(y)))
        if n < dim
    ]
    for name, have, used in (("A", have_a, sample_a), ("B", have_b, sample_b)):
        if len(used) < len(have):
            warnings.append(f"{name}: a seeded sample of {len(used):,} of its {len(have):,} vectors is used")
    overall = distances(x, y, resamples, seed)
    if resamples > 0 and overall.fd_ci[1] <= 0:
        warnings.append(
            "FD is within its own small-sample bias of 0 (interval [0, 0]): FD cannot tell these sets apart at "
            "this size"
        )
    elif resamples > 0 and not overall.fd_ci[0] <= overall.fd <= overall.fd_ci[1]:
        warnings.append(
            "FD's estimate lies outside its interval: at this size the plug-in FD is biased upwards and the "
            "(basic) bootstrap interval corrects for that bias; trust the interval"
        )
    coords, method = projection(x, y, seed)
    result = EmbeddingComparison(
        key, len(x), len(y), len(have_a), len(have_b), overall.fd, overall.fd_ci, overall.kid, overall.kid_ci,
        domain_auc(x, y, seed=seed), method, coords, sample_a, sample_b,
        duplicates=near_duplicates(sample_a, x, sample_b, y), warnings=warnings, resamples=resamples,
    )  # fmt: skip
    for category, (ga, gb, total_a, total_b) in groups.items():
        if min(total_a, total_b) < min_per_category:
            note = f"too few: {total_a} and {total_b} embedded images; FD and KID need {min_per_category} in each set"
            result.per_category.append(CategoryDistance(category, total_a, total_b, None, note))
            continue
        found = distances(vectors(ga), vectors(gb), resamples, seed)
        note = "sampled" if len(ga) < total_a or len(gb) < total_b else ""
        if min(len(ga), len(gb)) < dim:
            note = (note + "; " if note else "") + "fewer vectors than dimensions: FD biased upwards"
        result.per_category.append(CategoryDistance(category, total_a, total_b, found, note))
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
    sampled: dict[str, int] = field(default_factory=dict)  # per set: images looked at, of `of`
    of: dict[str, int] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One row per set: images looked at, formats, medians of size and quality (the table to show)."""
        out = []
        for name, rows in self.rows.items():
            if not rows:
                out.append({"set": name, "images": 0})
                continue
            formats: dict[str, int] = {}
            for r in rows:
                formats[r["format"]] = formats.get(r["format"], 0) + 1
            quality = [r["jpeg_quality"] for r in rows if r["jpeg_quality"] is not None]
            out.append({
                "set": name,
                "images": len(rows),
                "formats": ", ".join(f"{k} {v}" for k, v in sorted(formats.items(), key=lambda kv: -kv[1])),
                "median width": float(np.median([r["width"] for r in rows])),
                "median height": float(np.median([r["height"] for r in rows])),
                "median megapixels": round(float(np.median([r["megapixels"] for r in rows])), 3),
                "median kB": round(float(np.median([r["bytes"] for r in rows])) / 1000, 1),
                "median JPEG quality": float(np.median(quality)) if quality else "no JPEG",
            })  # fmt: skip
        return out


def confounds(ws: Workspace, sets: dict[str, list[str]], sample: int = 2000, seed: int = 0) -> Confounds:
    """Image properties per set (a seeded sample of its stored images, by image hash), with warnings when they
    alone separate the sets."""
    from scipy.stats import ks_2samp

    rows: dict[str, list[dict[str, Any]]] = {}
    sampled: dict[str, int] = {}
    of: dict[str, int] = {}
    for index, (name, hashes) in enumerate(sets.items()):
        rows[name] = []
        picked = _sample(hashes, sample, seed + index)
        sampled[name], of[name] = len(picked), len(set(hashes))
        for h in picked:
            r = ws.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (h,)).fetchone()
            if r is None:
                continue
            quality = None
            if r["format"] == "JPEG" and r["path"]:
                try:
                    quality = jpeg_quality(ws.abspath(r["path"]).read_bytes())
                except OSError:  # the file is gone from the workspace: its catalog row still tells the rest
                    quality = None
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
    return Confounds(rows, warnings, sampled, of)
