"""Seed 004's Python interface called as its scripts call it (issue 19): the helpers with the seed's arguments,
the read-only caches over the catalog, and `hash_id` (blake2b of the decoded pixels) beside the sha256.
Reference values come from the seed's own formula (`hashlib.blake2b(Image.open(path).tobytes())`), the
embedding store's shards read with numpy, and the catalog's rows."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services import library
from services.compat.seed004 import (
    ClipCache,
    FileCache,
    SeedCompatError,
    TagCache,
    classify_main,
    compute_blake2b,
    generate_model_path,
    list_models,
)
from services.compat.seed_hash_ids import find_image, seed_hash_id
from services.core.datasets import dataset_tags
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec
from services.io.embedding_store import EmbeddingStore, embedding_key
from services.jobs.manager import JobManager
from services.stages.classify.stage import start_classify
from services.stages.download.folder_import import start_folder_import
from services.stages.train.models import list_models as workspace_models
from services.stages.train.models import load_estimator
from tests.support.tagged_images import png


def seed_formula(data: bytes) -> str:
    """The seed's `compute_blake2b(Image.open(path))`, written out here independently."""
    return hashlib.blake2b(Image.open(io.BytesIO(data)).tobytes()).hexdigest()


@pytest.fixture
def seed_ws(trained: tuple[Path, ClipSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    shutil.copytree(trained[0], tmp_path / "ws")
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "nowhere"))  # no configured workspace to fall to
    ws = Workspace(tmp_path / "ws", load_settings())
    yield ws
    ws.close()


def _stored(ws: Workspace, image_hash: str) -> bytes:
    path = ws.catalog.scalar("SELECT path FROM images WHERE hash = ?", (image_hash,))
    return ws.abspath(path).read_bytes()


def test_seed_hash_id_is_blake2b_of_the_pixels_as_stored_not_turned_by_exif(tmp_path: Path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": the workbench's pictures are turned, the seed's id is of the stored pixels
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes())
    (tmp_path / "turned.jpg").write_bytes(out.getvalue())
    assert compute_blake2b(tmp_path / "turned.jpg") == seed_formula(out.getvalue())
    palette = io.BytesIO()
    img.convert("P").save(palette, "PNG")  # the file's own mode (palette indices), as the seed hashed it
    assert seed_hash_id(palette.getvalue(), 10**6) == seed_formula(palette.getvalue())
    assert len(seed_formula(out.getvalue())) == 128


def test_file_cache_answers_by_seed_hash_id_and_by_sha256(seed_ws: Workspace):
    root = seed_ws.root
    cache = FileCache()
    picked = cache.get_random_hash(root / "catalog.sqlite")
    assert picked is not None and len(picked["hash_id"]) == 128
    entry = cache.get_img_by_hash(str(root), picked["hash_id"])
    assert entry is not None and entry["hash_id"] == picked["hash_id"]
    assert seed_formula(_stored(seed_ws, entry["hash"])) == picked["hash_id"]  # the id is the seed's, of that image
    assert set(entry) >= {"file_name", "file_path", "file_type", "is_archive", "n_content", "container_archive"}
    sources = [r["locator"] for r in seed_ws.catalog.query(
        "SELECT locator FROM image_sources WHERE image_hash = ?", (entry["hash"],))]  # fmt: skip
    assert entry["file_name"] in {s.rsplit("!", 1)[-1].rsplit("/", 1)[-1] for s in sources}
    assert Path(entry["stored_path"]).read_bytes() == _stored(seed_ws, entry["hash"])
    by_sha = cache.get_img_by_hash(root, entry["hash"])
    assert by_sha is not None and by_sha["hash"] == entry["hash"] and by_sha["hash_id"] == entry["hash"]
    assert cache.get_img_by_hash(root, "0" * 128) is None
    assert cache.get_img_by_hash(root, "not a hash") is None

    # an image from a zip names its archive, as the seed's container_archive did
    zipped = seed_ws.catalog.scalar("SELECT image_hash FROM image_sources WHERE kind = 'zip' LIMIT 1")
    member = cache.get_img_by_hash(root, zipped)
    assert member is not None and member["container_archive"].endswith(".zip")
    assert member["file_path"].startswith(member["container_archive"] + "/")


