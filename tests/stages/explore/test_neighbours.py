"""Near-duplicate groups, outliers and leaks from the vector index, checked against scikit-learn's exact
neighbours and scipy's connected components on the same vectors, with duplicates and outliers planted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from services.core.datasets import dataset_entries
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.explore import vector_index
from services.stages.explore.neighbours import leaks, near_duplicate_groups, outliers
from services.stages.explore.search import SearchError
from tests.conftest import ROOT, read_csv
from tests.support.cli import run_cli
from tests.support.stored_vectors import store_vectors
from tests.support.tagged_images import png

KEY = "planted-model"
DIM = 24


def _dataset(ws: Workspace, manager: JobManager, root: Path, name: str, n: int, seed0: int) -> list[str]:
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{name}-{i:03d}.png").write_bytes(png("gray", seed0 + i))
    assert manager.run(start_folder_import(ws, manager, folder, name)).state == "completed"
    return [h for h, _, _ in dataset_entries(ws, name)]


@pytest.fixture
def planted(ws: Workspace, manager: JobManager, tmp_path: Path) -> dict[str, object]:
    """Datasets `train` (80 images) and `test` (30): vectors around 6 centres; in train 6 pairs and 2 triples of
    near-copies and 3 outliers (random directions); 4 test images are near-copies of train images."""
    vector_index._RESIDENT.clear()
    train = _dataset(ws, manager, tmp_path, "train", 80, 1000)
    test = _dataset(ws, manager, tmp_path, "test", 30, 2000)
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, DIM)) * 1.5  # members of a centre: cosine about 0.7
    vectors = {h: centres[i % 6] + rng.normal(size=DIM) for i, h in enumerate(train + test)}
    planted_groups = [train[0:2], train[2:4], train[4:6], train[6:8], train[8:10], train[10:12], train[12:15],
                      train[15:18]]  # fmt: skip
    for group in planted_groups:
        for h in group[1:]:
            vectors[h] = vectors[group[0]] + 0.05 * rng.normal(size=DIM)
    odd = train[-3:]
    for h in odd:
        vectors[h] = rng.normal(size=DIM) * 3
    leaked = {test[i]: train[20 + i] for i in range(4)}
    for t, tr in leaked.items():
        vectors[t] = vectors[tr] + 0.05 * rng.normal(size=DIM)
    hashes = list(vectors)
    matrix = np.array([vectors[h] for h in hashes], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    store_vectors(ws, KEY, hashes, matrix)  # as the embed job stores them
    return {"train": train, "test": test, "groups": planted_groups, "odd": odd, "leaked": leaked,
            "matrix": dict(zip(hashes, matrix, strict=True))}  # fmt: skip


def test_groups_are_the_connected_components_of_pairs_over_the_threshold(ws: Workspace, planted: dict):
    train: list[str] = planted["train"]
    matrix = np.array([planted["matrix"][h] for h in train])
    threshold = 0.97
    graph = NearestNeighbors(radius=1 - threshold, metric="cosine", algorithm="brute").fit(matrix)
    adjacency = graph.radius_neighbors_graph(matrix)
    _, labels = connected_components(adjacency, directed=False)
    expected = sorted(sorted(train[i] for i in np.flatnonzero(labels == c)) for c in set(labels))
    expected = [g for g in expected if len(g) > 1]
    found = near_duplicate_groups(ws, KEY, ["train"], threshold, k=10)
    assert sorted(sorted(g.members) for g in found) == expected
    assert sorted(sorted(g) for g in planted["groups"]) == expected  # the planted ones, no more
    assert [len(g.members) for g in found][:2] == [3, 3]  # largest first
    for group in found:
        for a, b, score in group.pairs:
            assert score == pytest.approx(float(planted["matrix"][a] @ planted["matrix"][b]), abs=1e-5)
            assert score >= threshold


def test_uniqueness_is_one_minus_the_mean_cosine_of_the_nearest(ws: Workspace, planted: dict):
    train: list[str] = planted["train"]
    matrix = np.array([planted["matrix"][h] for h in train])
    k = 5
    distances, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(matrix).kneighbors()
    expected = {h: float(d[:k].mean()) for h, d in zip(train, distances, strict=True)}  # itself left out already
    found = outliers(ws, KEY, ["train"], k=k)
    assert len(found) == len(train)
    for o in found:
        assert o.uniqueness == pytest.approx(expected[o.image_hash], abs=1e-4)
    assert {o.image_hash for o in found[:3]} == set(planted["odd"])  # the planted outliers on top


def test_leaks_are_test_images_near_a_training_image(ws: Workspace, planted: dict):
    found = leaks(ws, KEY, "test", "train", threshold=0.97)
    assert {(a, b) for a, b, _ in found} == set(planted["leaked"].items())
    with pytest.raises(SearchError, match="threshold is between -1 and 1"):
        leaks(ws, KEY, "test", "train", threshold=2.0)
    with pytest.raises(SearchError, match="k is 1 to 100"):
        outliers(ws, KEY, ["train"], k=0)


def test_the_cli_lists_groups_outliers_and_leaks(ws: Workspace, planted: dict, tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(ws.root, *args)

    out = tmp_path / "groups.csv"
    groups = cli("duplicates", "--dataset", "train", "--threshold", "0.97", "--csv", str(out))
    assert groups.returncode == 0, groups.stderr[-2000:]
    assert "8 groups, 18 images, at cosine >= 0.97" in groups.stderr
    rows = read_csv(out)
    assert len(rows) == 18 and {r["group"] for r in rows} == {str(n) for n in range(1, 9)}
    assert all(r["name"].startswith("train: ") for r in rows)
    odd = cli("outliers", "--dataset", "train", "--top", "3", "--k", "5")
    assert odd.returncode == 0 and {line.split("\t")[3] for line in odd.stdout.splitlines()} == set(planted["odd"])
    leak = cli("duplicates", "--dataset", "test", "--against", "train", "--threshold", "0.97")
    assert leak.returncode == 0 and "4 images of test have a near-duplicate in train" in leak.stderr
    for args, message in (
        (("duplicates", "--dataset", "nope"), "no dataset named 'nope'"),
        (("duplicates", "--dataset", "train", "--dataset", "test", "--against", "train"), "--against compares one"),
        (("outliers", "--dataset", "train", "--k", "0"), "--k"),  # typer's range check
    ):
        refused = cli(*args)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr


def test_the_explore_page_ranks_outliers_and_lists_leaks(ws: Workspace, planted: dict, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/explore.py").run()
    at.radio(key="ex-mode").set_value("Outliers").run()
    at.multiselect(key="ex-out-datasets").set_value(["train"]).run()
    at.number_input(key="ex-out-k").set_value(5).run()
    at.button(key="ex-out-run").click().run()
    assert not at.exception, at.exception
    expected = outliers(ws, KEY, ["train"], k=5)
    assert len(at.image) == 24
    shown = sorted(image.captions[0].rsplit(" · ", 1)[0] for image in at.image)  # (columns: not in rank order)
    assert shown == sorted(f"{o.uniqueness:.3f} · {o.nearest:.3f}" for o in expected[:24])
    assert {o.image_hash for o in expected[:3]} == set(planted["odd"])  # the planted ones rank first

    at.radio(key="ex-mode").set_value("Leaks").run()
    at.selectbox(key="ex-leak-dataset").set_value("test").run()
    at.selectbox(key="ex-leak-against").set_value("train").run()
    at.number_input(key="ex-leak-threshold").set_value(0.97).run()
    assert not at.exception, at.exception
    assert any("4 images of test have a near-duplicate in train" in w.value for w in at.warning)
    assert len(at.image) == 8  # four pairs: each test image, then its train image
