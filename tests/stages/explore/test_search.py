"""Explore (issue 20): the vector index against an independent exact search (scikit-learn), its incremental
update and persistence, dataset filters, and search by text, image and "more like this" from the CLI and the
API with a tiny CLIP model saved and loaded through the product's loaders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.neighbors import NearestNeighbors

from services.api.app import create_app
from services.core.datasets import dataset_entries, dataset_tags
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, load_clip
from services.io.embedding_store import EmbeddingStore, embedding_key
from services.stages.explore import vector_index
from services.stages.explore.browse import BrowseFilter
from services.stages.explore.search import SearchError, search, search_handler
from services.stages.explore.vector_index import VectorIndex
from tests.conftest import ROOT
from tests.support.cli import run_cli

TOKEN = "explore-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def clustered(n: int, dim: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Vectors around random centres (as image embeddings gather by subject), L2-normalised."""
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fake_hashes(n: int, start: int = 0) -> list[str]:
    return [f"{i:064x}" for i in range(start, start + n)]


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """scikit-learn's brute-force cosine neighbours: the independent reference."""
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(vectors)
    return nn.kneighbors(queries, return_distance=False)


def saved_centroids(path: Path) -> np.ndarray:
    """The coarse centroids of a saved IVF index (the training a rebuild would redo)."""
    saved = faiss.read_index(str(path))
    ivf = faiss.extract_index_ivf(saved)
    return np.array(ivf.quantizer.reconstruct_n(0, ivf.nlist))


@pytest.fixture
def small_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "EXACT_BELOW", 1000)  # the approximate index from 1,000 vectors
    vector_index._RESIDENT.clear()


def test_the_index_finds_what_exact_search_finds_and_grows_without_a_rebuild(ws: Workspace, small_exact: None):
    dim, rng = 32, np.random.default_rng(7)
    centers = rng.normal(size=(40, dim))
    first = clustered(3000, dim, 1, centers)
    store = EmbeddingStore(ws, "model-a")
    store.write_shard(fake_hashes(3000), first)
    index = VectorIndex(ws, "model-a")
    state = index.sync()
    assert state["mode"] == "ivf" and state["vectors"] == 3000

    queries = clustered(100, dim, 2, centers)
    truth = exact_top(first, queries, 10)
    found = index.search(queries, 10)
    names = fake_hashes(3000)
    recall = np.mean(
        [len({names[i] for i in t} & {h.image_hash for h in f}) / 10 for t, f in zip(truth, found, strict=True)]
    )
    assert recall >= 0.95
    best = found[0][0]  # scores are cosine similarities, best first
    assert best.score == pytest.approx(float(first[names.index(best.image_hash)] @ queries[0]), abs=1e-5)
    assert all(a.score >= b.score for hits in found for a, b in zip(hits, hits[1:], strict=False))

    centroids = saved_centroids(index.folder / "ivf.faiss")
    more = clustered(500, dim, 3, centers)
    store.write_shard(fake_hashes(500, start=3000), more)  # newly embedded images
    grown = index.sync()
    assert grown["vectors"] == 3500
    np.testing.assert_array_equal(saved_centroids(index.folder / "ivf.faiss"), centroids)  # added, not rebuilt
    hit = index.search(more[:1], 1)[0][0]
    assert hit.image_hash == fake_hashes(1, start=3000)[0] and hit.score == pytest.approx(1.0, abs=1e-5)

    vector_index._RESIDENT.clear()  # a new process: the saved index is read, not built again
    reread = VectorIndex(ws, "model-a")
    assert reread.sync()["vectors"] == 3500
    assert [h.image_hash for h in reread.search(queries[:3], 10)[0]] == [h.image_hash for h in found[0]]

    with open(reread.folder / "rows.hashes", "a") as fh:  # rows a killed update appended, its state never saved
        fh.write("f" * 64 + "\n")
    vector_index._RESIDENT.clear()
    store.write_shard(fake_hashes(10, start=3500), clustered(10, dim, 4, centers))
    assert VectorIndex(ws, "model-a").sync()["vectors"] == 3510
    rows = (reread.folder / "rows.hashes").read_text().split()
    assert rows == fake_hashes(3510) and "f" * 64 not in rows  # the stray row cut before the new ones

    store.compact()  # shards merged: their names change, so the index is built afresh over the same vectors
    assert VectorIndex(ws, "model-a").sync()["vectors"] == 3510


