"""Explore benchmark (issue 20): the vector index at a million vectors, and the libraries it was chosen from.

    python benchmarks/explore.py [--n 1000000] [--dim 512] [--queries 200] [--add 10000] [--libraries 100000]

Vectors: N L2-normalised float32 vectors around 20,000 random centres (images gather by subject in CLIP
space; no real CLIP vectors at this scale are at hand here, so the recall figures hold for data shaped like
this), written to a fresh workspace's embedding store in shards of 100,000 as the embed job writes them.

Measured, side by side in one run:
- the build (`VectorIndex.sync` on a cold store: training, adding, nprobe calibration, saving), its file
  size and the process's memory;
- k = 10 searches one query at a time: p50/p95 latency and recall@10 against exact search (a blocked matrix
  product) for held-out queries, and the exact search's own latency (the ratio);
- adding `--add` vectors to the built index (a new shard, then `sync`);
- a text query end to end through the API (`POST /search`, in process), encoded by a warm ViT-B-32
  (randomly initialised weights: the same computation as the pretrained model);
- `--libraries M`: faiss IVF-Flat, faiss HNSW32 and usearch (when installed) built and searched on the same M
  vectors: how the index library was chosen.

Goals (issue 20): p95 under 20 ms at recall@10 >= 0.95; text query p95 under 250 ms; build under 10 minutes;
adding 10,000 vectors under 30 s; memory stated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import machine_description  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.io.clip_models import ClipSpec  # noqa: E402
from services.io.embedding_store import EmbeddingStore, embedding_key  # noqa: E402
from services.stages.explore.vector_index import VectorIndex  # noqa: E402

K = 10
SHARD = 100_000


def clustered(n: int, dim: int, centers: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, SHARD):
        m = min(SHARD, n - start)
        x = centers[rng.integers(0, len(centers), m)] + 0.9 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    best_s = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), 200_000):
        scores = queries @ vectors[start : start + 200_000].T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        both_i = np.concatenate([best_i, top + start], axis=1)
        both_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.argsort(-both_s, axis=1)[:, :k]
        best_i, best_s = np.take_along_axis(both_i, order, axis=1), np.take_along_axis(both_s, order, axis=1)
    return best_i


def recall(found: list[set[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def rss_mib() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def vit_b_32(folder: Path) -> ClipSpec:
    import open_clip
    import torch

    checkpoint = folder / "vit-b-32-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
    return ClipSpec(model="ViT-B-32", pretrained=None, checkpoint=str(checkpoint), device="cpu")


def index_run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20_000, args.dim), dtype=np.float32)
    ws = Workspace(folder / "ws", load_settings(), allow_new_catalog=True)
    spec = vit_b_32(folder)
    key = embedding_key(spec)
    store = EmbeddingStore(ws, key)
    store.write_spec({"model": spec.model, "pretrained": None, "checkpoint": spec.checkpoint, "device": "cpu"})
    names = [f"{i:064x}" for i in range(args.n)]
    started = time.perf_counter()
    vectors = clustered(args.n, args.dim, centers, 1)
    for start in range(0, args.n, SHARD):
        store.write_shard(names[start : start + SHARD], vectors[start : start + SHARD])
    print(f"{args.n} vectors written in {time.perf_counter() - started:.0f} s", flush=True)
    queries = clustered(args.queries, args.dim, centers, 2)
    truth = exact_top(vectors, queries, K)

    before = rss_mib()
    index = VectorIndex(ws, key)
    started = time.perf_counter()
    state = index.sync()
    build_s = time.perf_counter() - started
    after = rss_mib()
    print(f"built in {build_s:.0f} s: {state}", flush=True)

    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = index.search(q[None, :], K)[0]
        times.append(time.perf_counter() - t)
        found.append({int(h.image_hash, 16) for h in hits})
    exact_times = []
    for q in queries[:20]:
        t = time.perf_counter()
        scores = vectors @ q
        np.argpartition(-scores, K - 1)[:K]
        exact_times.append(time.perf_counter() - t)

    more = clustered(args.add, args.dim, centers, 3)
    store.write_shard([f"{args.n + i:064x}" for i in range(args.add)], more)
    started = time.perf_counter()
    grown = index.sync()
    add_s = time.perf_counter() - started
    assert grown["vectors"] == args.n + args.add

    from fastapi.testclient import TestClient

    from services.api.app import create_app

    client = TestClient(create_app(ws, "bench"))
    auth = {"Authorization": "Bearer bench"}
    words = ["a red truck at night", "a dog on a beach", "two people talking", "a bowl of fruit", "snow"]
    first = time.perf_counter()
    assert client.post("/search", params={"text": words[0], "k": K}, headers=auth).status_code == 200
    first_s = time.perf_counter() - first
    text_times = []
    for i in range(50):
        t = time.perf_counter()
        answer = client.post("/search", params={"text": words[i % len(words)], "k": K}, headers=auth)
        text_times.append(time.perf_counter() - t)
        assert answer.status_code == 200 and len(answer.json()["results"]) == K
    files = sum(p.stat().st_size for p in index.folder.iterdir())
    ws.close()
    return {
        "vectors": args.n,
        "dim": args.dim,
        "build_s": round(build_s, 1),
        "nprobe": state["nprobe"],
        "index_mib": round(files / 2**20, 1),
        "rss_before_build_mib": before,
        "rss_after_build_mib": after,
        "search_p50_ms": ms(times, 50),
        "search_p95_ms": ms(times, 95),
        "recall_at_10": round(recall(found, truth), 4),
        "exact_p95_ms": ms(exact_times, 95),
        "add_vectors": args.add,
        "add_s": round(add_s, 2),
        "text_first_s": round(first_s, 2),
        "text_p50_ms": ms(text_times, 50),
        "text_p95_ms": ms(text_times, 95),
    }


def library_run(n: int, dim: int) -> list[dict[str, Any]]:
    """faiss IVF-Flat (the product's settings), faiss HNSW32 and usearch on the same vectors."""
    import faiss

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((2000, dim), dtype=np.float32)
    vectors = clustered(n, dim, centers, 1)
    queries = clustered(200, dim, centers, 2)
    truth = exact_top(vectors, queries, K)
    rows = []

    def measure(name: str, build: Any, search: Any) -> None:
        t = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - t
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            ids = search(index, q)
            times.append(time.perf_counter() - t)
            found.append({int(i) for i in ids})
        rows.append({"library": name, "vectors": n, "build_s": round(build_s, 1), "p95_ms": ms(times, 95),
                     "recall_at_10": round(recall(found, truth), 4)})  # fmt: skip
        print(rows[-1], flush=True)

    def ivf() -> Any:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(4 * np.sqrt(n)), faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[:100_000])
        index.add(vectors)
        index.nprobe = 24
        return index

    def hnsw() -> Any:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(vectors)
        index.hnsw.efSearch = 64
        return index

    measure("faiss IVF-Flat (nprobe 24)", ivf, lambda ix, q: ix.search(q[None], K)[1][0])
    measure("faiss HNSW32 (ef 64)", hnsw, lambda ix, q: ix.search(q[None], K)[1][0])
    try:
        from usearch.index import Index
    except ImportError:
        print("usearch is not installed (pip install usearch): left out")
        return rows

    def usearch_f32() -> Any:
        index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)
        index.add(np.arange(n), vectors, threads=os.cpu_count() or 1)
        return index

    measure("usearch HNSW f32 (M 16)", usearch_f32, lambda ix, q: ix.search(q, K).keys)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--add", type=int, default=10_000)
    parser.add_argument("--libraries", type=int, default=100_000, help="vectors for the library comparison (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "explore.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = index_run(args, Path(tmp))
    libraries = library_run(args.libraries, args.dim) if args.libraries else []
    carried = None
    if not libraries and args.out.is_file():  # --libraries 0: keep the comparison an earlier run measured
        earlier = json.loads(args.out.read_text())
        libraries, carried = earlier.get("libraries", []), earlier.get("libraries_date", earlier.get("date"))
    goals = {
        "search p95 under 20 ms at recall@10 >= 0.95": result["search_p95_ms"] < 20 and result["recall_at_10"] >= 0.95,
        "text query p95 under 250 ms": result["text_p95_ms"] < 250,
        "build under 10 minutes": result["build_s"] < 600,
        "adding 10,000 vectors under 30 s": result["add_s"] < 30,
    }
    print(f"\n{'measure':<28}{'value':>14}")
    for name, value in result.items():
        print(f"{name:<28}{value!s:>14}")
    if libraries:
        print(f"\n{'library':<30}{'build s':>10}{'p95 ms':>10}{'recall@10':>11}")
        for row in libraries:
            print(f"{row['library']:<30}{row['build_s']:>10}{row['p95_ms']:>10}{row['recall_at_10']:>11}")
    for goal, met in goals.items():
        print(f"{'met' if met else 'NOT met'}: {goal}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    today = time.strftime("%Y-%m-%d")
    record = {"machine": machine_description(), "date": today, "index": result, "libraries": libraries,
              "libraries_date": carried or today, "goals": goals}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
