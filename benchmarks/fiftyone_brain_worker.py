"""FiftyOne Brain's side of `fiftyone_brain.py`, run with .venv-fiftyone's Python (its pins clash with the app's).

    .venv-fiftyone/bin/python benchmarks/fiftyone_brain_worker.py --dir DIR --run search|duplicates

Reads DIR/vectors.npy (and DIR/queries.npy), loads one sample a vector into a fresh dataset in the MongoDB
that FIFTYONE_DATABASE_URI names, and writes DIR/fiftyone-<run>-<step>.json as each step ends, so the parent
can time each step out on its own and score both tools the same way. Rows are vector positions; no fiftyone id
leaves here.

- run "search": `compute_similarity(backend="sklearn")` twice: without a brain key (the index in memory only)
  and with one (as FiftyOne's docs build it: the results, embeddings included, saved in MongoDB); then the k
  nearest neighbours of each query, three ways: the public API as documented
  (`index.sort_by_similarity(q, k).values("id")`: its default aggregation="mean" takes an exact
  `pairwise_distances` over every embedding and an argsort, then the sorted view is read from MongoDB); that
  search alone (`index._kneighbors(..., aggregation="mean")`, no MongoDB); and the public API with
  aggregation=None (sklearn's NearestNeighbors, brute force, fitted at the first query on mean-centred,
  normalised embeddings);
- run "duplicates": `compute_near_duplicates(threshold=..., embeddings=...)` from nothing (it builds its own
  sklearn index), its `neighbors_map` (each duplicate -> its nearest kept sample) as groups and pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_mib() -> float:
    """This process's peak memory so far: VmHWM, which starts afresh at exec (ru_maxrss carries the parent's peak
    at fork into the child on Linux, so it would count the parent's copy of the vectors)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(folder: Path, run: str, step: str, payload: dict[str, Any]) -> None:
    """One finished step, written whole (a rename), with this process's peak memory so far."""
    payload["rss_peak_mib"] = peak_rss_mib()
    path = folder / f"fiftyone-{run}-{step}.json"
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--run", choices=["search", "duplicates"], required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine similarity (the app's threshold)")
    args = parser.parse_args()

    import fiftyone as fo  # type: ignore[import-not-found]
    import fiftyone.brain as fob  # type: ignore[import-not-found]

    vectors = np.load(args.dir / "vectors.npy")
    started = time.perf_counter()
    dataset = fo.Dataset(f"bench-{args.run}")
    ids = dataset.add_samples([fo.Sample(filepath=f"/bench/img-{i}.jpg") for i in range(len(vectors))])
    row_of = {str(i): row for row, i in enumerate(ids)}
    emit(args.dir, args.run, "load", {"seconds": time.perf_counter() - started})

    if args.run == "search":
        started = time.perf_counter()  # the index in memory only, as compute_near_duplicates makes its own
        fob.compute_similarity(dataset, embeddings=vectors.copy(), backend="sklearn")
        emit(args.dir, args.run, "build-unsaved", {"seconds": time.perf_counter() - started})
        started = time.perf_counter()  # as the docs build one: under a brain key, saved in the database
        index = fob.compute_similarity(dataset, embeddings=vectors, backend="sklearn", brain_key="bench")
        emit(args.dir, args.run, "build", {"seconds": time.perf_counter() - started})
        queries = np.load(args.dir / "queries.npy")
        paths: dict[str, Any] = {}

        def search(name: str, query: Callable[[np.ndarray], list[Any]]) -> None:
            """Time one way of asking: the first query (it may fit something) apart, then each query."""
            started = time.perf_counter()
            query(queries[0])
            first_s = time.perf_counter() - started
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                ids = query(q)
                times.append(time.perf_counter() - t)
                found.append([row_of[str(i)] for i in ids])
            paths[name] = {"first_s": first_s, "times": times, "found": found}

        # In this order: the sklearn NearestNeighbors fit (the third) centres the index's embeddings in place.
        search("public", lambda q: index.sort_by_similarity(q, k=args.k).values("id"))
        search("index", lambda q: index._kneighbors(query=q, k=args.k, aggregation="mean")[0])
        search("public-nn", lambda q: index.sort_by_similarity(q, k=args.k, aggregation=None).values("id"))
        emit(args.dir, args.run, "query", {"paths": paths})
    else:
        started = time.perf_counter()
        # sklearn's cosine distance is 1 - cosine similarity (on embeddings FiftyOne centres first)
        results = fob.compute_near_duplicates(dataset, threshold=1.0 - args.threshold, embeddings=vectors)
        seconds = time.perf_counter() - started
        groups: list[list[int]] = []
        pairs: list[list[int]] = []
        for kept, duplicates in (results.neighbors_map or {}).items():
            members = [row_of[str(kept)]] + [row_of[str(d)] for d, _ in duplicates]
            groups.append(members)
            pairs.extend([members[0], m] for m in members[1:])
        emit(args.dir, args.run, "duplicates", {"seconds": seconds, "groups": groups, "pairs": pairs,
                                                "duplicate_ids": len(results.duplicate_ids)})  # fmt: skip

    import importlib.metadata

    from fiftyone.core.odm.database import get_db_client  # type: ignore[import-not-found]

    versions = {name: importlib.metadata.version(name) for name in ("fiftyone", "fiftyone-brain", "scikit-learn")}
    versions["mongod"] = get_db_client().server_info()["version"]
    emit(args.dir, args.run, "versions", versions)
    dataset.delete()


if __name__ == "__main__":
    main()