def test_a_dataset_filter_returns_only_its_images_exactly(ws: Workspace, small_exact: None):
    dim = 16
    centers = np.random.default_rng(0).normal(size=(10, dim))
    vectors = clustered(2000, dim, 5, centers)
    EmbeddingStore(ws, "m").write_shard(fake_hashes(2000), vectors)
    index = VectorIndex(ws, "m")
    members = set(fake_hashes(2000)[::7])
    picked = np.array(sorted(int(h, 16) for h in members))
    query = clustered(1, dim, 9, centers)
    truth = [fake_hashes(2000)[picked[i]] for i in exact_top(vectors[picked], query, 15)[0]]
    got = [h.image_hash for h in index.search(query, 15, allowed=members)[0]]
    assert got == truth  # a few allowed images: searched exactly over them
    none = index.search(query, 5, allowed=set())
    assert none == [[]]


def test_small_stores_are_searched_exactly(ws: Workspace):
    vector_index._RESIDENT.clear()
    vectors = clustered(300, 8, 1, np.eye(8))
    EmbeddingStore(ws, "tiny").write_shard(fake_hashes(300), vectors)
    index = VectorIndex(ws, "tiny")
    assert index.sync()["mode"] == "exact"
    truth = exact_top(vectors, vectors[:5], 4)
    assert [[h.image_hash for h in hits] for hits in index.search(vectors[:5], 4)] == [
        [fake_hashes(300)[i] for i in row] for row in truth
    ]
    assert not (index.folder / "ivf.faiss").exists()
    with pytest.raises(LookupError, match="no vectors for embedding model 'other'"):
        VectorIndex(ws, "other")


# --- text, image and "more like this" over a dataset embedded with a tiny CLIP ------------------------------


@pytest.fixture
def tws(trained: tuple[Path, ClipSpec], tmp_path: Path) -> Iterator[Workspace]:
    shutil.copytree(trained[0], tmp_path / "ws")
    vector_index._RESIDENT.clear()
    ws = Workspace(tmp_path / "ws", load_settings())
    yield ws
    ws.close()


def test_text_image_and_like_queries_rank_by_the_models_own_cosine(tws: Workspace, trained: tuple[Path, ClipSpec]):
    spec = trained[1]
    key = embedding_key(spec)
    stored = EmbeddingStore(tws, key).load()
    model = load_clip(spec)
    result, where = search(tws, text="a red square", k=5)
    assert where == "here" and result.key == key and len(result.hits) == 5
    expected = stored.vectors @ model.embed_texts(["a red square"])[0]
    order = np.argsort(-expected)[:5]
    assert [h.image_hash for h in result.hits] == [stored.hashes[i] for i in order]
    np.testing.assert_allclose([h.score for h in result.hits], expected[order], atol=1e-4)

    image_hash, rel, _ = dataset_entries(tws, "tagged")[3]
    by_image, _ = search(tws, image=tws.abspath(rel).read_bytes(), k=3)
    assert by_image.hits[0].image_hash == image_hash and by_image.hits[0].score > 0.99
    like, _ = search(tws, like=image_hash, k=3)
    assert image_hash not in [h.image_hash for h in like.hits] and len(like.hits) == 3
    assert [h.image_hash for h in like.hits[:2]] == [h.image_hash for h in by_image.hits[1:3]]

    for bad, message in (
        ({}, "exactly one query"),
        ({"text": "x", "like": image_hash}, "exactly one query"),
        ({"text": "x" * 301}, "at most 300"),
        ({"text": "x", "k": 0}, "k is 1 to 1000"),
    ):
        with pytest.raises(SearchError, match=message):
            search(tws, **bad)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="no dataset named 'nope'"):
        search(tws, text="x", dataset="nope")


