"""Clusters of two sets together (seed 002's legacy `main.py`, done properly): which kinds of image one set
has more of than the other, and which words describe them.

Items of both sets are embedded together: CLIP image vectors when both sets have them for a model, else
their descriptions as TF-IDF reduced by truncated SVD (offline text embeddings). Clustering is HDBSCAN
(noise kept as its own cluster) or MiniBatchKMeans with k about the square root of n. Per cluster and per
keyword: counts per set, Laplace-smoothed proportions with Wilson intervals, the log2 lift of B against A,
the top TF-IDF keywords of the cluster's descriptions and a few thumbnails.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from services.core.workspace import Workspace
from services.stages.compare.label_sets import LabelSet, iter_set_items, set_image_hashes, wilson

NOISE = -1


@dataclass
class Cluster:
    id: int
    n_a: int
    n_b: int
    share_a: float  # Laplace-smoothed
    share_b: float
    lift: float  # log2(share_b / share_a)
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    keywords: list[str]
    items_a: list[str] = field(default_factory=list)
    items_b: list[str] = field(default_factory=list)


@dataclass
class KeywordShift:
    keyword: str
    n_a: int
    n_b: int
    share_a: float
    share_b: float
    lift: float


@dataclass
class ClusterReport:
    a: str
    b: str
    features: str  # which embedding the clusters were made on
    method: str
    clusters: list[Cluster]
    keywords: list[KeywordShift]
    labels_a: dict[str, int]
    labels_b: dict[str, int]


def smoothed_lift(n_a: int, total_a: int, n_b: int, total_b: int, categories: int) -> tuple[float, float, float]:
    """(share_a, share_b, log2 lift of B over A) with add-one (Laplace) smoothing over `categories` bins."""
    share_a = (n_a + 1) / (total_a + categories)
    share_b = (n_b + 1) / (total_b + categories)
    return share_a, share_b, math.log2(share_b / share_a)


def cluster_labels(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Labels for each row: HDBSCAN (noise = -1) or MiniBatchKMeans with k about sqrt(n)."""
    from sklearn.cluster import HDBSCAN, MiniBatchKMeans

    n = len(features)
    if method in ("auto", "hdbscan") and n >= 10:
        labels = HDBSCAN(min_cluster_size=max(5, n // 40), copy=True).fit_predict(features)
        if method == "hdbscan" or len(set(labels) - {NOISE}) >= 2:
            return labels, "HDBSCAN"
    k = max(2, min(n - 1, round(math.sqrt(n)))) if n > 2 else 1
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=max(256, k * 20))
    return km.fit_predict(features), f"MiniBatchKMeans (k={k})"


def set_texts(ws: Workspace, label_set: LabelSet) -> dict[str, str]:
    """Each item's description: the CSV's description column, or the stored Gemini summary."""
    from services.stages.describe.stage import DESCRIBE_STAGE

    texts: dict[str, str] = {}
    if label_set.source.startswith("csv:") and label_set.dataset_id is not None:
        columns = json.loads(ws.catalog.scalar("SELECT columns FROM datasets WHERE id = ?", (label_set.dataset_id,)))
        lower = [c.strip().lower() for c in columns]
        if "description" in lower:
            at = lower.index("description")
            for r in ws.catalog.conn.execute(
                "SELECT source_key, data FROM dataset_rows WHERE dataset_id = ?", (label_set.dataset_id,)
            ):
                texts[r["source_key"]] = str(json.loads(r["data"])[at])
        return texts
    for r in ws.catalog.conn.execute(
        """SELECT s.image_hash, s.result FROM stage_results s JOIN labels l ON l.item = s.image_hash
           WHERE l.set_id = ? AND s.stage = ? AND s.status = 'ok' GROUP BY s.image_hash""",
        (label_set.id, DESCRIBE_STAGE),
    ):
        texts[r["image_hash"]] = str(json.loads(r["result"])["description"].get("summary", ""))
    return texts


def text_features(texts: list[str], dim: int = 64) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    matrix = TfidfVectorizer(stop_words="english", min_df=1, sublinear_tf=True).fit_transform(texts)
    dim = max(2, min(dim, matrix.shape[1] - 1, len(texts) - 1))
    with warnings.catch_warnings():  # identical descriptions make the explained-variance ratio 0/0: harmless
        warnings.simplefilter("ignore", RuntimeWarning)
        reduced = TruncatedSVD(n_components=dim, random_state=0).fit_transform(matrix)
    return np.asarray(normalize(reduced))


def top_keywords(texts_by_cluster: dict[int, list[str]], n: int = 6) -> dict[int, list[str]]:
    """Class-based TF-IDF: each cluster's descriptions as one document; its highest-weighted terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = [c for c, texts in texts_by_cluster.items() if " ".join(texts).strip()]
    if not ids:
        return {c: [] for c in texts_by_cluster}
    vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform([" ".join(texts_by_cluster[c]) for c in ids]).toarray()
    except ValueError:  # only stop words
        return {c: [] for c in texts_by_cluster}
    terms = np.array(vectorizer.get_feature_names_out())
    out: dict[int, list[str]] = {c: [] for c in texts_by_cluster}
    for row, c in zip(matrix, ids, strict=True):
        order = np.argsort(-row)[:n]
        out[c] = [str(terms[i]) for i in order if row[i] > 0]
    return out


def keyword_shifts(texts_a: list[str], texts_b: list[str], top: int = 30) -> list[KeywordShift]:
    """The most frequent words of both sets, with smoothed document shares and log2 lift of B over A."""
    from sklearn.feature_extraction.text import CountVectorizer

    if not texts_a or not texts_b:
        return []
    vectorizer = CountVectorizer(stop_words="english", binary=True, max_features=top)
    try:
        matrix = vectorizer.fit_transform(texts_a + texts_b)
    except ValueError:
        return []
    counts_a = np.asarray(matrix[: len(texts_a)].sum(axis=0)).ravel()
    counts_b = np.asarray(matrix[len(texts_a) :].sum(axis=0)).ravel()
    shifts = []
    for term, n_a, n_b in zip(vectorizer.get_feature_names_out(), counts_a, counts_b, strict=True):
        share_a, share_b, lift = smoothed_lift(int(n_a), len(texts_a), int(n_b), len(texts_b), 2)
        shifts.append(KeywordShift(str(term), int(n_a), int(n_b), share_a, share_b, lift))
    return sorted(shifts, key=lambda s: -abs(s.lift))


def cluster_sets(
    ws: Workspace, a: LabelSet, b: LabelSet, embedding: str | None = None, method: str = "auto"
) -> ClusterReport:
    """Cluster both sets' items together and measure each cluster's (and keyword's) shift from A to B."""
    items_a, items_b = sorted(iter_set_items(ws, a)), sorted(iter_set_items(ws, b))  # never SQL's row order
    texts = {**set_texts(ws, a), **set_texts(ws, b)}
    features_name = "descriptions (TF-IDF + SVD)"
    vectors = None
    if embedding:
        from services.io.embedding_store import EmbeddingStore

        store = EmbeddingStore(ws, embedding)
        # a CSV set's items are file names: their images' hashes key the vectors (an unlinked item: itself)
        hash_a, hash_b = set_image_hashes(ws, a), set_image_hashes(ws, b)
        keys_a = sorted({hash_a.get(i, i): i for i in items_a}.items())  # (vector key, item), by hash
        keys_b = sorted({hash_b.get(i, i): i for i in items_b}.items())
        ea, eb = store.load([k for k, _ in keys_a]), store.load([k for k, _ in keys_b])
        if len(ea) >= 2 and len(eb) >= 2:
            item_a, item_b = dict(keys_a), dict(keys_b)
            items_a, items_b = [item_a[h] for h in ea.hashes], [item_b[h] for h in eb.hashes]
            vectors = np.concatenate([ea.vectors, eb.vectors])
            features_name = f"CLIP image embeddings ({embedding})"
    if vectors is None:
        items_a = [i for i in items_a if texts.get(i, "").strip()]
        items_b = [i for i in items_b if texts.get(i, "").strip()]
        if len(items_a) + len(items_b) < 4:
            raise ValueError("too few items with embeddings or descriptions to cluster (need at least 4)")
        vectors = text_features([texts[i] for i in items_a + items_b])
    labels, method_name = cluster_labels(vectors, method)
    la, lb = labels[: len(items_a)], labels[len(items_a) :]
    ids = sorted(set(labels.tolist()))
    by_cluster: dict[int, list[str]] = {c: [] for c in ids}
    for item, label in zip(items_a + items_b, labels, strict=True):
        by_cluster[int(label)].append(texts.get(item, ""))
    keywords = top_keywords(by_cluster)
    clusters = []
    for c in ids:
        n_a, n_b = int((la == c).sum()), int((lb == c).sum())
        share_a, share_b, lift = smoothed_lift(n_a, len(items_a), n_b, len(items_b), len(ids))
        clusters.append(
            Cluster(
                c,
                n_a,
                n_b,
                share_a,
                share_b,
                lift,
                wilson(n_a, len(items_a)),
                wilson(n_b, len(items_b)),
                keywords[c],
                [i for i, x in zip(items_a, la, strict=True) if x == c][:8],
                [i for i, x in zip(items_b, lb, strict=True) if x == c][:8],
            )  # fmt: skip
        )
    shifts = keyword_shifts([texts.get(i, "") for i in items_a], [texts.get(i, "") for i in items_b])
    return ClusterReport(
        a.name, b.name, features_name, method_name, sorted(clusters, key=lambda c: -abs(c.lift)), shifts,
        dict(zip(items_a, la.tolist(), strict=True)), dict(zip(items_b, lb.tolist(), strict=True)),
    )  # fmt: skip
