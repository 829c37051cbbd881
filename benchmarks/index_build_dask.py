"""The vector index build spread over a Dask cluster against the same build in one process (issue 20: "shardable
build on the Dask executor for large stores").

    python benchmarks/index_build_dask.py [--n 1000000] [--dim 512] [--workers 2] [--out ...]

One store of N clustered vectors (as benchmarks/explore.py makes them, shards of 100,000), built twice in one
run, alternating which goes first is not needed (the store is read from the page cache both times after a
warm-up read): `VectorIndex.sync(rebuild=True)` here, then with the list assignments on a Dask LocalCluster of
`--workers` worker processes (one thread each) reading the same workspace. Reported: each build's seconds, the
ratio, and whether every vector landed in the same list (the two indexes are the same index).

On a machine with C cores the local build already uses them (faiss's OpenMP); the cluster pays off when its
workers are other machines. Here it shows what spreading costs on one machine.
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
from explore import SHARD, clustered

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core.settings import load_settings  # noqa: E402
from services.core.workspace import Workspace  # noqa: E402
from services.io.embedding_store import EmbeddingStore  # noqa: E402
from services.stages.explore import vector_index  # noqa: E402
from services.stages.explore.vector_index import VectorIndex  # noqa: E402

KEY = "bench-dask-ivf"


def lists_of(ivf: Any) -> np.ndarray:
    """Each row's list, read from the inverted lists."""
    import faiss

    invlists: Any = faiss.extract_index_ivf(ivf).invlists
    out = np.full(ivf.ntotal, -1, dtype=np.int64)
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            out[faiss.rev_swig_ptr(invlists.get_ids(lst), size)] = lst
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index_build_dask.json")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20_000, args.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws", load_settings(), allow_new_catalog=True)
        store = EmbeddingStore(ws, KEY)
        for start in range(0, args.n, SHARD):
            m = min(SHARD, args.n - start)
            store.write_shard([f"{i:064x}" for i in range(start, start + m)], clustered(m, args.dim, centers, start))
        store.load()  # warm the page cache for both builds
        vector_index._RESIDENT.clear()
        index = VectorIndex(ws, KEY)
        started = time.perf_counter()
        local_state = index.sync(rebuild=True)
        local_s = time.perf_counter() - started
        local_lists = lists_of(vector_index._RESIDENT[index._slot].ivf)
        print(f"local build: {local_s:.1f} s ({local_state['vectors']:,} vectors)", flush=True)
        vector_index._RESIDENT.clear()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
        with cluster, Client(cluster) as client:
            started = time.perf_counter()
            dask_state = index.sync(rebuild=True, executor=client.get_executor())
            dask_s = time.perf_counter() - started
        same = bool((lists_of(vector_index._RESIDENT[index._slot].ivf) == local_lists).all())
        print(f"dask build: {dask_s:.1f} s; same lists: {same}", flush=True)
        ws.close()
    rows = {"n": args.n, "dim": args.dim, "workers": args.workers, "local_s": round(local_s, 1),
            "dask_s": round(dask_s, 1), "ratio_dask_over_local": round(dask_s / local_s, 2),
            "same_lists": same, "nprobe": [local_state["nprobe"], dask_state["nprobe"]]}  # fmt: skip
    print(f"\n{'build':<30} {'seconds':>8}\n{'one process':<30} {local_s:>8.1f}\n"
          f"{f'Dask LocalCluster ({args.workers} workers)':<30} {dask_s:>8.1f}\n"
          f"ratio {dask_s / local_s:.2f}; every vector in the same list: {same}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_description(), **rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
