"""Scale-out on a Dask LocalCluster (separate worker processes): download, preprocess, embed and classify run
their chunks on the cluster, results land in the catalog exactly as a local run's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec
from services.io.embedding_store import EmbeddingStore, embedding_key
from services.jobs.executors import ExecutorError, check_executor_url
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.download.urls import start_url_download
from services.stages.embed.stage import start_embed
from services.stages.preprocess.stage import start_preprocess
from tests.conftest import ROOT, write_csv
from tests.support.image_server import ImageServer, make_jpeg
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    local = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None)
    host, port = local.scheduler_address.removeprefix("tcp://").rsplit(":", 1)
    yield f"dask://{host}:{port}"
    local.close()


def test_executor_urls_are_checked():
    assert check_executor_url("local") is None and check_executor_url(None) is None
    assert check_executor_url("dask://10.0.0.5:8786") == "dask://10.0.0.5:8786"
    for bad in ("tcp://x:1", "dask://nohost", "spark://x:7077"):
        with pytest.raises(ExecutorError, match="dask://HOST:PORT"):
            check_executor_url(bad)


def test_download_and_preprocess_on_the_cluster(cluster: str, ws: Workspace, image_server: ImageServer, tmp_path: Path):
    urls = [image_server.add(f"d{i}.jpg", make_jpeg(80, 60, seed=i)) for i in range(12)]
    rows = [[u, str(i), "e", "v"] for i, u in enumerate(urls)] + [[image_server.url("/status/404"), "x", "e", "v"]]
    csv_path = write_csv(tmp_path / "urls.csv", ["image_link", "group_id", "entity_name", "entity_value"], rows)
    manager = JobManager(ws)
    job = start_url_download(ws, manager, csv_path, "remote")
    manager.set_executor(job, cluster)
    p = manager.run(job)
    assert (p.state, p.done, p.failed) == ("completed", 12, 1)
    assert ws.catalog.scalar("SELECT COUNT(*) FROM images") == 12
    pre = start_preprocess(ws, manager, "remote", "ocr-128")
    manager.set_executor(pre, cluster)
    p = manager.run(pre)
    assert (p.state, p.done) == ("completed", 12)
    assert len(list((ws.root / "derived").rglob("*.png"))) == 12


def test_embed_and_classify_on_the_cluster_match_a_local_run(cluster: str, tmp_path: Path):
    from services.core.settings import load_settings
    from services.stages.classify.stage import classification, resolve_models, start_classify
    from services.stages.train.stage import start_training
    from tests.support.tagged_images import png, tagged_tree

    spec = ClipSpec(TINY_CLIP_NAME, None, str(save_tiny_clip(tmp_path / "model")), "cpu")
    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, tagged_tree(tmp_path / "set", per_tag=6), "set"))
    job = start_embed(ws, manager, "set", spec, batch_size=8)
    manager.set_executor(job, cluster)
    p = manager.run(job)
    assert (p.state, p.failed) == ("completed", 0) and p.done > 20
    key = embedding_key(spec)
    remote = EmbeddingStore(ws, key).load()
    local_ws = Workspace(tmp_path / "local", load_settings())
    local_manager = JobManager(local_ws)
    local_manager.run(start_folder_import(local_ws, local_manager, tmp_path / "set", "set"))
    local_manager.run(start_embed(local_ws, local_manager, "set", spec, loader_workers=0))
    local = EmbeddingStore(local_ws, key).load(remote.hashes)
    assert np.allclose(remote.vectors, local.vectors, atol=1e-5)  # the same vectors, wherever computed
    local_ws.close()
    manager.run(start_training(ws, manager, "set", key, types=["lr"]))
    (tmp_path / "new").mkdir()
    for i, colour in enumerate(["red", "blue"]):
        (tmp_path / "new" / f"{colour}.png").write_bytes(png(colour, 900 + i))
    models = resolve_models(ws, None, "set")
    classify_job = start_classify(ws, manager, str(tmp_path / "new"), models)
    manager.set_executor(classify_job, cluster)
    p = manager.run(classify_job)
    assert (p.state, p.done) == ("completed", 2)
    assert not np.isnan(classification(ws, "classify-new", models).scores).any()
    ws.close()


def test_cli_takes_the_executor_option(cluster: str, tmp_path: Path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(make_jpeg(64, 48, seed=i))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "services", "--workspace", str(tmp_path / "ws")]
    run = subprocess.run([*base, "preprocess", "--folder", str(folder), "--recipe", "ocr-128", "--executor", cluster],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "4 ok, 0 failed" in run.stdout
    bad = subprocess.run([*base, "preprocess", "--folder", str(folder), "--recipe", "ocr-128", "--executor", "x:1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "dask://HOST:PORT" in bad.stderr


def test_the_sidebar_chooses_where_page_jobs_run(cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    from services.core.settings import load_settings

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(make_jpeg(64, 48, seed=i))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.sidebar.text_input(key="executor-input").input("spark://nope:1").run()
    assert any("dask\\://HOST:PORT" in e.value for e in at.sidebar.error)  # shown escaped (ui/text.py md)
    at.sidebar.text_input(key="executor-input").input(cluster).run()
    assert at.session_state["executor-url"] == cluster
    at.switch_page("app_pages/preprocess.py").run()
    at.text_input(key="pp-folder").input(str(folder)).run()
    at.button(key="pp-import").click().run()
    ws = Workspace(tmp_path / "ws", load_settings())
    job_id = at.session_state["pp-job"]
    assert JobManager(ws).progress(job_id).params["executor"] == cluster
    assert JobManager(ws).wait(job_id, timeout=120).state == "completed"
    ws.close()


def test_a_vector_index_build_assigns_its_shards_on_the_cluster(cluster: str, ws: Workspace):
    """Above the exact-search size, a build whose list assignments run on the cluster's workers (a store shard
    per task) makes the same index as a local build: every vector in the same list, the same answers. A hash
    stored twice (a re-embed) is indexed once, from its first shard, as the store loads it."""
    from services.jobs.executors import executor_from_url
    from services.stages.explore import vector_index
    from services.stages.explore.vector_index import EXACT_BELOW, VectorIndex
    from tests.support.stored_vectors import store_vectors

    rng = np.random.default_rng(7)
    n, dim = EXACT_BELOW + 6_000, 24
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    hashes = [f"{i:064x}" for i in range(n)]
    cut = [0, 20_000, 41_000, n]
    for a, b in zip(cut, cut[1:], strict=False):
        store_vectors(ws, "dask-ivf", hashes[a:b], matrix[a:b])
    store_vectors(ws, "dask-ivf", hashes[:5], matrix[5:10])  # the same images again, other vectors: not indexed

    def lists_of(ivf: object) -> dict[int, int]:
        """Row -> the list holding it, read from the inverted lists themselves."""
        import faiss

        invlists = faiss.extract_index_ivf(ivf).invlists
        out: dict[int, int] = {}
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy() if size else []
            out.update({int(i): lst for i in ids})
        return out

    vector_index._RESIDENT.clear()
    local = VectorIndex(ws, "dask-ivf")
    assert local.sync(rebuild=True)["mode"] == "ivf"
    local_lists = lists_of(vector_index._RESIDENT[local._slot].ivf)
    queries = matrix[rng.choice(n, 50, replace=False)]
    local_hits = [[h.image_hash for h in row] for row in local.search(queries, 10)]
    vector_index._RESIDENT.clear()
    pool, close = executor_from_url(cluster)
    try:
        spread = VectorIndex(ws, "dask-ivf")
        state = spread.sync(rebuild=True, executor=pool)
    finally:
        close()
    held = vector_index._RESIDENT[spread._slot]
    assert state["vectors"] == n and held.hashes == hashes  # each image once, in the store's order
    assert lists_of(held.ivf) == local_lists and len(set(local_lists.values())) > 50
    assert [[h.image_hash for h in row] for row in spread.search(queries, 10)] == local_hits
    np.testing.assert_allclose(spread.vector_of(hashes[3]), matrix[3], atol=1e-6)  # the first shard's vector