def test_a_filtered_grid_ranked_by_text_holds_only_what_passes_in_the_models_order(
    tws: Workspace, trained: tuple[Path, ClipSpec]
):
    """Filters combined with search: the images a Browse filter selects, ranked by the query's cosine (checked
    against the model's own scores over the filter's images, selected with plain SQL)."""
    spec = trained[1]
    stored = EmbeddingStore(tws, embedding_key(spec)).load()
    tags = dataset_tags(tws, "tagged")
    tag = sorted({t for ts in tags.values() for t in ts})[0]
    passing = {h for h, ts in tags.items() if tag in ts}
    assert 0 < len(passing) < len(stored.hashes)
    scores = stored.vectors @ load_clip(spec).embed_texts(["a red square"])[0]
    expected = sorted(((float(s), h) for h, s in zip(stored.hashes, scores, strict=True) if h in passing), reverse=True)
    result, _ = search(tws, text="a red square", k=1000, within=BrowseFilter(("tagged",), tags=(tag,)))
    assert [h.image_hash for h in result.hits] == [h for _, h in expected]  # every passing image, no other
    np.testing.assert_allclose([h.score for h in result.hits], [s for s, _ in expected], atol=1e-4)
    ranked = run_cli(
        tws.root, "browse", "--dataset", "tagged", "--tag", tag, "--text", "a red square", "--per-page", "3"
    )
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    assert [line.split("\t")[2] for line in ranked.stdout.splitlines()] == [h for _, h in expected[:3]]
    with pytest.raises(SearchError, match="not Browse's"):
        within = {"datasets": ["tagged"], "ocr": 5}
        search_handler(tws)(b"", {"key": embedding_key(spec), "text": "x", "within": within})
    with pytest.raises(SearchError, match="no field 'dataset'"):  # a field this filter does not have is not ignored
        search_handler(tws)(b"", {"key": embedding_key(spec), "text": "x", "within": {"dataset": "tagged"}})


