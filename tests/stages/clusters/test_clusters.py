"""Clusters of two sets: known clusters recovered, lift checked by hand, hostile text escaped in the report."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from services.core.workspace import Workspace
from services.io.embedding_store import EmbeddingStore
from services.stages.clusters.clustering import (
    cluster_labels,
    cluster_sets,
    keyword_shifts,
    smoothed_lift,
    top_keywords,
)
from services.stages.compare.label_sets import compare_sets, import_categorized_csv
from services.stages.compare.report import cluster_section, html_report
from tests.conftest import ROOT, write_csv


def blobs(n_per: int, centres: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim)) * 6
    labels = np.repeat(np.arange(centres), n_per)
    return centre[labels] + rng.standard_normal((len(labels), dim)) * 0.5, labels


@pytest.mark.parametrize("method", ["hdbscan", "kmeans"])
def test_known_clusters_are_recovered(method: str):
    from sklearn.metrics import adjusted_rand_score

    x, truth = blobs(60, 5) if method == "hdbscan" else blobs(16, 16)  # kmeans: k ~ sqrt(256) = 16
    labels, name = cluster_labels(x, method)
    assert adjusted_rand_score(truth, labels) > 0.9, name


def test_lift_by_hand():
    share_a, share_b, lift = smoothed_lift(9, 100, 29, 200, 3)
    assert share_a == pytest.approx(10 / 103) and share_b == pytest.approx(30 / 203)
    assert lift == pytest.approx(math.log2((30 / 203) / (10 / 103)))
    assert smoothed_lift(0, 10, 0, 10, 2)[2] == 0.0  # empty in both: no shift, no division by zero
    shifts = {k.keyword: k for k in keyword_shifts(["red car", "red bus", "blue sky"], ["green tree", "green car"])}
    assert (shifts["green"].n_a, shifts["green"].n_b) == (0, 2)
    assert shifts["green"].lift == pytest.approx(math.log2((3 / 4) / (1 / 5)))
    assert top_keywords({0: ["red red car", "red bus"], 1: ["green tree"]})[0][0] == "red"


def test_clusters_on_embeddings_and_on_descriptions(ws: Workspace, tmp_path: Path):
    rows_a = [
        [f"a{i}.jpg", "a tabby cat sleeping on a sofa" if i < 30 else "a red bus in the city", "x"] for i in range(40)
    ]
    rows_b = [
        [f"b{i}.jpg", "a tabby cat sleeping on a sofa" if i < 10 else "a red bus in the city", "x"] for i in range(40)
    ]
    a = import_categorized_csv(ws, write_csv(tmp_path / "A.csv", ["image_name", "description", "categories"], rows_a))
    b = import_categorized_csv(ws, write_csv(tmp_path / "B.csv", ["image_name", "description", "categories"], rows_b))
    report = cluster_sets(ws, a, b, method="kmeans")
    assert report.features.startswith("descriptions")
    bus = next(c for c in report.clusters if "bus" in c.keywords)
    cat = next(c for c in report.clusters if "cat" in c.keywords)
    assert bus.lift > 0 > cat.lift  # B has more buses, fewer cats
    assert bus.n_a + cat.n_a <= 40 and sum(c.n_b for c in report.clusters) == 40
    # on stored vectors instead: two well separated groups, B all in the second
    x, _ = blobs(20, 2, dim=8)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = EmbeddingStore(ws, "k")
    store.write_shard([f"a{i}.jpg" for i in range(20)] + [f"b{i}.jpg" for i in range(20)], x.astype(np.float32))
    on_vectors = cluster_sets(ws, a, b, embedding="k", method="kmeans")
    assert on_vectors.features.startswith("CLIP image embeddings")
    assert sum(c.n_a for c in on_vectors.clusters) == 20 == sum(c.n_b for c in on_vectors.clusters)
    assert all(c.n_a == 0 or c.n_b == 0 for c in on_vectors.clusters)  # the two groups never mix


def test_hostile_description_text_is_escaped(ws: Workspace, tmp_path: Path):
    evil = '<script>alert("x")</script> <img src=x onerror=alert(1)>'
    rows = [[f"e{i}.jpg", f"{evil} gizmo number {i % 3}", "things"] for i in range(30)]
    a = import_categorized_csv(ws, write_csv(tmp_path / "E1.csv", ["image_name", "description", "categories"], rows))
    b = import_categorized_csv(ws, write_csv(tmp_path / "E2.csv", ["image_name", "description", "categories"],
                                             [[r[0].replace("e", "f"), r[1], r[2]] for r in rows]))  # fmt: skip
    report = cluster_sets(ws, a, b, method="kmeans")
    section = cluster_section(report)
    out = html_report(compare_sets(ws, a, b), tmp_path / "r.html", sections=[section])
    text = out.read_text()
    assert "<script>alert" not in text and "onerror=alert" not in section


def test_clusters_cli_and_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.support.label_csvs import synthetic

    real = synthetic(tmp_path / "REAL_c.csv", 120, {"people": 0.2, "city": 0.5}, 5)
    gen = synthetic(tmp_path / "GEN_c.csv", 120, {"people": 0.6, "city": 0.2}, 6)
    for path, words in ((real, "busy city street"), (gen, "smiling person portrait")):
        text = path.read_text().replace("a description", words)
        path.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "ws"), "clusters", "--a", str(real), "--b",
         str(gen), "--method", "kmeans", "--out", str(tmp_path / "clusters.html")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "clusters by MiniBatchKMeans" in run.stdout and "Clusters (" in (tmp_path / "clusters.html").read_text()
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/compare.py").run()
    at.button(key="cmp-clusters").click().run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "log2 lift" in d.value.columns)
    assert len(table) >= 2 and table["keywords"].str.contains("city|person|portrait|street").any()


def test_csv_sets_cluster_on_the_vectors_of_the_images_their_names_link_to(ws: Workspace, tmp_path: Path):
    """A CSV set names files; its vectors are stored under the imported images' hashes. Clusters use them and
    report the CSV's names (so the page's thumbnails and the report's strips find the images)."""
    from services.core.datasets import dataset_entries
    from services.jobs.manager import JobManager
    from services.stages.download.folder_import import start_folder_import
    from tests.support.fake_gemini import make_colour_png

    manager = JobManager(ws)
    x, _ = blobs(12, 2, dim=8, seed=3)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for name, colour, rows in (("real", "red", range(0, 12)), ("gen", "blue", range(12, 24))):
        (tmp_path / name).mkdir()
        for i in range(12):
            (tmp_path / name / f"{name}{i}.png").write_bytes(make_colour_png(colour, noise_seed=i))
        manager.run(start_folder_import(ws, manager, tmp_path / name, f"{name}-images"))
        entries = {item: h for h, _, item in dataset_entries(ws, f"{name}-images")}
        EmbeddingStore(ws, "k").write_shard([entries[f"{name}{i}.png"] for i in range(12)],
                                            x[list(rows)].astype(np.float32))  # fmt: skip
        write_csv(tmp_path / f"{name}.csv", ["image_name", "description", "categories"],
                  [[f"{name}{i}.png", "a square", "shapes"] for i in range(12)])  # fmt: skip
    a = import_categorized_csv(ws, tmp_path / "real.csv")
    b = import_categorized_csv(ws, tmp_path / "gen.csv")
    report = cluster_sets(ws, a, b, embedding="k", method="kmeans")
    assert report.features.startswith("CLIP image embeddings")
    assert set(report.labels_a) == {f"real{i}.png" for i in range(12)}
    assert all(c.n_a == 0 or c.n_b == 0 for c in report.clusters)  # blob 0 is A's, blob 1 is B's