def test_an_unrecorded_seed_id_is_found_by_computing_each_image_once(seed_ws: Workspace):
    hashes = [r[0] for r in seed_ws.catalog.query("SELECT hash FROM images WHERE is_placeholder = 0")]
    target = hashes[len(hashes) // 2]
    wanted = seed_formula(_stored(seed_ws, target))
    assert seed_ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases") == 0
    found = find_image(seed_ws, wanted)
    assert found is not None and seed_formula(_stored(seed_ws, found)) == wanted
    recorded = seed_ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases")
    assert 0 < recorded <= len(hashes)
    assert find_image(seed_ws, wanted) == found  # now from the index: nothing more computed
    assert seed_ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases") == recorded
    assert find_image(seed_ws, "f" * 128) is None  # every image computed once, then no more to look at
    assert seed_ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases") == len(hashes)
    assert find_image(seed_ws, "e" * 128) is None


def test_clip_cache_gives_the_stored_vector_as_the_seed_shaped_it(seed_ws: Workspace, trained: tuple[Path, Any]):
    key = embedding_key(trained[1])
    cache = ClipCache()
    got = cache.get_random_clip(seed_ws.root)
    assert got is not None and got["embedding_key"] == key and got["clip_vector"].shape == (1, 32)
    reference = EmbeddingStore(seed_ws, key).load([got["hash"]]).vectors[0]
    np.testing.assert_array_equal(got["clip_vector"][0], reference)
    again = cache.get_clip_by_hash(seed_ws.root, got["hash_id"])
    assert again is not None and again["hash"] == got["hash"]
    assert abs(float(np.linalg.norm(again["clip_vector"])) - 1) < 1e-5
    with pytest.raises(SeedCompatError, match="0 embedding models match nope"):
        ClipCache(model="nope").get_random_clip(seed_ws.root)
    assert ClipCache(model=key).get_random_hash(seed_ws.root) is not None


def test_tag_cache_gives_the_folder_tag(seed_ws: Workspace, tmp_path: Path):
    tags = dataset_tags(seed_ws, "tagged")
    cache = TagCache()
    for _ in range(5):
        got = cache.get_random_tag(seed_ws.root)
        assert got is not None and got["tag"] in tags[got["hash"]] and set(got["tags"]) == tags[got["hash"]]
    (tmp_path / "alone.png").write_bytes(png("gray", 901))  # one image file imported alone: no folder, no tag
    manager = JobManager(seed_ws)
    assert manager.run(start_folder_import(seed_ws, manager, tmp_path / "alone.png", "alone")).state == "completed"
    untagged = hashlib.sha256(png("gray", 901)).hexdigest()
    assert cache.get_tag_by_hash(seed_ws.root, untagged) is None
    assert FileCache().get_img_by_hash(seed_ws.root, untagged) is not None


def test_caches_are_read_only_and_need_a_workspace(seed_ws: Workspace, tmp_path: Path):
    images = seed_ws.catalog.scalar("SELECT COUNT(*) FROM images")
    for call in (
        lambda: FileCache().create_file_cache(),
        lambda: FileCache().add_folder_to_file_cache(str(tmp_path)),
        lambda: FileCache().clear_cache(str(seed_ws.root / "catalog.sqlite"), delete_cache=True),
        lambda: ClipCache().clear_cache(str(seed_ws.root)),
        lambda: TagCache().add_folder_to_tag_cache(str(tmp_path)),
    ):
        with pytest.raises(SeedCompatError, match="read-only here"):
            call()
    assert (seed_ws.root / "catalog.sqlite").is_file()
    assert seed_ws.catalog.scalar("SELECT COUNT(*) FROM images") == images
    with pytest.raises(SeedCompatError, match="output/file_cache.sqlite: not in a workspace"):
        FileCache().get_random_hash(str(tmp_path / "output" / "file_cache.sqlite"))
    # the seed's path, with the workspace given once when the cache is made
    assert FileCache(workspace=seed_ws.root).get_random_hash("./output/file_cache.sqlite") is not None


def test_seed_helpers_take_the_seeds_arguments(seed_ws: Workspace, capsys: pytest.CaptureFixture[str]):
    models = workspace_models(seed_ws)
    folder = models[0].path.parent
    assert list_models(str(folder)) is None
    printed = capsys.readouterr().out
    assert "1)  ovr-logistic-regression" in printed or "1)  ovr-svm" in printed
    for model in models:
        assert f"\t \t \t{model.tag}" in printed
    path = generate_model_path(str(folder), model_type="ovr-svm", tag_name="red")
    assert path is not None and Path(path).is_file() and Path(path).name == "model-ovr-svm-tag-red.skops"
    assert generate_model_path(str(seed_ws.root), model_type="ovr-svm", tag_name="red") == path  # the workspace
    assert generate_model_path(str(folder), model_type="ovr-svm", tag_name="purple") is None
    (folder.parent / "old.pkl").write_bytes(b"pickle")
    with pytest.raises(SeedCompatError, match="runs whatever code it holds"):
        generate_model_path(str(folder.parent / "old.pkl"), "ovr-svm", "red")
    # the library's names answer both ways
    assert library.list_models(str(folder)) is None and "ovr-svm" in capsys.readouterr().out
    assert library.generate_model_path(str(folder), model_type="ovr-svm", tag_name="red") == path
    key = models[0].manifest["embedding_key"]
    assert library.generate_model_path(seed_ws, "tagged", key, "svm", "red") == Path(path)
    assert [m.name for m in library.list_models(seed_ws) or []] == [m.name for m in models]


def _seed_metadata(images: dict[str, bytes], key: str, dim: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A seed-style input-metadata.json for files not in the workspace: hash_id by the seed's formula, vectors
    chosen here (so a vector the job would have computed cannot pass for one read from the file)."""
    rng = np.random.default_rng(5)
    metadata, vectors = {}, {}
    for name, data in images.items():
        vector = rng.normal(size=dim).astype(np.float32)
        hash_id = seed_formula(data)
        metadata[hash_id] = {"hash_id": hash_id, "file_path": name, "file_name": name, "embedding_key": key,
                             "embeddings_vector": vector.tolist()}  # fmt: skip
        vectors[hashlib.sha256(data).hexdigest()] = vector / np.linalg.norm(vector)
    return metadata, vectors


def test_classify_main_as_the_seed_called_it_reuses_the_metadata_vectors(seed_ws: Workspace, tmp_path: Path):
    models = workspace_models(seed_ws)
    key = models[0].manifest["embedding_key"]
    images = {f"new{i}.png": png(colour, 500 + i) for i, colour in enumerate(["red", "green", "blue"])}
    (tmp_path / "new").mkdir()
    for name, data in images.items():
        (tmp_path / "new" / name).write_bytes(data)
    metadata, vectors = _seed_metadata(images, key, 32)
    (tmp_path / "input-metadata.json").write_text(json.dumps(metadata))
    seed_ws.close()

    returned = classify_main(
        folder_path=str(tmp_path / "new"),
        output_dir=str(tmp_path / "out"),
        json_file_path=str(tmp_path / "input-metadata.json"),
        bins_number=4,
        model_path=str(models[0].path.parent),
    )
    assert returned is None
    records = json.loads((tmp_path / "out" / "output.json").read_text())
    assert sorted(r["file_name"] for r in records) == sorted(images)
    ws = Workspace(seed_ws.root, load_settings())
    try:
        stored = EmbeddingStore(ws, key).load(list(vectors))
        for image_hash, vector in zip(stored.hashes, stored.vectors, strict=True):
            np.testing.assert_allclose(vector, vectors[image_hash], atol=1e-6)  # the file's vectors, not embedded
        by_hash = {r["hash_id"]: r for r in records}
        for model in models:  # the scores: the fitted estimators on those vectors (scikit-learn's predict_proba)
            estimator = load_estimator(model)
            for image_hash, vector in vectors.items():
                expected = estimator.predict_proba(vector[None, :].astype(np.float64))[0, 1]
                got = next(c for c in by_hash[image_hash]["classifiers"]
                           if c["tag"] == model.tag and c["model_type"] == model.model_type)  # fmt: skip
                assert abs(got["tag_score"] - expected) < 1e-4, (model.name, got, expected)
        assert json.loads((tmp_path / "out" / "bins.json").read_text())["output_bins"] == 4
        # the seed's positional order, through the library's name, on one image file
        library.classify_main(str(tmp_path / "new" / "new0.png"), str(tmp_path / "one"), None, 10,
                              str(models[0].path.parent))  # fmt: skip
        [one] = json.loads((tmp_path / "one" / "output.json").read_text())
        assert one["file_name"] == "new0.png" and len(one["classifiers"]) == len(models)
        with pytest.raises(SeedCompatError, match="needs model_path"):
            classify_main(folder_path=str(tmp_path / "new"))
    finally:
        ws.close()


def test_a_single_image_file_is_classified(seed_ws: Workspace, tmp_path: Path):
    (tmp_path / "lone.png").write_bytes(png("red", 777))
    manager = JobManager(seed_ws)
    job = start_classify(seed_ws, manager, str(tmp_path / "lone.png"), workspace_models(seed_ws), bins=5)
    done = manager.run(job)
    assert done.state == "completed", done.error
    assert done.done == done.total == 1


def test_the_api_finds_an_image_by_a_recorded_seed_hash_id(seed_ws: Workspace):
    """A request never decodes the catalog to find an id: only ids already recorded (an imported seed metadata
    file, a lookup from Python) are found; the answer names the image by its sha256."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    client = TestClient(create_app(seed_ws, "tok"))
    auth = {"Authorization": "Bearer tok"}
    image_hash = seed_ws.catalog.scalar("SELECT hash FROM images ORDER BY hash LIMIT 1")
    hash_id = seed_formula(_stored(seed_ws, image_hash))
    unrecorded = client.get(f"/images/{hash_id}", headers=auth)
    assert unrecorded.status_code == 404 and "seed hash_id" in unrecorded.json()["detail"]
    assert seed_ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases") == 0  # nothing computed for a request
    assert find_image(seed_ws, hash_id) == image_hash  # recorded from Python
    found = client.get(f"/images/{hash_id}", headers=auth)
    assert found.status_code == 200 and found.json()["hash"] == image_hash
    vector = client.get(f"/images/{hash_id}/embedding", headers=auth)
    assert vector.status_code == 200 and vector.json()["hash"] == image_hash and vector.json()["dim"] == 32
    assert client.get(f"/images/{hash_id}/tags", headers=auth).json()["hash"] == image_hash
    assert client.get(f"/images/{hash_id[:100]}", headers=auth).status_code == 422


def test_an_imported_seed_metadata_file_records_its_hash_ids(tmp_path: Path):
    from services.stages.embed.seed_json import start_seed_import, store_seed_vectors

    ws = Workspace(tmp_path / "ws", load_settings())
    files = {}
    for i, colour in enumerate(["red", "green", "blue"]):
        data = png(colour, 600 + i)
        (tmp_path / f"s{i}.png").write_bytes(data)
        files[seed_formula(data)] = (tmp_path / f"s{i}.png", hashlib.sha256(data).hexdigest())
    metadata = {h: {"hash_id": h, "file_path": str(path), "image_tags": ["seedtag"]} for h, (path, _) in files.items()}
    (tmp_path / "input-metadata.json").write_text(json.dumps(metadata))
    manager = JobManager(ws)
    job = start_seed_import(ws, manager, tmp_path / "input-metadata.json", None, "from-seed")
    assert manager.run(job).done == 3
    store_seed_vectors(ws, job, tmp_path / "input-metadata.json")
    assert ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases") == 3
    for hash_id, (_, sha) in files.items():
        got = TagCache().get_tag_by_hash(ws.root, hash_id)
        assert got is not None and got["hash"] == sha and got["tag"] == "seedtag" and got["hash_id"] == hash_id
    assert ws.catalog.scalar("SELECT COUNT(*) FROM image_aliases") == 3  # found from the record, none computed
    ws.close()