def test_the_cli_searches_and_says_what_is_wrong_without_a_traceback(tws: Workspace, tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(tws.root, *args)

    found = cli("search", "--text", "a blue square", "--k", "4", "--dataset", "tagged")
    assert found.returncode == 0, found.stderr[-2000:]
    lines = [line.split("\t") for line in found.stdout.splitlines()]
    assert [int(line[0]) for line in lines] == [1, 2, 3, 4] and all(line[3].startswith("tagged: ") for line in lines)
    assert "4 results from" in found.stderr and "exact search" in found.stderr
    image_hash = lines[0][2]
    like = cli("search", "--like", image_hash, "--k", "2")
    assert like.returncode == 0 and image_hash not in like.stdout
    for args, message in (
        (("search",), "give exactly one query"),
        (("search", "--like", "0" * 64), "no stored image 0000000000000000"),
        (("search", "--image", str(tmp_path / "none.png")), "none.png: not a file"),
        (("search", "--text", "x", "--dataset", "nope"), "no dataset named 'nope'"),
    ):
        refused = cli(*args)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
    built = cli("search-index")
    assert built.returncode == 0 and "exact search" in built.stdout


def test_the_api_searches_under_its_token_and_limits(tws: Workspace):
    client = TestClient(create_app(tws, TOKEN))
    assert client.post("/search?text=red").status_code == 401
    found = client.post("/search?text=a%20green%20square&k=3&dataset=tagged", headers=AUTH)
    assert found.status_code == 200, found.text
    body = found.json()
    assert len(body["results"]) == 3 and body["where"] == "here" and body["index"] == "exact"
    assert all(r["name"].startswith("tagged: ") for r in body["results"])
    image_hash, rel, _ = dataset_entries(tws, "tagged")[0]
    upload = {"file": ("q.png", tws.abspath(rel).read_bytes(), "image/png")}
    by_image = client.post("/search?k=2", headers=AUTH, files=upload)
    assert by_image.status_code == 200 and by_image.json()["results"][0]["hash"] == image_hash
    similar = client.get(f"/images/{image_hash}/similar?k=4", headers=AUTH)
    assert similar.status_code == 200 and len(similar.json()["results"]) == 4
    assert image_hash not in [r["hash"] for r in similar.json()["results"]]
    assert client.post("/search?text=" + "x" * 301, headers=AUTH).status_code == 422
    assert client.post("/search?text=x&k=0", headers=AUTH).status_code == 422
    assert client.post("/search?text=x&dataset=../etc", headers=AUTH).status_code == 422
    both = client.post("/search?text=x", headers=AUTH, files=upload)
    assert both.status_code == 422 and "exactly one query" in both.json()["detail"]
    not_image = client.post("/search", headers=AUTH, files={"file": ("n.png", b"not an image", "image/png")})
    assert not_image.status_code in (413, 422) and "Traceback" not in not_image.text
    assert client.get(f"/images/{'0' * 64}/similar", headers=AUTH).status_code == 404


def test_near_duplicates_read_few_lists_and_still_find_every_copy(ws: Workspace, small_exact: None):
    """A copy at cosine >= 0.95 sits in its original's list or next to it: the nprobe measured for pairs is far
    below the calibrated one (which ranks whole neighbourhoods, hard on data with little structure), and a
    search with it finds every planted copy, also through a dataset filter that leaves lists short."""
    dim, rng = 64, np.random.default_rng(11)
    base = clustered(4000, dim, 12, rng.normal(size=(800, dim)))  # 5 per centre: neighbourhoods barely exist
    cosines = rng.uniform(0.955, 0.995, 60)
    noise = rng.normal(size=(60, dim))
    noise -= (noise * base[:60]).sum(axis=1, keepdims=True) * base[:60]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = (cosines[:, None] * base[:60] + np.sqrt(1 - cosines[:, None] ** 2) * noise).astype(np.float32)
    assert np.allclose((copies * base[:60]).sum(axis=1), cosines, atol=1e-5)  # planted at exactly those cosines
    EmbeddingStore(ws, "dups").write_shard(fake_hashes(4060), np.concatenate([base, copies]))
    index = VectorIndex(ws, "dups")
    calibrated = index.sync()["nprobe"]
    pairs = index.pair_nprobe(0.95)
    assert pairs is not None and pairs < calibrated
    names = fake_hashes(4060)
    found = index.search(copies, 2, nprobe=pairs)
    assert [hits[1].image_hash for hits in found] == names[:60]  # each copy: itself, then its original
    assert [hits[1].score for hits in found] == pytest.approx(cosines.tolist(), abs=1e-5)
    allowed = set(names[:60]) | set(names[::3])  # a dataset of about a third: lists read hold few of its images
    filtered = index.search(copies, 5, allowed, nprobe=pairs)
    assert all(len(hits) <= 5 and {h.image_hash for h in hits} <= allowed for hits in filtered)
    assert all(n in {h.image_hash for h in hits} for n, hits in zip(names[:60], filtered, strict=True))


SYNC_IN_A_PROCESS = """
import json, logging, sys
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.stages.explore import vector_index

logging.basicConfig(level=logging.INFO, format="%(message)s")
vector_index.EXACT_BELOW = 1000
ws = Workspace(sys.argv[1], load_settings(workspace=sys.argv[1]))
state = vector_index.VectorIndex(ws, "shared").sync()
print(json.dumps({"vectors": state["vectors"], "mode": state["mode"]}))
"""


def test_processes_syncing_one_index_at_once_build_it_once(ws: Workspace, tmp_path: Path):
    """The worker, the dashboard and a CLI may sync the same index together: one builds it, the others wait and
    read what it saved (two builds of a million vectors at once would hold two 6 GB builds)."""
    vectors = clustered(6000, 32, 3, np.random.default_rng(0).normal(size=(30, 32)))
    EmbeddingStore(ws, "shared").write_shard(fake_hashes(6000), vectors)
    script = tmp_path / "sync.py"
    script.write_text(SYNC_IN_A_PROCESS)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = [subprocess.Popen([sys.executable, str(script), str(ws.root)], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-1500:] for _, err in outputs]
    assert [json.loads(out) for out, _ in outputs] == [{"vectors": 6000, "mode": "ivf"}] * 3
    builds = sum(err.count("index shared built") for _, err in outputs)
    assert builds == 1, [err[-800:] for _, err in outputs]
    folder = ws.root / "indexes" / "shared"
    assert (folder / "rows.hashes").read_text().split() == fake_hashes(6000)
    assert faiss.read_index(str(folder / "ivf.faiss")).ntotal == 6000
