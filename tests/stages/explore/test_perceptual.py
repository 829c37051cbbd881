"""Edited copies by perceptual hash: scikit-image's photos and copies of two of them (half size, JPEG at
quality 50, 15% brighter, a 3% crop) join their originals' groups where CLIP vectors alone do not; the hashes
are ImageHash's own on the stored files, and the pairs equal a brute-force Hamming count over them."""

from __future__ import annotations

import io
import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance

from services.core.datasets import dataset_entries
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.explore import vector_index
from services.stages.explore.neighbours import near_duplicate_groups
from services.stages.explore.perceptual import (
    DEFAULT_MAX_DISTANCE,
    PhashMissingError,
    phash_pairs,
    phashes,
    start_phash,
    unhashed_images,
)
from tests.support.cli import run_cli
from tests.support.stored_vectors import store_vectors

KEY = "phash-model"
PHOTOS = ["astronaut", "coffee", "rocket", "camera", "coins", "horse", "moon", "page", "text", "hubble_deep_field"]


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _edits(image: Image.Image) -> dict[str, bytes]:
    w, h = image.size
    return {
        "half": _jpeg(image.resize((w // 2, h // 2)), 90),
        "q50": _jpeg(image, 50),
        "bright": _jpeg(ImageEnhance.Brightness(image).enhance(1.15), 90),
        "crop3": _jpeg(image.crop((w * 3 // 100, h * 3 // 100, w - w * 3 // 100, h - h * 3 // 100)), 90),
    }


@pytest.fixture
def photos(ws: Workspace, manager: JobManager, tmp_path: Path) -> dict[str, str]:
    """Dataset `photos`: ten originals (PNG) and four edits of astronaut and coffee; random CLIP vectors (no
    pair near in CLIP space). Returns file stem -> hash."""
    vector_index._RESIDENT.clear()
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)())
        image.save(folder / f"{name}.png")
        if name in ("astronaut", "coffee"):
            for edit, data in _edits(image.convert("RGB")).items():
                (folder / f"{name}-{edit}.jpg").write_bytes(data)
    assert manager.run(start_folder_import(ws, manager, folder, "photos")).state == "completed"
    stems = {Path(name).stem: h for h, _, name in dataset_entries(ws, "photos")}
    rng = np.random.default_rng(0)
    hashes = list(stems.values())
    matrix = rng.normal(size=(len(hashes), 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    store_vectors(ws, KEY, hashes, matrix)  # as the embed job stores them
    return stems


def test_edited_copies_join_their_originals_by_perceptual_hash(ws: Workspace, photos: dict[str, str]):
    assert near_duplicate_groups(ws, KEY, ["photos"], 0.95) == []  # CLIP alone sees nothing here
    groups = near_duplicate_groups(ws, KEY, ["photos"], 0.95, phash_distance=DEFAULT_MAX_DISTANCE)
    expected = [sorted(photos[s] for s in photos if s.startswith(name)) for name in ("astronaut", "coffee")]
    assert sorted(sorted(g.members) for g in groups) == sorted(expected)
    assert all(g.pairs == [] and g.edited and "bits apart" in g.describe() for g in groups)


def test_hashes_are_imagehash_own_and_pairs_a_brute_force_hamming_count(ws: Workspace, photos: dict[str, str]):
    hashes = list(photos.values())
    codes = phashes(ws, hashes)
    assert set(codes) == set(hashes)
    for stem, h in photos.items():
        rel = next(r for x, r, _ in dataset_entries(ws, "photos") if x == h)
        assert codes[h] == int(str(imagehash.phash(Image.open(ws.abspath(rel)))), 16), stem
    stored = ws.catalog.scalar("SELECT COUNT(*) FROM image_phashes")
    assert stored == len(hashes) and phashes(ws, hashes) == codes  # kept, read back equal (unsigned)
    bits = np.unpackbits(np.array(list(codes.values()), dtype=">u8").view(np.uint8).reshape(-1, 8), axis=1)
    names = list(codes)
    brute = {
        (min(names[i], names[j]), max(names[i], names[j]), int((bits[i] != bits[j]).sum()))
        for i in range(len(names)) for j in range(i + 1, len(names)) if (bits[i] != bits[j]).sum() <= 12
    }  # fmt: skip
    assert set(phash_pairs(codes, 12)) == brute and brute
    with pytest.raises(ValueError, match="0 to 32 bits"):
        phash_pairs(codes, 40)


def test_the_cli_joins_edited_copies(ws: Workspace, photos: dict[str, str]):
    done = run_cli(ws.root, "duplicates", "--dataset", "photos", "--phash", "12")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 groups, 10 images, at cosine >= 0.95 or perceptual hashes <= 12 bits apart" in done.stderr
    assert "perceptual hashes 0 bits apart" in done.stdout
    refused = run_cli(ws.root, "duplicates", "--dataset", "photos", "--phash", "40")
    assert refused.returncode != 0 and "--phash" in refused.stderr and "Traceback" not in refused.stderr


def test_a_phash_job_computes_each_image_once_and_the_groups_read_them(
    ws: Workspace, manager: JobManager, photos: dict[str, str], tmp_path: Path
):
    """The job stores ImageHash's own code per image (read back by the groups without computing), a rerun has
    nothing left to do, and more missing hashes than the inline limit is an error that says to run the job."""
    hashes = list(photos.values())
    with pytest.raises(PhashMissingError, match=f"{len(hashes)} images have no perceptual hash yet"):
        phashes(ws, hashes, max_inline=3)
    assert unhashed_images(ws, ["photos"]) == len(hashes)
    progress = manager.run(start_phash(ws, manager, "photos"))
    assert progress.state == "completed" and progress.done == len(hashes) and progress.failed == 0
    assert unhashed_images(ws, ["photos"]) == 0
    codes = phashes(ws, hashes, max_inline=0)  # all stored by the job: nothing computed here
    for h, rel, _ in dataset_entries(ws, "photos"):
        assert codes[h] == int(str(imagehash.phash(Image.open(ws.abspath(rel)))), 16)
    assert ws.catalog.scalar("SELECT COUNT(*) FROM image_phashes") == 0  # the job's results, not a second store
    again = manager.run(start_phash(ws, manager, "photos"))
    assert again.state == "completed" and again.failed == 0
    cached = ws.catalog.scalar("SELECT COUNT(*) FROM job_items WHERE job_id = ? AND result = '{\"cached\": true}'",
                               (again.id,))  # fmt: skip
    assert cached == len(hashes)  # every image marked done at planning: none decoded again
    groups = near_duplicate_groups(ws, KEY, ["photos"], 0.95, phash_distance=DEFAULT_MAX_DISTANCE)
    assert sorted(len(g.members) for g in groups) == [5, 5]

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (40, 30), "red").save(broken / "red.png")
    assert manager.run(start_folder_import(ws, manager, broken, "broken")).state == "completed"
    (rel,) = [r for _, r, _ in dataset_entries(ws, "broken")]
    ws.abspath(rel).unlink()  # the stored file is gone: the item fails, named, and the job goes on
    gone = manager.run(start_phash(ws, manager, "broken"))
    assert gone.failed == 1 and manager.failure_counts(gone.id) == {"missing": 1}
    done = run_cli(ws.root, "phash", "--dataset", "photos")
    assert done.returncode == 0 and "perceptual hashes for 'photos'" in done.stdout, done.stderr[-2000:]
    unknown = run_cli(ws.root, "phash", "--dataset", "nope")
    assert unknown.returncode != 0 and "no dataset named 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_the_duplicates_view_offers_the_job_when_many_hashes_are_missing(
    ws: Workspace, photos: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    from streamlit.testing.v1 import AppTest

    from services.stages.explore import perceptual
    from tests.conftest import ROOT

    monkeypatch.setattr(perceptual, "MAX_INLINE", 3)  # the demo-sized dataset stands for a large one
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/explore.py").run()
    at.radio(key="ex-mode").set_value("Duplicates").run()
    at.checkbox(key="ex-dup-phash").check().run()
    assert not at.exception, at.exception
    assert any(f"{len(photos)} images of photos have no perceptual hash yet" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "ex-dup-run"]  # no groups until the hashes are there
    at.button(key="ex-dup-phash-start").click().run()
    assert not at.exception, at.exception
    deadline = time.time() + 120
    while time.time() < deadline and perceptual.unhashed_images(ws, ["photos"]):
        time.sleep(0.5)
    assert perceptual.unhashed_images(ws, ["photos"]) == 0
    at.run()
    at.button(key="ex-dup-run").click().run()
    assert not at.exception, at.exception
    groups = [c.value for c in at.caption if c.value.startswith("Group ")]
    assert len(groups) == 2 and all("5 images" in g and "perceptual hashes" in g for g in groups), groups
