"""Classify stage and REST API: safe zips, vectorised scores, bins, outputs, and every API guard."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.archives import ArchiveError, ArchiveLimits, list_images
from services.io.clip_models import ClipSpec
from services.io.embedding_store import EmbeddingStore
from services.jobs.manager import JobManager
from services.stages.classify.scoring import bin_edges, bin_index, histogram, score, stack_models
from services.stages.classify.stage import classification, resolve_models, start_classify
from services.stages.train.models import load_estimator
from tests.conftest import ROOT, read_csv
from tests.support.tagged_images import png

TOKEN = "test-token-for-the-api"


@pytest.fixture
def tws(trained: tuple[Path, ClipSpec], tmp_path: Path) -> Iterator[Workspace]:
    """A private copy of the trained workspace (models keep their absolute checkpoint path)."""
    shutil.copytree(trained[0], tmp_path / "ws")
    ws = Workspace(tmp_path / "ws", load_settings())
    yield ws
    ws.close()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# --- zips ------------------------------------------------------------------------------------------


def mark_encrypted(path: Path, name: str) -> None:
    """Set the 'encrypted' flag of one member in its local and central headers (zipfile cannot write one)."""
    import struct

    data = bytearray(path.read_bytes())
    for signature, flag_at, name_len_at, name_at in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            (length,) = struct.unpack_from("<H", data, start + name_len_at)
            if bytes(data[start + name_at : start + name_at + length]) == name.encode():
                data[start + flag_at] |= 0x1
            start += 4
    path.write_bytes(bytes(data))


def test_zip_members_are_checked_before_anything_is_read(tmp_path: Path):
    path = tmp_path / "hostile.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok/a.png", png("red", 1))
        zf.writestr("../../etc/slip.png", png("red", 2))
        zf.writestr("/abs/path.png", png("red", 3))
        zf.writestr("bomb.png", b"\0" * (20 * 2**20))  # ~1000:1
        link = zipfile.ZipInfo("ok/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("ok/secret.png", b"ciphertext")
        zf.writestr("ok/readme.md", b"# not an image")
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("ok/a.png", png("red", 4))  # a duplicate name
    mark_encrypted(path, "ok/secret.png")
    members, skipped = list_images(path)
    assert [m.locator.split("!")[1] for m in members] == ["ok/a.png"]
    reasons = {s.locator.split("!", 1)[1]: s.reason for s in skipped}
    assert reasons["../../etc/slip.png"] == "path with '..'"
    assert reasons["/abs/path.png"] == "absolute path"
    assert reasons["bomb.png"].startswith("compression ratio")
    assert reasons["ok/link.png"] == "symbolic link"
    assert reasons["ok/secret.png"] == "encrypted"
    assert reasons["ok/readme.md"] == "not an image file"
    assert reasons["ok/a.png"] == "duplicate member name"


def test_zip_totals_depth_and_non_zips(tmp_path: Path):
    many = write_zip(tmp_path / "many.zip", {f"{i}.png": png("red", i) for i in range(5)})
    with pytest.raises(ArchiveError, match="more than 3 members"):
        list_images(many, ArchiveLimits(max_members=3))
    with pytest.raises(ArchiveError, match="bytes uncompressed in total"):
        list_images(many, ArchiveLimits(max_total_bytes=len(png("red", 0)) * 2))
    (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        list_images(tmp_path / "fake.zip")
    empty = write_zip(tmp_path / "empty.zip", {})
    assert list_images(empty) == ([], [])


# --- scoring ---------------------------------------------------------------------------------------


def test_vectorised_scores_equal_each_models_predict_proba(tws: Workspace, trained: tuple[Path, ClipSpec]):
    models = resolve_models(tws, None, "tagged")
    stacked = stack_models(models)
    vectors = EmbeddingStore(tws, stacked.embedding_key).load().vectors
    fast = score(vectors, stacked, chunk_rows=7)  # odd chunks: the chunking must not show
    for m, model in enumerate(models):
        slow = load_estimator(model).predict_proba(vectors)[:, 1]
        assert np.max(np.abs(fast[:, m] - slow)) < 1e-6, model.name


@pytest.mark.parametrize("bins", [1, 3, 7, 10])
def test_exactly_n_equal_bins_cover_zero_to_one(bins: int):
    edges = bin_edges(bins)
    assert len(edges) == bins and edges[0][0] == 0.0 and edges[-1][1] == 1.0
    scores = np.array([[0.0], [1.0], [0.5], [np.nextafter(1.0, 0)], [1 / 3]], dtype=np.float32)
    idx = bin_index(scores, bins)
    assert idx.min() >= 0 and idx.max() <= bins - 1
    assert idx[0, 0] == 0 and idx[1, 0] == bins - 1  # 1.0 lands in the last bin, not an extra one
    assert histogram(scores, bins).shape == (1, bins) and histogram(scores, bins).sum() == 5


# --- the classify job ------------------------------------------------------------------------------


def test_classify_a_zip_writes_outputs_and_reuses_vectors(tws: Workspace, tmp_path: Path):
    upload = write_zip(
        tmp_path / "new.zip",
        {"in/red.png": png("red", 300), "in/blue.png": png("blue", 301), "in/broken.png": b"\x89PNG nope",
         "in/../x.png": png("red", 5)},
    )  # fmt: skip
    models = resolve_models(tws, None, "tagged")
    manager = JobManager(tws)
    job = start_classify(tws, manager, str(upload), models, bins=5, out=tmp_path / "out", copy=True)
    p = manager.run(job)
    assert (p.state, p.done, p.failed) == ("completed", 2, 0), p.error
    result = classification(tws, "classify-new", models)
    assert result.names == ["in/red.png", "in/blue.png"] and not np.isnan(result.scores).any()  # zip order
    red_svm = result.column("model-ovr-svm-tag-red")
    assert red_svm[result.names.index("in/red.png")] > red_svm[result.names.index("in/blue.png")]
    bins = json.loads((tmp_path / "out" / "bins.json").read_text())
    assert bins["output_bins"] == 5
    for summary in bins["models"].values():
        assert list(summary["bins"]) == ["0.00-0.20", "0.20-0.40", "0.40-0.60", "0.60-0.80", "0.80-1.00"]
        assert sum(summary["bins"].values()) == 2
    rows = read_csv(tmp_path / "out" / "scores.csv")
    assert [r["image_name"] for r in rows] == ["in/red.png", "in/blue.png"] and len(rows[0]) == 2 + len(models)
    output = json.loads((tmp_path / "out" / "output.json").read_text())
    assert {c["tag"] for c in output[0]["classifiers"]} == {"red", "green", "blue"}
    copies = list((tmp_path / "out" / "ovr-svm" / "red").rglob("*.png"))
    assert len(copies) == 2
    stored = tws.catalog.scalar("SELECT COUNT(*) FROM tag_scores")
    assert stored == 2 * len(models)
    import_failures = {f["item_key"]: f["error_class"] for f in manager.failures(job - 1)}
    assert import_failures == {"in/broken.png": "not_image", "in/../x.png": "refused"}
    # the same images again, as a folder: vectors come from the store, nothing is embedded
    key = stack_models(models).embedding_key
    shards = EmbeddingStore(tws, key).shards()
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "r.png").write_bytes(png("red", 300))
    again = manager.run(start_classify(tws, manager, str(tmp_path / "again"), models))
    assert again.done == 1 and EmbeddingStore(tws, key).shards() == shards


def test_classify_cli_on_a_dataset(tws: Workspace, tmp_path: Path):
    out = tmp_path / "cli-out"
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tws.root), "classify", "tagged", "--bins", "4",
         "--out", str(out), "--trained-on", "tagged"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"outputs: {out}" in run.stdout
    bins = json.loads((out / "bins.json").read_text())
    red = bins["models"]["model-ovr-svm-tag-red"]["bins"]
    assert len(red) == 4 and sum(red.values()) == len(read_csv(out / "scores.csv"))
    nothing = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "empty-ws"), "classify", "tagged"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert nothing.returncode == 2 and "no trained models found" in nothing.stderr


# --- the REST API ----------------------------------------------------------------------------------


@pytest.fixture
def client(tws: Workspace) -> TestClient:
    return TestClient(create_app(tws, TOKEN))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_api_needs_the_token_and_serves_docs(client: TestClient, tws: Workspace):
    assert client.get("/health").json()["status"] == "ok"  # health needs no token
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/models", headers={"X-API-Key": TOKEN}).status_code == 200
    assert client.get("/images/random").json() == {"detail": "missing or wrong token"}
    assert "/classify" in client.get("/openapi.json").json()["paths"]
    with pytest.raises(ValueError, match="needs a token"):
        create_app(tws, "")


def test_api_images_embeddings_tags_and_models(client: TestClient, tws: Workspace):
    image_hash = tws.catalog.scalar("SELECT hash FROM images LIMIT 1")
    meta = client.get(f"/images/{image_hash}", headers=AUTH).json()
    assert meta["hash"] == image_hash and meta["sources"][0]["kind"] == "path"
    assert client.get(f"/images/{'0' * 64}", headers=AUTH).status_code == 404
    bad = client.get("/images/..%2F..%2Fetc%2Fpasswd", headers=AUTH)
    assert bad.status_code in (404, 422)
    assert client.get("/images/not-a-hash", headers=AUTH).status_code == 422
    assert client.get("/images/random", headers=AUTH).json()["hash"]
    emb = client.get(f"/images/{image_hash}/embedding", headers=AUTH).json()
    assert emb["dim"] == 32 and abs(np.linalg.norm(emb["vector"]) - 1.0) < 1e-5
    assert client.get(f"/images/{image_hash}/embedding?model=nope", headers=AUTH).status_code == 404
    tags = client.get(f"/images/{image_hash}/tags", headers=AUTH).json()
    assert set(tags["tags"]) == {"tagged"}
    models = client.get("/models", headers=AUTH).json()
    assert {m["tag"] for m in models} == {"red", "green", "blue"} and len(models) == 6


def test_api_random_on_an_empty_catalog_is_404(tmp_path: Path):
    empty = Workspace(tmp_path / "empty", load_settings())
    response = TestClient(create_app(empty, TOKEN)).get("/images/random", headers=AUTH)
    assert response.status_code == 404 and "no images" in response.json()["detail"]
    empty.close()


def test_api_classifies_an_image_and_a_zip_like_the_job(client: TestClient, tws: Workspace, tmp_path: Path):
    red = png("red", 400)
    one = client.post("/classify?bins=4", headers=AUTH, files={"file": ("red.png", red, "image/png")})
    assert one.status_code == 200, one.text
    [result] = one.json()["results"]
    by_model = {s["model"]: s for s in result["scores"]}
    assert len(by_model) == 6 and by_model["model-ovr-svm-tag-red"]["bin"] in {"0.00-0.25", "0.25-0.50",
                                                                               "0.50-0.75", "0.75-1.00"}  # fmt: skip
    # the job's score for the same image
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "red.png").write_bytes(red)
    models = resolve_models(tws, None, "tagged")
    manager = JobManager(tws)
    manager.run(start_classify(tws, manager, str(tmp_path / "same"), models))
    job_scores = classification(tws, "classify-same", models)
    for m, name in enumerate(job_scores.stacked.names):
        assert abs(job_scores.scores[0, m] - by_model[name]["score"]) < 1e-5
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/red.png", png("red", 401))
        zf.writestr("a/blue.png", png("blue", 402))
        zf.writestr("a/../evil.png", png("red", 403))
        zf.writestr("a/broken.png", b"\x89PNG nope")
    many = client.post("/classify", headers=AUTH, files={"file": ("set.zip", archive.getvalue(), "application/zip")})
    assert many.status_code == 200, many.text
    body = many.json()
    assert sorted(r["name"] for r in body["results"]) == ["a/blue.png", "a/red.png"]
    assert {s["name"]: s["reason"] for s in body["skipped"]}["a/../evil.png"] == "path with '..'"
    assert "a/broken.png" in {s["name"] for s in body["skipped"]}


def test_api_refuses_bad_uploads(tws: Workspace, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "1")
    small = Workspace(tws.root, load_settings())
    client = TestClient(create_app(small, TOKEN))
    big = client.post("/classify", headers=AUTH, files={"file": ("big.png", b"\0" * (2 * 2**20), "image/png")})
    assert big.status_code == 413 and "1 MB limit" in big.json()["detail"]
    text = client.post("/classify", headers=AUTH, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert text.status_code == 422 and "notes.txt" in text.json()["detail"]
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    none = client.post("/classify", headers=AUTH, files={"file": ("e.zip", empty.getvalue(), "application/zip")})
    assert none.status_code == 422
    assert client.post("/classify", headers=AUTH).status_code == 422  # no file at all
    small.close()


def test_api_command_refuses_to_serve_without_a_token_and_serves_with_one(tws: Workspace):
    import time
    import urllib.request

    from tests.conftest import free_port

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    refused = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tws.root), "api"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "no API token" in refused.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "services", "--workspace", str(tws.root), "api", "--port", str(port)], cwd=ROOT,
        env={**env, "WORKBENCH_API_TOKEN": TOKEN}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/models", headers=AUTH)
                with urllib.request.urlopen(request, timeout=2) as response:
                    assert len(json.loads(response.read())) == 6
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(15)


def test_api_classify_is_scored_by_the_worker_on_its_loaded_model(tws: Workspace, tmp_path: Path):
    """With the workspace's worker running, POST /classify is scored there (one CLIP load in the worker for every
    request, none in the API's process), with the same scores and the same refusals as without it."""
    import time

    from services.io.resident_models import RESIDENT
    from services.jobs.worker_status import live_worker, read_status

    client = TestClient(create_app(tws, TOKEN))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/red.png", png("red", 411))
        zf.writestr("a/blue.png", png("blue", 412))
        zf.writestr("a/../evil.png", png("red", 413))
    upload = {"file": ("set.zip", archive.getvalue(), "application/zip")}
    alone = client.post("/classify?bins=4", headers=AUTH, files=upload)
    assert alone.status_code == 200, alone.text
    RESIDENT.clear("clip")  # the API's process holds no CLIP now; with a worker serving, it loads none
    loads_here = RESIDENT.load_count("clip")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (closed with the process)
    worker = subprocess.Popen([sys.executable, "-m", "services", "--workspace", str(tws.root), "worker"], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (s := live_worker(tws)) is None or s.pid != worker.pid:
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        served = client.post("/classify?bins=4", headers=AUTH, files=upload)
        assert served.status_code == 200, served.text
        assert [r["name"] for r in served.json()["results"]] == [r["name"] for r in alone.json()["results"]]
        assert served.json()["skipped"] == alone.json()["skipped"]
        for there, here in zip(served.json()["results"], alone.json()["results"], strict=True):
            assert [s["bin"] for s in there["scores"]] == [s["bin"] for s in here["scores"]]
            pairs = zip(there["scores"], here["scores"], strict=True)
            assert max(abs(a["score"] - b["score"]) for a, b in pairs) < 1e-5
        one = client.post("/classify", headers=AUTH, files={"file": ("g.png", png("green", 414), "image/png")})
        assert one.status_code == 200 and len(one.json()["results"]) == 1
        text = client.post("/classify", headers=AUTH, files={"file": ("notes.txt", b"hello", "text/plain")})
        assert text.status_code == 422 and "notes.txt" in text.json()["detail"]  # the worker's refusal, as before
        nothing = client.post("/classify?dataset=nobody", headers=AUTH, files=upload)
        assert nothing.status_code == 404 and "nobody" in nothing.json()["detail"]
        assert RESIDENT.load_count("clip") == loads_here  # the API's process loaded nothing more
        assert not [label for label in RESIDENT.held() if label.startswith("clip")]
        deadline = time.monotonic() + 10
        while (status := read_status(tws)) is None or status.model_loads != 1:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
