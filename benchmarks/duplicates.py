"""Near-duplicate benchmark (issue 20): `near_duplicate_groups` over 100k and 1M vectors with planted copies.

    python benchmarks/duplicates.py [--sizes 100000 1000000] [--dim 512] [--exact-up-to 100000]

Data, per size N: L2-normalised vectors around 20,000 random centres (as `explore.py`: images gather by
subject), of which
- 1% are in planted near-duplicate pairs and 0.3% in planted triples (copies at cosine 0.96-0.995 of an
  original: a re-encode, a resize, a crop), the pairs to find;
- 1% are in "near but different" pairs at cosine 0.88-0.93 (two shots of one scene), which must not be found
  at the threshold 0.95.
They go into a fresh workspace's embedding store (shards of 100,000) and one catalogued dataset.

Measured, per size: the index build (`VectorIndex.sync`), then `near_duplicate_groups(threshold=0.95, k=10)`
through the product (the nprobe that finds copies at the threshold measured, every image's neighbours searched
with it, union-find); recall (planted pairs whose two
images end in one group) and precision (pairs the product joined that were planted); the process's memory.
Up to `--exact-up-to` vectors, the same groups from an exact blocked matrix product in the same run (the
ratio, and the exact answer's own recall and precision as the check that the data is what it says).

Goals (issue 20): 1M under 20 minutes, 100k under 1 minute, recall >= 0.95 and precision >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine_description  # benchmarks/ is on sys.path when run as a script
from explore import SHARD, clustered, rss_mib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.datasets import ensure_dataset  # noqa: E402
from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.io.embedding_store import EmbeddingStore  # noqa: E402
from services.stages.explore.neighbours import near_duplicate_groups  # noqa: E402
from services.stages.explore.vector_index import VectorIndex  # noqa: E402

THRESHOLD = 0.95
KEY = "bench-clip"


def at_cosine(x: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly these cosines to the rows of x (unit): c x + sqrt(1 - c^2) u, u orthogonal to x."""
    u = rng.standard_normal(x.shape).astype(np.float32)
    u -= (u * x).sum(axis=1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    out = cosines[:, None] * x + np.sqrt(1 - cosines[:, None] ** 2) * u
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def planted_data(n: int, dim: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """N vectors, the planted duplicate pairs (row ids, every pair within a pair or triple)."""
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((20_000, dim), dtype=np.float32)
    pairs, triples, near = n // 200, n // 1000, n // 200
    originals = pairs + triples + near
    copies = pairs + 2 * triples + near
    vectors = np.empty((n, dim), dtype=np.float32)
    vectors[: n - copies] = clustered(n - copies, dim, centers, 11)
    base = n - copies  # copies go at the end; their originals are the first `originals` rows
    dup_cos = rng.uniform(0.96, 0.995, pairs + 2 * triples).astype(np.float32)
    near_cos = rng.uniform(0.88, 0.93, near).astype(np.float32)
    sources = np.concatenate([np.arange(pairs), np.repeat(np.arange(pairs, pairs + triples), 2)])
    vectors[base : base + len(sources)] = at_cosine(vectors[sources], dup_cos, rng)
    vectors[base + len(sources) :] = at_cosine(vectors[pairs + triples : originals], near_cos, rng)
    truth = [(int(s), base + i) for i, s in enumerate(sources)]
    for t in range(triples):  # the two copies of a triple's original are near each other too
        a = base + pairs + 2 * t
        truth.append((a, a + 1))
    return vectors, truth


def score(groups: list[set[int]], found_pairs: set[tuple[int, int]], truth: list[tuple[int, int]]) -> dict[str, float]:
    group_of = {m: g for g, members in enumerate(groups) for m in members}
    together = sum(1 for a, b in truth if a in group_of and group_of.get(a) == group_of.get(b))
    planted = {tuple(sorted(p)) for p in truth}
    right = sum(1 for p in found_pairs if p in planted)
    return {
        "recall": round(together / len(truth), 4),
        "precision": round(right / len(found_pairs), 4) if found_pairs else 0.0,
    }


def exact_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair at cosine >= threshold, by a blocked matrix product (the reference)."""
    out: set[tuple[int, int]] = set()
    for start in range(0, len(vectors), 2048):
        scores = vectors[start : start + 2048] @ vectors.T
        rows, cols = np.nonzero(scores >= threshold)
        out.update((int(r + start), int(c)) for r, c in zip(rows, cols, strict=True) if r + start < c)
    return out


def components(pairs: set[tuple[int, int]]) -> list[set[int]]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return []
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    nodes = np.unique(np.concatenate([a, b]))
    pos = {int(x): i for i, x in enumerate(nodes)}
    graph = coo_matrix((np.ones(len(a)), ([pos[int(x)] for x in a], [pos[int(x)] for x in b])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, set[int]] = {}
    for node, label in zip(nodes, labels, strict=True):
        groups.setdefault(int(label), set()).add(int(node))
    return list(groups.values())


def catalogue_vectors(ws: Workspace, vectors: np.ndarray) -> list[str]:
    """The vectors written to the store as an embed job writes them (shards of SHARD) and catalogued as one
    dataset, `bench`; each image's hash is its row number. Returns the hashes, in row order."""
    store = EmbeddingStore(ws, KEY)
    store.write_spec({"model": "bench", "pretrained": None, "checkpoint": None, "device": "cpu"})
    names = [f"{i:064x}" for i in range(len(vectors))]
    for start in range(0, len(vectors), SHARD):
        store.write_shard(names[start : start + SHARD], vectors[start : start + SHARD])
    ds = ensure_dataset(ws.catalog, "bench", "urls", "bench", [])
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT INTO dataset_members (dataset_id, image_hash, seq, name, file_name) VALUES (?, ?, ?, ?, ?)",
            ((ds.id, h, i, f"img-{i}.jpg", f"img-{i}.jpg") for i, h in enumerate(names)),
        )
    return names


def run(n: int, dim: int, exact_up_to: int, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    vectors, truth = planted_data(n, dim)
    ws = Workspace(folder / f"ws-{n}", load_settings(), allow_new_catalog=True)
    catalogue_vectors(ws, vectors)
    print(f"{n}: data written in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    state = VectorIndex(ws, KEY).sync()
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    groups = near_duplicate_groups(ws, KEY, ["bench"], THRESHOLD, 10)
    groups_s = time.perf_counter() - started
    rss = rss_mib()
    pair_nprobe = VectorIndex(ws, KEY).pair_nprobe(THRESHOLD)  # what the groups read (measured at their start)
    found = [{int(h, 16) for h in g.members} for g in groups]
    found_pairs = {tuple(sorted((int(a, 16), int(b, 16)))) for g in groups for a, b, _ in g.pairs}
    result: dict[str, Any] = {
        "vectors": n,
        "planted_pairs": len(truth),
        "index": state["mode"],
        "nprobe": state["nprobe"],
        "pair_nprobe": pair_nprobe,
        "build_s": round(build_s, 1),
        "groups_s": round(groups_s, 1),
        "total_s": round(build_s + groups_s, 1),
        "groups": len(groups),
        **score(found, found_pairs, truth),  # type: ignore[arg-type]
        "rss_mib": rss,
    }
    print(f"{n}: {result}", flush=True)
    if n <= exact_up_to:
        started = time.perf_counter()
        reference = exact_pairs(vectors, THRESHOLD)
        exact_groups = components(reference)
        result["exact_s"] = round(time.perf_counter() - started, 1)
        checked = score(exact_groups, reference, truth)
        result["exact_recall"], result["exact_precision"] = checked["recall"], checked["precision"]
        result["same_groups_as_exact"] = sorted(map(sorted, found)) == sorted(map(sorted, exact_groups))
        print(f"{n}: exact {result['exact_s']} s, {checked}", flush=True)
    ws.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--exact-up-to", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "duplicates.json")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run(n, args.dim, args.exact_up_to, Path(tmp)))
    print(f"\n{'vectors':>9} {'build s':>8} {'groups s':>9} {'total s':>8} {'recall':>7} {'precision':>9} "
          f"{'exact s':>8} {'RSS MiB':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['vectors']:>9,} {r['build_s']:>8} {r['groups_s']:>9} {r['total_s']:>8} {r['recall']:>7} "
              f"{r['precision']:>9} {r.get('exact_s', '-'):>8} {r['rss_mib']:>8}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_description(), "runs": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
