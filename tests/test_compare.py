"""Compare REAL vs GEN: label sets from CSVs and Gemini results, statistics against scipy, FD and KID on
Gaussians with known answers, confounds, the report and the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import binomtest, chi2_contingency, false_discovery_control

from services.categories import save_list
from services.compare import (
    FAILED,
    CompareError,
    compare_sets,
    import_categorized_csv,
    items_with_label,
    label_counts,
    label_set_from_gemini,
    newcombe,
    split_categories,
    wilson,
)
from services.compare_embeddings import (
    compare_embeddings,
    confounds,
    domain_auc,
    frechet_distance,
    jpeg_quality,
    kernel_inception_distance,
    near_duplicates,
)
from services.compare_report import difference_figure, grouped_figure, html_report, write_tables
from services.embeddings import EmbeddingStore
from services.workspace import Workspace
from tests.conftest import ROOT, read_csv, write_csv

HEADER = ["image_name", "description", "categories"]


def categorised(path: Path, rows: list[tuple[str, str]]) -> Path:
    return write_csv(path, HEADER, [[name, "a description", cats] for name, cats in rows])


def synthetic(path: Path, n: int, shares: dict[str, float], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cats = [c for c, p in shares.items() if rng.random() < p] or ["unknown"]
        rows.append((f"{path.stem}_{i}.jpg", ", ".join(cats)))
    return categorised(path, rows)


def test_csv_import_keeps_unknown_and_failed_apart(ws: Workspace, tmp_path: Path):
    path = categorised(tmp_path / "REAL_set.csv", [
        ("a.jpg", "Food, Animals"), ("b.jpg", "animals"), ("c.jpg", "unknown"), ("d.jpg", "ERROR: 500 from API"),
        ("e.jpg", ""), ("f.jpg", "Food,  Food"),
    ])  # fmt: skip
    real = import_categorized_csv(ws, path)
    assert real.name == "REAL_set" and real.items == 6
    assert label_counts(ws, real) == {"Food": 2, "Animals": 1, "animals": 1, "unknown": 2, FAILED: 1}
    assert split_categories("Food, Animals") == ["Food", "Animals"] and split_categories("") == ["unknown"]
    assert ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows") == 6  # the CSV is a dataset too
    again = import_categorized_csv(ws, path)  # re-import replaces, never doubles
    assert again.items == 6 and sum(label_counts(ws, again).values()) == 7
    with pytest.raises(CompareError, match="needs image_name and categories"):
        import_categorized_csv(ws, write_csv(tmp_path / "bad.csv", ["name", "x"], [["a", "b"]]))


def test_statistics_match_scipy(ws: Workspace, tmp_path: Path):
    a = import_categorized_csv(ws, synthetic(tmp_path / "REAL.csv", 400, {"city": 0.3, "food": 0.2, "dog": 0.02}, 1))
    b = import_categorized_csv(ws, synthetic(tmp_path / "GEN.csv", 300, {"city": 0.5, "food": 0.2, "cat": 0.1}, 2))
    result = compare_sets(ws, a, b, "g-test")
    by = {s.category: s for s in result.categories}
    assert set(by) == {"city", "food", "dog", "cat"}  # every category of either set, not one set's top
    ca, cb = label_counts(ws, a), label_counts(ws, b)
    for cat, stat in by.items():
        table = np.array([[ca.get(cat, 0), a.items - ca.get(cat, 0)], [cb.get(cat, 0), b.items - cb.get(cat, 0)]])
        expected = chi2_contingency(table, correction=False, lambda_="log-likelihood")
        assert stat.statistic == pytest.approx(expected.statistic) and stat.p_value == pytest.approx(expected.pvalue)
    tested = [s for s in result.categories if s.p_value is not None]
    assert [s.q_value for s in tested] == pytest.approx(list(false_discovery_control([s.p_value for s in tested])))
    assert by["city"].q_value < 1e-3 and by["food"].q_value > 0.05
    assert "unreliable" in (by["dog"].warning or "") or "unreliable" in (by["cat"].warning or "")
    chi = compare_sets(ws, a, b, "chi-square")
    table = np.array([[ca["city"], a.items - ca["city"]], [cb["city"], b.items - cb["city"]]])
    assert {s.category: s for s in chi.categories}["city"].statistic == pytest.approx(
        chi2_contingency(table, correction=False).statistic
    )
    cats = sorted(by, key=str.lower)
    p = np.array([ca.get(c, 0) for c in cats], float)
    q = np.array([cb.get(c, 0) for c in cats], float)
    assert result.jsd == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)
    with pytest.raises(CompareError, match="g-test or chi-square"):
        compare_sets(ws, a, b, "t-test")


def test_intervals_match_scipy_and_newcombes_example():
    for k, n in ((0, 10), (7, 20), (81, 263), (20, 20)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    low, high = newcombe(48, 80, 56, 70)  # Newcombe (1998), example (a): 56/70 - 48/80, method 10
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def test_frechet_distance_and_kid_on_gaussians_with_known_answers():
    rng = np.random.default_rng(0)
    d = 8
    x = rng.standard_normal((20_000, d))
    shifted = rng.standard_normal((20_000, d)) + 1.0  # same covariance: FD = |mu_x - mu_y|^2 = d
    assert frechet_distance(x, shifted) == pytest.approx(d, rel=0.05)
    scaled = rng.standard_normal((20_000, d)) * 2.0  # FD = d * (1 + 4 - 2 * 2) = d
    assert frechet_distance(x, scaled) == pytest.approx(d, rel=0.05)
    same = rng.standard_normal((20_000, d))
    assert frechet_distance(x, same) == pytest.approx(0.0, abs=0.02)
    assert abs(kernel_inception_distance(x, same, subsets=20, subset_size=500)) < 0.01  # unbiased: ~0
    assert kernel_inception_distance(x, shifted, subsets=20, subset_size=500) > 0.1
    assert domain_auc(x[:500], same[:500]) == pytest.approx(0.5, abs=0.08)
    assert domain_auc(x[:500], shifted[:500]) > 0.95
    unit = x[:50] / np.linalg.norm(x[:50], axis=1, keepdims=True)
    pairs = near_duplicates([f"a{i}" for i in range(50)], unit, ["b0", "b1"], unit[[3, 7]] * 1.0)
    assert {(a, b) for a, b, _ in pairs} >= {("a3", "b0"), ("a7", "b1")}


def test_embedding_comparison_from_the_store_warns_on_small_sets(ws: Workspace):
    rng = np.random.default_rng(1)
    store = EmbeddingStore(ws, "k")
    a = rng.standard_normal((40, 16)).astype(np.float32)
    b = (rng.standard_normal((30, 16)) + 0.5).astype(np.float32)
    store.write_shard([f"a{i}" for i in range(40)], a / np.linalg.norm(a, axis=1, keepdims=True))
    store.write_shard([f"b{i}" for i in range(30)], b / np.linalg.norm(b, axis=1, keepdims=True))
    labels = {"cat": {"a": {f"a{i}" for i in range(10)}, "b": {f"b{i}" for i in range(10)}}}
    result = compare_embeddings(ws, "k", [f"a{i}" for i in range(40)], [f"b{i}" for i in range(30)], labels)
    assert result.n_a == 40 and result.coords.shape == (70, 2) and result.fd > 0 and result.auc > 0.5
    assert result.per_category["cat"]["n_a"] == 10
    assert not result.warnings  # 40 and 30 vectors of 16 dimensions
    with pytest.raises(ValueError, match="embed them first"):
        compare_embeddings(ws, "k", ["nope"], ["b1"])


def test_sets_from_gemini_results_and_galleries(ws: Workspace, tmp_path: Path):
    from services.describe import CATEGORIZE_STAGE, categorize_settings_hash
    from services.folder_import import start_folder_import
    from services.jobs import JobManager
    from tests.support.fake_gemini import make_colour_png

    folder = tmp_path / "pics"
    folder.mkdir()
    for i, colour in enumerate(["red", "red", "blue"]):
        (folder / f"{i}.png").write_bytes(make_colour_png(colour, noise_seed=i))
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "REAL"))
    cats = save_list(ws, "colours", ["red", "blue"], "test")
    settings_hash = categorize_settings_hash(ws.settings.caption_model, cats)
    hashes = [r[0] for r in ws.catalog.query("SELECT hash FROM images ORDER BY hash")]
    with ws.catalog.write() as conn:
        ws.catalog.record_stage(conn, hashes[0], CATEGORIZE_STAGE, settings_hash, "ok", {"categories": ["red"]}, None)
        ws.catalog.record_stage(conn, hashes[1], CATEGORIZE_STAGE, settings_hash, "failed", None, "rate_limited: x")
    real = label_set_from_gemini(ws, "REAL", cats)
    assert label_counts(ws, real) == {"red": 1, FAILED: 1} and real.items == 2  # the pending image is left out
    [(item, path)] = items_with_label(ws, real, "red")
    assert item == hashes[0] and path and ws.abspath(path).is_file()
    with pytest.raises(CompareError, match="no dataset named"):
        label_set_from_gemini(ws, "nope", cats)


def test_confounds_warn_when_formats_alone_separate_the_sets(ws: Workspace, tmp_path: Path):
    from PIL import Image

    from services.folder_import import start_folder_import
    from services.jobs import JobManager

    for name, fmt in (("jpegs", "JPEG"), ("pngs", "PNG")):
        (tmp_path / name).mkdir()
        for i in range(6):
            img = Image.new("RGB", (64 + i, 48), (i * 30, 100, 200))
            img.save(tmp_path / name / f"{i}.{fmt.lower()}", fmt, **({"quality": 70} if fmt == "JPEG" else {}))
        manager = JobManager(ws)
        manager.run(start_folder_import(ws, manager, tmp_path / name, name))
    from services.datasets import dataset_images

    found = confounds(ws, {n: [h for h, _ in dataset_images(ws, n)] for n in ("jpegs", "pngs")})
    assert any("share no file format" in w for w in found.warnings)
    assert {r["jpeg_quality"] for r in found.rows["jpegs"]} == {70}
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    assert jpeg_quality(buf.getvalue()) is None


def test_report_tables_and_cli(ws: Workspace, tmp_path: Path):
    real = synthetic(tmp_path / "REAL_x.csv", 300, {"people": 0.2, "city": 0.3}, 3)
    gen = synthetic(tmp_path / "GEN_x.csv", 300, {"people": 0.45, "city": 0.3, "robots": 0.05}, 4)
    a, b = import_categorized_csv(ws, real), import_categorized_csv(ws, gen)
    result = compare_sets(ws, a, b)
    out = html_report(result, tmp_path / "report.html", figures=[grouped_figure(result), difference_figure(result)])
    text = out.read_text()
    assert text.count("<script") >= 2 and "plotly" in text and "robots" in text and "REAL_x vs GEN_x" in text
    stats, special = write_tables(result, tmp_path / "tables")
    rows = {r["category"]: r for r in read_csv(stats)}
    assert set(rows) == {"people", "city", "robots"} and float(rows["people"]["q_value"]) < 0.05
    assert [r["label"] for r in read_csv(special)] == ["unknown", FAILED]
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "cli-ws"), "compare", "--a", str(real),
         "--b", str(gen), "--out", str(tmp_path / "cli" / "report.html")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "people:" in run.stdout and (tmp_path / "cli" / "report.html").is_file()
    assert (tmp_path / "cli" / "category_stats.csv").is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "cli-ws"), "compare", "--a", "nope",
         "--b", "GEN_x", "--out", str(tmp_path / "x.html")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "no label set 'nope'" in missing.stderr
