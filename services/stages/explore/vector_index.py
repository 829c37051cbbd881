"""A nearest-neighbour index per embedding model, over the embedding store's vectors, kept in the workspace.

Below `EXACT_BELOW` vectors a search is exact (one matrix product: as fast as an index at that size, and
always right). Above, a faiss IVF-Flat index (MIT licence; chosen by measurement, BENCHMARKS.md "Explore"):
its build is a k-means over a sample plus one assignment per vector, so it takes a minute where graph indexes
take many, and new vectors are added without a rebuild. `nprobe` (how many lists a query reads) is calibrated
at build so recall@10 against exact search on stored vectors is at least `TARGET_RECALL`.

Files, in `indexes/<embedding key>/`: `ivf.faiss` (the index), `rows.hashes` (row id -> image hash, one per
line) and `state.json` (the store shards included, the row count, nprobe), written in that order, so a state
never names rows the other files lack, by one process at a time (an exclusive lock on `.lock`). `sync` adds
the vectors of new shards; a shard that disappeared (the store was compacted) rebuilds. Vectors are
L2-normalised, so the inner product is the cosine similarity.

A build can be spread over an executor (a Dask cluster: `search-index --rebuild --executor dask://...`): the
k-means runs here on the sample, then each store shard's vectors are assigned to their lists where the shard
is (`assign_lists`, the n x lists x dim part of the work), and the lists are filled here from those
assignments: the same index a local build makes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.core.workspace import Workspace, write_atomic
from services.io.embedding_store import EmbeddingStore, list_embedding_keys

log = logging.getLogger(__name__)

EXACT_BELOW = 50_000  # vectors: an exact search of 50k x 512 takes about 8 ms here
TARGET_RECALL = 0.96  # the goal is 0.95; a margin for queries unlike the stored vectors
TRAIN_SAMPLE = 100_000
QUERY_BLOCK = 256  # queries per matrix product in an exact search (256 x 50k scores: 51 MB)
TRAIN_PER_LIST = 40  # below 39 training points per list faiss warns, and the lists split neighbours apart
NPROBES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512, 1024)
PAIR_TRIALS = 400  # copies searched to measure `pair_nprobe`
PAIR_RECALL = 0.995  # share of them that must find their original
PAIR_K = 10  # within the first 10 results (the k near-duplicate search reads)
STATE = "state.json"
INDEX_FILE = "ivf.faiss"
ROWS_FILE = "rows.hashes"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Hit:
    image_hash: str
    score: float  # cosine similarity


@dataclass
class _Loaded:
    shards: tuple[str, ...]
    hashes: list[str]
    row_of: dict[str, int]
    vectors: np.ndarray | None  # exact mode: every vector (rows as `hashes`)
    ivf: Any  # the faiss index above EXACT_BELOW, else None
    nprobe: int
    pair_nprobes: dict[float, int] = field(default_factory=dict)  # threshold -> nprobe (`pair_nprobe`)


_RESIDENT: dict[tuple[str, str], _Loaded] = {}  # (workspace, key) -> what a search needs, kept per process
_LOCK = threading.Lock()


class VectorIndex:
    """Search one embedding model's vectors. `sync` once per operation to see new shards (it lists the store);
    searches use the index as this process holds it, synced first only when it holds none."""

    def __init__(self, ws: Workspace, key: str) -> None:
        if key not in list_embedding_keys(ws):
            raise LookupError(f"no vectors for embedding model {key!r} in this workspace (embed a dataset first)")
        self.ws = ws
        self.key = key
        self.store = EmbeddingStore(ws, key)
        self.folder = ws.root / "indexes" / key

    # --- building ----------------------------------------------------------------------------------------

    def sync(self, *, rebuild: bool = False, executor: Executor | None = None) -> dict[str, Any]:
        """Bring the index up to the store: add new shards' vectors, rebuild when shards went away (or when
        asked), nothing when the store is unchanged. `executor`: where a build assigns the vectors to lists
        (a Dask cluster's executor), else here. Returns the state (count, mode, nprobe, seconds)."""
        with _LOCK:
            return self._sync(rebuild, executor)

    def _sync(self, rebuild: bool = False, executor: Executor | None = None) -> dict[str, Any]:
        import time

        started = time.perf_counter()
        shards = tuple(self.store.shards())
        resident = None if rebuild else _RESIDENT.get(self._slot)
        if resident is not None and resident.shards == shards:
            return self._state_of(resident, 0.0)
        total = self.store.count()
        if total < EXACT_BELOW:
            everything = self.store.load()
            loaded = _Loaded(shards, everything.hashes, _rows(everything.hashes), everything.vectors, None, 0)
        else:
            with _files_lock(self.folder):  # one process at a time reads then writes the index's files
                shards = tuple(self.store.shards())
                if resident is not None and resident.ivf is not None and set(resident.shards) <= set(shards):
                    loaded = self._extend(resident, shards)  # the index in memory, grown by the new shards
                else:
                    saved = None if rebuild else self._read_saved(shards)  # what another process built or grew
                    loaded = self._extend(saved, shards) if saved is not None else self._build(shards, executor)
        _RESIDENT[self._slot] = loaded
        return self._state_of(loaded, time.perf_counter() - started)

    def _build(self, shards: tuple[str, ...], executor: Executor | None = None) -> _Loaded:
        import faiss

        everything = self.store.load()
        n, dim = everything.vectors.shape
        nlist = int(min(65_536, max(64, 4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        size = min(n, max(TRAIN_SAMPLE, TRAIN_PER_LIST * nlist))  # faiss's k-means wants ~40 points a list
        sample = everything.vectors[np.sort(rng.choice(n, size=size, replace=False))]
        ivf.train(np.ascontiguousarray(sample))
        if executor is None:
            for start in range(0, n, 100_000):
                ivf.add(np.ascontiguousarray(everything.vectors[start : start + 100_000]))
        else:
            lists = self._assign_on(executor, shards, ivf.quantizer.reconstruct_n(0, nlist), everything.hashes)
            for start in range(0, n, 100_000):
                part = np.ascontiguousarray(everything.vectors[start : start + 100_000])
                assigned = np.ascontiguousarray(lists[start : start + 100_000])
                ivf.add_core(len(part), faiss.swig_ptr(part), None, faiss.swig_ptr(assigned))
        ivf.make_direct_map()  # row -> vector, for "more like this" and filtered exact searches
        nprobe = _calibrate(ivf, everything.vectors, rng)
        loaded = _Loaded(shards, everything.hashes, _rows(everything.hashes), None, ivf, nprobe)
        self._save(loaded, rewrite_rows=True)
        log.info("index %s built: %d vectors, %d lists, nprobe %d", self.key, n, nlist, nprobe)
        return loaded

    def _assign_on(
        self, executor: Executor, shards: tuple[str, ...], centroids: np.ndarray, hashes: list[str]
    ) -> np.ndarray:
        """Each vector's list, assigned a store shard per task on the executor, in the rows' order (each hash's
        first shard, as the store loads them)."""
        seen: set[str] = set()
        ordered: list[str] = []
        plan: list[tuple[str, list[int]]] = []
        for name in shards:
            shard_hashes = (self.store.folder / f"{name}.hashes").read_text(encoding="ascii").split()
            keep = []
            for i, h in enumerate(shard_hashes):
                if h not in seen:
                    seen.add(h)
                    keep.append(i)
                    ordered.append(h)
            plan.append((name, keep))
        futures = [executor.submit(assign_lists, str(self.store.folder), name, keep, centroids) for name, keep in plan]
        lists = np.concatenate([np.asarray(f.result(), dtype=np.int64) for f in futures] or [np.zeros(0, np.int64)])
        if ordered != hashes or len(lists) != len(hashes):  # the store changed under the build: build again
            raise RuntimeError(f"index {self.key}: the store changed during the build ({len(lists)} assignments "
                               f"for {len(hashes)} vectors); run it again")  # fmt: skip
        return lists

    def _read_saved(self, shards: tuple[str, ...]) -> _Loaded | None:
        """The index as the workspace keeps it, when it covers only shards the store still has (else None: the
        store was compacted or the files are not whole, and the index is built again)."""
        import faiss

        state = self._read_state()
        if state is None or not set(state["shards"]) <= set(shards) or not (self.folder / INDEX_FILE).is_file():
            return None
        ivf: Any = faiss.read_index(str(self.folder / INDEX_FILE))
        lines = (self.folder / ROWS_FILE).read_text(encoding="ascii").split()
        count = int(state["count"])
        if ivf.ntotal != count or len(lines) < count:
            return None
        if len(lines) > count:  # rows appended by a write the state never confirmed: cut them
            write_atomic(self.folder / ROWS_FILE, ("\n".join(lines[:count]) + "\n").encode("ascii"))
        ivf.make_direct_map()
        hashes = lines[:count]
        return _Loaded(tuple(state["shards"]), hashes, _rows(hashes), None, ivf, int(state["nprobe"]))

    def _extend(self, base: _Loaded, shards: tuple[str, ...]) -> _Loaded:
        """`base` grown by the vectors of shards it does not hold (images it has are skipped); saved when it
        grew."""
        hashes, row_of, ivf = base.hashes, base.row_of, base.ivf
        added: list[str] = []
        for name in [s for s in shards if s not in set(base.shards)]:
            shard_hashes = (self.store.folder / f"{name}.hashes").read_text(encoding="ascii").split()
            matrix = np.load(self.store.folder / f"{name}.npy", mmap_mode="r")
            keep = [i for i, h in enumerate(shard_hashes) if h not in row_of]
            for i in keep:
                row_of[shard_hashes[i]] = len(hashes)
                hashes.append(shard_hashes[i])
                added.append(shard_hashes[i])
            if keep:
                ivf.add(np.ascontiguousarray(matrix[keep], dtype=np.float32))
        loaded = _Loaded(shards, hashes, row_of, None, ivf, base.nprobe)
        if added or set(base.shards) != set(shards):
            self._save(loaded, rewrite_rows=False, added=added)
        return loaded

    def _save(self, loaded: _Loaded, *, rewrite_rows: bool, added: list[str] | None = None) -> None:
        import faiss

        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.folder / f".{INDEX_FILE}.part"
        faiss.write_index(loaded.ivf, str(part))
        part.replace(self.folder / INDEX_FILE)
        if rewrite_rows:
            write_atomic(self.folder / ROWS_FILE, ("\n".join(loaded.hashes) + "\n").encode("ascii"))
        elif added:
            with open(self.folder / ROWS_FILE, "a", encoding="ascii") as fh:  # rows past `count` are ignored
                fh.write("\n".join(added) + "\n")
        state = {"shards": list(loaded.shards), "count": len(loaded.hashes), "nprobe": loaded.nprobe}
        write_atomic(self.folder / STATE, json.dumps(state).encode("utf-8"))

    def _read_state(self) -> dict[str, Any] | None:
        path = self.folder / STATE
        try:
            state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and {"shards", "count", "nprobe"} <= set(state) else None

    @property
    def _slot(self) -> tuple[str, str]:
        return (str(self.ws.root), self.key)

    @staticmethod
    def _state_of(loaded: _Loaded, seconds: float) -> dict[str, Any]:
        return {
            "vectors": len(loaded.hashes),
            "mode": "exact" if loaded.ivf is None else "ivf",
            "nprobe": loaded.nprobe,
            "seconds": round(seconds, 3),
        }

    # --- searching ---------------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed: set[str] | None = None, nprobe: int | None = None
    ) -> list[list[Hit]]:
        """The `k` nearest stored images of each query vector (L2-normalised), best first; only images in
        `allowed` when given (a dataset's), searched exactly over them when they are few. `nprobe`: lists read
        per query instead of the calibrated number (`pair_nprobe` for near-duplicates)."""
        loaded = self._held()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if allowed is not None and (loaded.ivf is None or len(allowed) < EXACT_BELOW):
            rows = np.fromiter((loaded.row_of[h] for h in allowed if h in loaded.row_of), dtype=np.int64)
            rows.sort()
            return self._exact(loaded, queries, k, rows)
        if loaded.ivf is None:
            return self._exact(loaded, queries, k, None)
        return self._approximate(loaded, queries, k, allowed, nprobe or loaded.nprobe)

    def vector_of(self, image_hash: str) -> np.ndarray | None:
        """A stored image's vector (for "more like this")."""
        loaded = self._held()
        row = loaded.row_of.get(image_hash)
        if row is None:
            return None
        if loaded.vectors is not None:
            return np.array(loaded.vectors[row])
        return np.asarray(loaded.ivf.reconstruct(row), dtype=np.float32)

    def vectors_of(self, hashes: list[str]) -> tuple[list[str], np.ndarray]:
        """The stored vectors of these images (those that have one, in the order given)."""
        loaded = self._held()
        present = [h for h in hashes if h in loaded.row_of]
        rows = np.array([loaded.row_of[h] for h in present], dtype=np.int64)
        if loaded.vectors is not None:
            return present, np.asarray(loaded.vectors[rows], dtype=np.float32)
        if not len(rows):
            return present, np.zeros((0, loaded.ivf.d), dtype=np.float32)
        return present, np.asarray(loaded.ivf.reconstruct_batch(rows), dtype=np.float32)

    def _held(self) -> _Loaded:
        loaded = _RESIDENT.get(self._slot)
        if loaded is None:
            self.sync()
            loaded = _RESIDENT[self._slot]
        return loaded

    def _exact(self, loaded: _Loaded, queries: np.ndarray, k: int, rows: np.ndarray | None) -> list[list[Hit]]:
        if loaded.vectors is None:  # the index holds the vectors: the rows' back through its direct map
            picked = rows if rows is not None else np.arange(len(loaded.hashes))
            matrix = loaded.ivf.reconstruct_batch(picked) if len(picked) else np.zeros((0, queries.shape[1]))
            names = [loaded.hashes[r] for r in picked]
        else:
            matrix = loaded.vectors if rows is None else loaded.vectors[rows]
            names = loaded.hashes if rows is None else [loaded.hashes[r] for r in rows]
        if len(names) == 0:
            return [[] for _ in queries]
        k = min(k, len(names))
        out = []
        for start in range(0, len(queries), QUERY_BLOCK):  # a block of queries at a time: bounded memory
            scores = queries[start : start + QUERY_BLOCK] @ matrix.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for q in range(len(scores)):
                best = top[q][np.argsort(-scores[q, top[q]])]
                out.append([Hit(names[i], float(scores[q, i])) for i in best])
        return out

    def pair_nprobe(self, threshold: float) -> int | None:
        """The fewest lists a query must read to find a stored vector from a copy of it at cosine `threshold`
        (in PAIR_RECALL of trials), for near-duplicates: a pair that close is almost always in the same or a
        neighbouring list, so this is far below the calibrated nprobe (which ranks whole neighbourhoods). None
        when searches are exact. Measured per threshold, on copies of stored vectors in random directions."""

        loaded = self._held()
        if loaded.ivf is None:
            return None
        cached = loaded.pair_nprobes.get(threshold)
        if cached is not None:
            return cached
        rng = np.random.default_rng(1)
        picks = np.sort(rng.choice(len(loaded.hashes), size=min(PAIR_TRIALS, len(loaded.hashes)), replace=False))
        originals = np.asarray(loaded.ivf.reconstruct_batch(picks), dtype=np.float32)
        copies = at_cosine(originals, max(threshold, -1.0), rng)
        found_at = loaded.nprobe
        for nprobe in (1, 2, 4, *NPROBES):
            if nprobe >= loaded.nprobe:
                break
            _, ids = loaded.ivf.search(copies, PAIR_K, params=_probing(nprobe, loaded.ivf.nlist))
            if np.mean([p in row for p, row in zip(picks, ids, strict=True)]) >= PAIR_RECALL:
                found_at = nprobe
                break
        loaded.pair_nprobes[threshold] = found_at
        return found_at

    def _approximate(
        self, loaded: _Loaded, queries: np.ndarray, k: int, allowed: set[str] | None, nprobe: int
    ) -> list[list[Hit]]:
        params = _probing(nprobe, loaded.ivf.nlist)  # per call, not on the index: threads share the index
        want = k
        while True:  # with a filter, ask for more until k pass it (or everything was asked)
            scores, ids = loaded.ivf.search(queries, min(want, len(loaded.hashes)), params=params)
            out = [
                [Hit(loaded.hashes[i], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
                for row_s, row_i in zip(scores, ids, strict=True)
            ]
            if allowed is not None:
                out = [[h for h in hits if h.image_hash in allowed][:k] for hits in out]
            read_all = (ids < 0).any(axis=1)  # fewer results than asked: every vector in the lists read was seen
            enough = allowed is None or all(len(h) >= k or r for h, r in zip(out, read_all, strict=True))
            if enough or want >= len(loaded.hashes):
                return [hits[:k] for hits in out]
            want *= 4


@contextmanager
def _files_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on an index's folder across processes (the worker, the dashboard, a CLI may sync the
    same index at once: one builds, the others then read what it saved instead of building a second copy)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def assign_lists(folder: str, shard: str, keep: list[int], centroids: np.ndarray) -> np.ndarray:
    """On a worker: the IVF list (the nearest centroid by inner product) of each kept row of one store shard,
    read from the shared workspace."""
    import faiss

    matrix = np.load(Path(folder) / f"{shard}.npy", mmap_mode="r")
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty(len(keep), dtype=np.int64)
    for start in range(0, len(keep), 50_000):
        rows = np.ascontiguousarray(matrix[keep[start : start + 50_000]], dtype=np.float32)
        out[start : start + len(rows)] = quantizer.search(rows, 1)[1].ravel()
    return out


def _probing(nprobe: int, nlist: int) -> Any:
    """faiss search parameters reading `nprobe` lists (at most every list)."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = min(nprobe, nlist)
    return params


def at_cosine(x: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly `cosine` to the rows of x (unit vectors), each in a random direction."""
    u = rng.standard_normal(x.shape).astype(np.float32)
    u -= (u * x).sum(axis=1, keepdims=True) * x
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(cosine * x + np.sqrt(max(0.0, 1 - cosine**2)) * u, dtype=np.float32)


def _rows(hashes: list[str]) -> dict[str, int]:
    return {h: i for i, h in enumerate(hashes)}


def _calibrate(ivf: Any, vectors: np.ndarray, rng: np.random.Generator, k: int = 10) -> int:
    """The smallest nprobe whose recall@k against exact search reaches TARGET_RECALL, with 200 stored vectors as
    queries (each query's own row left out on both sides, so finding itself does not count)."""
    picks = np.sort(rng.choice(len(vectors), size=min(200, len(vectors)), replace=False))
    queries = np.ascontiguousarray(vectors[picks])
    wide = min(k + 1, len(vectors))
    truth = np.zeros((len(queries), 0), dtype=np.int64)
    best = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), 200_000):  # exact top k + 1, a block of rows at a time
        scores = queries @ vectors[start : start + 200_000].T
        top = np.argpartition(-scores, min(wide, scores.shape[1]) - 1, axis=1)[:, :wide]
        both = np.concatenate([truth, top + start], axis=1)
        both_s = np.concatenate([best, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.argsort(-both_s, axis=1)[:, :wide]
        truth, best = np.take_along_axis(both, order, axis=1), np.take_along_axis(both_s, order, axis=1)
    expected = [set(row.tolist()) - {int(p)} for row, p in zip(truth, picks, strict=True)]
    for nprobe in NPROBES:
        ivf.nprobe = min(nprobe, ivf.nlist)
        _, ids = ivf.search(queries, wide)
        found = [set(row.tolist()) - {int(p)} for row, p in zip(ids, picks, strict=True)]
        recall = np.mean([len(f & e) / max(1, len(e)) for f, e in zip(found, expected, strict=True)])
        if recall >= TARGET_RECALL or nprobe >= ivf.nlist:
            return int(ivf.nprobe)
    return int(ivf.nprobe)
