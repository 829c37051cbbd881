"""Embed & Train: tagged import (folders, nested zips), the embedding store, per-tag classifiers, seed JSON."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from services.compat.seed004 import FileCache
from services.core.datasets import DatasetError, dataset_entries, dataset_tags
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, ModelUnavailableError, load_clip
from services.io.embedding_store import EMBED_STAGE, EmbeddingStore, embedding_key
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.embed.seed_json import (
    export_seed_json,
    metadata_only_count,
    start_seed_import,
    store_seed_vectors,
)
from services.stages.embed.stage import start_embed
from services.stages.train.models import ModelFileError, list_models, load_estimator
from services.stages.train.stage import start_training, trainable_tags
from tests.conftest import ROOT
from tests.support.tagged_images import TAGS, png, tagged_tree
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipSpec:
    path = save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    return ClipSpec(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(path), device="cpu")


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return digest.hexdigest()


def import_tree(ws: Workspace, tmp_path: Path, name: str = "tagged", per_tag: int = 16) -> str:
    root = tagged_tree(tmp_path / name, per_tag)
    manager = JobManager(ws)
    p = manager.run(start_folder_import(ws, manager, root, name))
    assert p.state == "completed", p.error
    return name


def test_tagged_import_reads_nested_zips_refuses_bad_members_and_never_changes_input(ws: Workspace, tmp_path: Path):
    root = tagged_tree(tmp_path / "tagged")
    (root / "green" / "copy-of-red0.png").write_bytes(png("red", 0))  # the same image under two tags
    before = tree_digest(root)
    manager = JobManager(ws)
    job = start_folder_import(ws, manager, root, "tagged")
    p = manager.run(job)
    assert tree_digest(root) == before  # nothing in the input was changed or removed
    failures = {f["item_key"]: (f["error_class"], f["error_message"]) for f in manager.failures(job)}
    assert failures["more.zip!../evil.png"] == ("refused", "path with '..'")
    assert failures["more.zip!red/link.png"] == ("refused", "symbolic link")
    assert failures["more.zip!notes.txt"] == ("refused", "not an image file")
    assert failures["red/broken.png"][0] == "not_image"
    assert p.failed == 4 and p.done == 3 * 16 + 48 + 4 + 1 + 1
    assert manager.retryable_failures(job) == 0  # refusals and non-images: no retry can fix them
    tags = dataset_tags(ws, "tagged")
    by_name = {name: h for h, _, name in dataset_entries(ws, "tagged")}
    assert tags[hashlib.sha256(png("red", 0)).hexdigest()] == {"red", "green"}
    assert tags[by_name["more.zip!nested.zip!blue/zb16.png"]] == {"blue"}
    assert tags[by_name["more.zip!red/zr.png"]] == {"red"}
    assert trainable_tags(ws, "tagged") == {"blue": 20, "green": 17, "red": 17}
    sources = dict(ws.catalog.query("SELECT locator, kind FROM image_sources"))
    assert sources[f"{root}/more.zip!nested.zip!blue/zb16.png"] == "zip"
    # a second import of the same tree stores nothing new
    again = manager.run(start_folder_import(ws, manager, root, "tagged"))
    assert again.done == p.done and ws.catalog.scalar("SELECT COUNT(*) FROM images") == 3 * 16 + 48 + 4 + 1


def test_a_zip_dataset_and_a_zip_too_deep(ws: Workspace, tmp_path: Path):
    level3 = io.BytesIO()
    with zipfile.ZipFile(level3, "w") as zf:
        zf.writestr("deep.png", png("red", 1))
    level2 = io.BytesIO()
    with zipfile.ZipFile(level2, "w") as zf:
        zf.writestr("l3.zip", level3.getvalue())
    level1 = io.BytesIO()
    with zipfile.ZipFile(level1, "w") as zf:
        zf.writestr("l2.zip", level2.getvalue())
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        zf.writestr("l1.zip", level1.getvalue())
        zf.writestr("cats/c.png", png("orange", 2))
        zf.writestr("top.png", png("gray", 3))
    manager = JobManager(ws)
    job = start_folder_import(ws, manager, tmp_path / "set.zip")
    p = manager.run(job)
    assert p.done == 2
    tags = {name: dataset_tags(ws, "set")[h] for h, _, name in dataset_entries(ws, "set")}
    assert tags == {"cats/c.png": {"cats"}, "top.png": {"set"}}  # a member at the zip's root: the zip's name
    [(key, (cls, reason))] = [(f["item_key"], (f["error_class"], f["error_message"])) for f in manager.failures(job)]
    assert key == "l1.zip!l2.zip!l3.zip" and "nested deeper than 2 levels" in reason
    with pytest.raises(DatasetError, match="not a folder, a .zip file or an image file"):
        start_folder_import(ws, manager, tmp_path / "nothing-here")


def test_embed_stores_each_vector_once_and_matches_the_model(ws: Workspace, tmp_path: Path, tiny_clip: ClipSpec):
    from PIL import Image

    dataset = import_tree(ws, tmp_path, per_tag=6)
    manager = JobManager(ws)
    job = start_embed(ws, manager, dataset, tiny_clip, batch_size=8, loader_workers=1)
    p = manager.run(job)
    n = len(dataset_entries(ws, dataset))
    assert (p.state, p.done, p.failed) == ("completed", n, 0)
    key = embedding_key(tiny_clip)
    stored = EmbeddingStore(ws, key).load()
    assert len(stored) == n and stored.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(stored.vectors, axis=1), 1.0, atol=1e-5)
    loaded = load_clip(tiny_clip)
    sample = stored.hashes[:5]
    paths = dict(ws.catalog.query("SELECT hash, path FROM images"))
    direct = loaded.embed_images([Image.open(ws.abspath(paths[h])).convert("RGB") for h in sample])
    assert np.allclose(EmbeddingStore(ws, key).load(sample).vectors, direct, atol=1e-5)
    shards = EmbeddingStore(ws, key).shards()
    again = manager.run(start_embed(ws, manager, dataset, tiny_clip))
    assert again.done == n and EmbeddingStore(ws, key).shards() == shards  # nothing recomputed
    assert ws.catalog.stage_done(EMBED_STAGE, key, stored.hashes) == set(stored.hashes)


def test_embed_without_weights_fails_in_seconds(ws: Workspace, tmp_path: Path):
    dataset = import_tree(ws, tmp_path, per_tag=2)
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="models pull ViT-B-32/openai"):
        start_embed(ws, JobManager(ws), dataset, ClipSpec("ViT-B-32", "openai"))
    assert time.monotonic() - started < 5


def test_store_compaction_and_duplicates(ws: Workspace):
    store = EmbeddingStore(ws, "k")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    store.write_shard([f"h{i}" for i in range(5)], a)
    store.write_shard(["h4", "h5", "h6"], b)  # h4 again (a resumed run): the first copy wins
    (store.folder / "half-written.npy").write_bytes(b"junk")  # a shard without its hash list is ignored
    got = store.load()
    assert got.hashes == [f"h{i}" for i in range(7)] and np.array_equal(got.vectors[4], a[4])
    assert store.compact(rows_per_shard=4) == 2
    assert len(store.shards()) == 2 and store.load().hashes == got.hashes
    assert np.array_equal(store.load(["h6", "h0", "nope"]).vectors, got.vectors[[6, 0]])
    assert store.stored_hashes() == {f"h{i}" for i in range(7)}
    with pytest.raises(ValueError, match="3 hashes for 2 vectors"):
        store.write_shard(["a", "b", "c"], a[:2])


def test_training_learns_the_tags_and_saves_safe_models(ws: Workspace, tmp_path: Path, tiny_clip: ClipSpec):
    dataset = import_tree(ws, tmp_path, per_tag=16)
    manager = JobManager(ws)
    assert manager.run(start_embed(ws, manager, dataset, tiny_clip, loader_workers=0)).state == "completed"
    key = embedding_key(tiny_clip)
    job = start_training(ws, manager, dataset, key, cv_folds=3, test_size=0.25)
    p = manager.run(job)
    assert (p.state, p.done, p.failed) == ("completed", 3, 0), p.error
    models = list_models(ws, dataset, key)
    assert sorted(m.name for m in models) == sorted(
        f"model-{t}-tag-{tag}" for t in ("ovr-logistic-regression", "ovr-svm") for tag in TAGS
    )
    stored = EmbeddingStore(ws, key).load()
    for m in models:
        metrics = m.manifest["metrics"]
        assert metrics["average_precision"] >= 0.95, (m.name, metrics)
        assert metrics["negatives"] == "other-training" and metrics["cv_folds"] == 3
        assert metrics["tp"] + metrics["fn"] == metrics["n_test_positive"]
        report = m.path.with_name(m.path.stem.replace("model-", "report-") + ".txt").read_text()
        assert f"tag: {m.tag}" in report and "confusion matrix" in report
        estimator = load_estimator(m)
        w, bias, scale, shift = m.linear
        linear = 1.0 / (1.0 + np.exp(-(scale * (stored.vectors.astype(np.float64) @ w + bias) + shift)))
        assert np.allclose(linear, estimator.predict_proba(stored.vectors)[:, 1], atol=1e-6)
    tampered = models[0]
    tampered.path.write_bytes(tampered.path.read_bytes() + b"x")
    with pytest.raises(ModelFileError, match="differ from its manifest"):
        load_estimator(tampered)


def test_training_checks_its_inputs(ws: Workspace, tmp_path: Path, tiny_clip: ClipSpec):
    dataset = import_tree(ws, tmp_path, per_tag=3)
    manager = JobManager(ws)
    key = embedding_key(tiny_clip)
    with pytest.raises(DatasetError, match="have no .* embedding; run `embed` first"):
        start_training(ws, manager, dataset, key)
    manager.run(start_embed(ws, manager, dataset, tiny_clip, loader_workers=0))
    with pytest.raises(DatasetError, match=r"tags \['purple'\] not in dataset"):
        start_training(ws, manager, dataset, key, tags=["purple"])
    with pytest.raises(DatasetError, match="model types"):
        start_training(ws, manager, dataset, key, types=["forest"])
    job = start_training(ws, manager, dataset, key, tags=["green"])  # 3 images: too few to split
    p = manager.run(job)
    assert p.failed == 1 and manager.failure_counts(job) == {"too_few": 1}


def _embedded_and_exported(tmp_path: Path, spec: ClipSpec) -> tuple[Workspace, str, str, Path, Path, int]:
    """A tagged tree imported and embedded in a first workspace, then exported as seed 004's JSON files."""
    source = Workspace(tmp_path / "ws1", load_settings())
    dataset = import_tree(source, tmp_path, per_tag=8)
    manager = JobManager(source)
    manager.run(start_embed(source, manager, dataset, spec, loader_workers=0))
    key = embedding_key(spec)
    meta, tags_file, n = export_seed_json(source, dataset, key, tmp_path / "out")
    return source, dataset, key, meta, tags_file, n


