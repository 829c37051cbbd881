"""What the nearest neighbours of every image say: near-duplicate groups, outliers, and leaks between datasets.

All three read each image's k nearest stored neighbours from the model's vector index (`vector_index.py`), a
block of queries at a time, restricted to the datasets asked about:
- near-duplicates: pairs at cosine >= the threshold, joined into groups (an image near two others joins both
  into one group); exact copies are one image in the catalog already (one content hash) and are not pairs;
- outliers (uniqueness): 1 - the mean cosine of an image's k nearest neighbours, high for an image unlike the
  rest of its dataset;
- leaks: images of one dataset with a near-duplicate in another (a test set and its training set).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from services.core.datasets import dataset_id_of
from services.core.workspace import Workspace
from services.stages.explore.vector_index import Hit, VectorIndex

QUERY_BATCH = 1024
DEFAULT_THRESHOLD = 0.95  # cosine; calibrate on your data: `duplicates --threshold`
MAX_K = 100


@dataclass(frozen=True)
class DuplicateGroup:
    members: list[str]  # image hashes, the group's most connected first
    pairs: list[tuple[str, str, float]]  # the near-duplicate pairs (CLIP) that joined it, with their cosine
    edited: list[tuple[str, str, int]] = field(default_factory=list)  # pairs by perceptual hash, with bits apart

    def describe(self) -> str:
        """ "cosine up to 0.9931", "perceptual hashes 2 bits apart", or both."""
        parts = [f"cosine up to {self.pairs[0][2]:.4f}"] if self.pairs else []
        if self.edited:
            parts.append(f"perceptual hashes {min(p[2] for p in self.edited)} bits apart")
        return ", ".join(parts)


@dataclass(frozen=True)
class Outlier:
    image_hash: str
    uniqueness: float  # 1 - mean cosine of the k nearest neighbours
    nearest: float  # cosine of the nearest one


def members_of(ws: Workspace, datasets: list[str]) -> list[str]:
    """The stored images of these datasets, each once, in input order."""
    out: dict[str, None] = {}
    for name in datasets:
        rows = ws.catalog.query(
            "SELECT image_hash FROM dataset_members WHERE dataset_id = ? ORDER BY seq",
            (dataset_id_of(ws.catalog, name),),
        )
        out.update((r[0], None) for r in rows)
    return list(out)


def neighbours(
    index: VectorIndex, hashes: list[str], k: int, among: set[str] | None, nprobe: int | None = None
) -> Iterator[tuple[str, list[Hit]]]:
    """Each image's k nearest stored neighbours (itself left out), among `among` when given."""
    for start in range(0, len(hashes), QUERY_BATCH):
        present, vectors = index.vectors_of(hashes[start : start + QUERY_BATCH])
        if not present:
            continue
        for image_hash, hits in zip(present, index.search(vectors, k + 1, among, nprobe), strict=True):
            yield image_hash, [h for h in hits if h.image_hash != image_hash][:k]


def near_duplicate_groups(
    ws: Workspace,
    key: str,
    datasets: list[str],
    threshold: float = DEFAULT_THRESHOLD,
    k: int = 10,
    phash_distance: int | None = None,
) -> list[DuplicateGroup]:
    """Groups of images at cosine >= threshold within (and across) the datasets, largest first; with
    `phash_distance`, images whose perceptual hashes are at most that many bits apart join them too (edited
    copies: resized, re-encoded, cropped a little)."""
    _check(threshold, k)
    hashes = members_of(ws, datasets)
    index = _synced(ws, key)
    nprobe = index.pair_nprobe(threshold)  # a pair over the threshold is found reading few lists
    among = set(hashes)
    parent: dict[str, str] = {}

    def root(h: str) -> str:  # union-find with path compression
        path = []
        while parent.get(h, h) != h:
            path.append(h)
            h = parent[h]
        for p in path:
            parent[p] = h
        return h

    def union(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[rb] = ra

    pairs: dict[tuple[str, str], float] = {}
    for image_hash, hits in neighbours(index, hashes, k, among, nprobe):
        for hit in hits:
            if hit.score < threshold:
                break
            a, b = sorted((image_hash, hit.image_hash))
            pairs[(a, b)] = max(pairs.get((a, b), -1.0), hit.score)
            union(a, b)
    edited: list[tuple[str, str, int]] = []
    if phash_distance is not None:
        from services.stages.explore.perceptual import phash_pairs, phashes

        edited = phash_pairs(phashes(ws, hashes), phash_distance)
        for a, b, _ in edited:
            union(a, b)
    groups: dict[str, list[tuple[str, str, float]]] = {}
    edited_in: dict[str, list[tuple[str, str, int]]] = {}
    for (a, b), score in pairs.items():
        groups.setdefault(root(a), []).append((a, b, round(score, 5)))
    for a, b, bits in edited:
        edited_in.setdefault(root(a), []).append((a, b, bits))
    out = []
    for group_root in set(groups) | set(edited_in):
        group_pairs, group_edited = groups.get(group_root, []), edited_in.get(group_root, [])
        degree: dict[str, int] = {}
        for a, b, _ in [*group_pairs, *group_edited]:
            degree[a] = degree.get(a, 0) + 1
            degree[b] = degree.get(b, 0) + 1
        members = sorted(degree, key=lambda h: (-degree[h], h))
        out.append(DuplicateGroup(members, sorted(group_pairs, key=lambda p: -p[2]), sorted(group_edited,
                                  key=lambda p: p[2])))  # fmt: skip
    return sorted(out, key=lambda g: (-len(g.members), g.members[0]))


def outliers(ws: Workspace, key: str, datasets: list[str], k: int = 10) -> list[Outlier]:
    """Every image's uniqueness within the datasets, the most unusual first."""
    _check(0.0, k)
    hashes = members_of(ws, datasets)
    index = _synced(ws, key)
    found = []
    for image_hash, hits in neighbours(index, hashes, k, set(hashes)):
        if hits:
            scores = np.array([h.score for h in hits], dtype=np.float64)
            found.append(Outlier(image_hash, round(float(1 - scores.mean()), 5), round(float(scores[0]), 5)))
    return sorted(found, key=lambda o: (-o.uniqueness, o.image_hash))


def leaks(
    ws: Workspace, key: str, dataset: str, against: str, threshold: float = DEFAULT_THRESHOLD
) -> list[tuple[str, str, float]]:
    """(image of `dataset`, its nearest image of `against`, cosine) where that cosine is >= threshold; an image
    in both (one content hash) is a leak at 1.0."""
    _check(threshold, 1)
    mine, theirs = members_of(ws, [dataset]), members_of(ws, [against])
    shared = set(mine) & set(theirs)
    out = [(h, h, 1.0) for h in mine if h in shared]
    index = _synced(ws, key)
    nprobe = index.pair_nprobe(threshold)
    for image_hash, hits in neighbours(index, [h for h in mine if h not in shared], 1, set(theirs), nprobe):
        if hits and hits[0].score >= threshold:
            out.append((image_hash, hits[0].image_hash, round(hits[0].score, 5)))
    return sorted(out, key=lambda leak: -leak[2])


def _synced(ws: Workspace, key: str) -> VectorIndex:
    """The model's index, brought up to its store once for the whole operation."""
    index = VectorIndex(ws, key)
    index.sync()
    return index


def _check(threshold: float, k: int) -> None:
    from services.stages.explore.search import SearchError

    if not -1.0 <= threshold <= 1.0:
        raise SearchError(f"a cosine threshold is between -1 and 1 ({threshold} given)")
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k is 1 to {MAX_K} ({k} given)")