def test_seed_json_round_trip_trains_without_embedding_again(tmp_path: Path, tiny_clip: ClipSpec):
    source, dataset, _, meta, tags_file, n = _embedded_and_exported(tmp_path, tiny_clip)
    data = json.loads(meta.read_text())
    entry = next(iter(data.values()))
    assert {"hash_id", "file_name", "file_path", "image_format", "image_size_bytes", "image_resolution",
            "image_tags", "embeddings_vector"} <= set(entry)  # fmt: skip
    assert sorted(json.loads(tags_file.read_text())) == ["blue", "green", "other-training", "red"]

    target = Workspace(tmp_path / "ws2", load_settings())
    manager2 = JobManager(target)
    # the seed files name the images by path and hash; the vectors say which model made them
    for value in data.values():
        value["model"], value["pretrained"] = tiny_clip.model, "imported"
    meta.write_text(json.dumps(data))
    job = start_seed_import(target, manager2, meta, tags_file, "imported")
    assert manager2.run(job).done == n
    counts = store_seed_vectors(target, job, meta)
    imported_key = embedding_key(ClipSpec(model=tiny_clip.model, pretrained="imported"))
    assert counts == {imported_key: n}
    assert dataset_tags(target, "imported") == dataset_tags(source, dataset)
    p = manager2.run(start_training(target, manager2, "imported", imported_key))
    assert p.done == 3 and all(m.manifest["metrics"]["average_precision"] > 0.9 for m in list_models(target))
    source.close()
    target.close()


def test_seed_metadata_without_its_image_files_keeps_tags_and_vectors_and_trains(tmp_path: Path, tiny_clip: ClipSpec):
    from PIL import Image

    source, dataset, key, meta, tags_file, n = _embedded_and_exported(tmp_path, tiny_clip)
    data, by_tag = json.loads(meta.read_text()), json.loads(tags_file.read_text())
    seed_id: dict[str, str] = {}  # our sha256 -> seed 004's hash_id (blake2b of the pixels, as the seed named them)
    absent: dict[str, dict[str, object]] = {}
    for i, (sha, entry) in enumerate(sorted(data.items())):
        with Image.open(str(entry["file_path"])) as im:
            seed_id[sha] = hashlib.blake2b(im.tobytes()).hexdigest()
        entry.update(hash_id=seed_id[sha], model=tiny_clip.model, pretrained="imported")
        if i % 2:  # every other file is not on this machine
            entry["file_path"] = str(tmp_path / "elsewhere" / Path(str(entry["file_path"])).name)
            absent[seed_id[sha]] = entry
    meta.write_text(json.dumps({seed_id[sha]: entry for sha, entry in data.items()}))
    tags_file.write_text(json.dumps({tag: [seed_id[h] for h in hashes] for tag, hashes in by_tag.items()}))

    target = Workspace(tmp_path / "ws2", load_settings())
    manager2 = JobManager(target)
    job = start_seed_import(target, manager2, meta, tags_file, "imported")
    progress = manager2.run(job)
    assert (progress.done, progress.failed) == (n, 0)
    assert metadata_only_count(target, job) == len(absent) == n // 2
    imported_key = embedding_key(ClipSpec(model=tiny_clip.model, pretrained="imported"))
    assert store_seed_vectors(target, job, meta) == {imported_key: n}

    alias = dict(target.catalog.query("SELECT image_hash, alias FROM image_aliases"))
    by_seed_id = {alias[h]: tags for h, tags in dataset_tags(target, "imported").items()}
    assert by_seed_id == {seed_id[h]: tags for h, tags in dataset_tags(source, dataset).items()}
    assert len(dataset_entries(target, "imported")) == n - len(absent)  # pixel stages see only stored files
    for image_hash, hash_id in alias.items():
        row = target.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (image_hash,)).fetchone()
        if hash_id in absent:  # the file's facts as the metadata recorded them, no stored file
            entry = absent[hash_id]
            assert row["path"] is None and row["format"] == entry["image_format"]
            assert (row["bytes"], [row["width"], row["height"]]) == (
                entry["image_size_bytes"],
                entry["image_resolution"],
            )
        else:
            assert row["path"] is not None
    gone = next(iter(absent))  # seed 004's FileCache names it where the seed had it, with no stored file
    described = FileCache().get_img_by_hash(target.root, gone)
    assert described is not None and described["file_path"] == absent[gone]["file_path"]
    assert described["stored_path"] is None
    stored = EmbeddingStore(target, imported_key).load(list(alias))
    original = EmbeddingStore(source, key).load(list(seed_id))
    source_row = {seed_id[h]: v for h, v in zip(original.hashes, original.vectors, strict=True)}
    for h, v in zip(stored.hashes, stored.vectors, strict=True):
        np.testing.assert_allclose(v, source_row[alias[h]], atol=1e-6)

    again = start_seed_import(target, manager2, meta, tags_file, "imported-again")  # no second row per image
    assert manager2.run(again).done == n
    assert target.catalog.scalar("SELECT COUNT(*) FROM images") == n
    p = manager2.run(start_training(target, manager2, "imported", imported_key))
    assert p.done == 3 and all(m.manifest["metrics"]["average_precision"] > 0.9 for m in list_models(target))
    source.close()
    target.close()


def test_cli_import_embed_train_list_export(tmp_path: Path, tiny_clip: ClipSpec):
    root = tagged_tree(tmp_path / "cli-set", per_tag=8)
    ws_root = tmp_path / "ws"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services", "--workspace", str(ws_root), *args], cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    imported = cli("import-tagged", str(root), "--dataset", "set")
    assert imported.returncode == 0 and "failures by class: refused=3, not_image=1" in imported.stdout
    model = ["--model", TINY_CLIP_NAME, "--checkpoint", tiny_clip.checkpoint]
    embedded = cli("embed", "--dataset", "set", *model, "--batch-size", "16", "--loader-workers", "1")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    trained = cli("train", "--dataset", "set", "--tags", "red,blue", "--types", "lr", "--test_per", "0.3", *model)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "model-ovr-logistic-regression-tag-red\tAP" in trained.stdout
    manifests = [json.loads(f.read_text()) for f in (ws_root / "models").rglob("model-*.json")]
    assert len(manifests) == 2 and all(m["test_size"] == 0.3 for m in manifests)  # seed 004's --test_per
    listed = cli("tag-models", "--dataset", "set")
    assert sum(line.startswith("model-ovr-logistic-regression-tag-") for line in listed.stdout.splitlines()) == 2
    exported = cli("export-tagged", "--dataset", "set", "--out", str(tmp_path / "seed"), *model)
    assert exported.returncode == 0 and (tmp_path / "seed" / "input-metadata.json").is_file()
    offline = cli("embed", "--dataset", "set")
    assert offline.returncode == 2 and "models pull ViT-B-32/openai" in offline.stderr
