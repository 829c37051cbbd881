"""Compare REAL vs GEN: label sets from CSVs and Gemini results; shares, intervals and tests against scipy,
statsmodels and the hypergeometric formula; the issue's failure and small-count cases; FD and KID against
scipy's matrix square root, torchmetrics and Gaussians with known answers; bootstrap intervals; the domain AUC
against the Mann-Whitney U statistic and under shuffled row order; links from CSV names to images;
confounds, the report and the CLI."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import binomtest, chi2_contingency, false_discovery_control, fisher_exact, hypergeom, mannwhitneyu

from services.core.workspace import Workspace
from services.io.embedding_store import EmbeddingStore
from services.stages.compare.embeddings import (
    Kernels,
    compare_embeddings,
    confounds,
    distances,
    domain_auc,
    frechet_distance,
    jpeg_quality,
    kernel_inception_distance,
    near_duplicates,
    polynomial_mmd,
)
from services.stages.compare.label_sets import (
    FAILED,
    CompareError,
    category_depth,
    compare_sets,
    image_link,
    import_categorized_csv,
    items_with_label,
    label_counts,
    label_set_from_gemini,
    newcombe,
    set_images,
    set_role,
    split_categories,
    wilson,
)
from services.stages.compare.report import difference_figure, grouped_figure, html_report, write_tables
from services.stages.describe.categories import save_list
from tests.conftest import ROOT, read_csv, write_csv
from tests.support.label_csvs import categorised, synthetic


def test_csv_import_keeps_unknown_and_failed_apart(ws: Workspace, tmp_path: Path):
    path = categorised(tmp_path / "REAL_set.csv", [
        ("a.jpg", "Food, Animals"), ("b.jpg", "animals"), ("c.jpg", "unknown"), ("d.jpg", "ERROR: 500 from API"),
        ("e.jpg", ""), ("f.jpg", "Food,  Food"),
    ])  # fmt: skip
    real = import_categorized_csv(ws, path)
    assert real.name == "REAL_set" and real.items == 6
    assert label_counts(ws, real) == {"Food": 2, "Animals": 1, "animals": 1, "unknown": 2, FAILED: 1}
    assert split_categories("Food, Animals") == ["Food", "Animals"] and split_categories("") == ["unknown"]
    assert split_categories("Food, unknown") == ["Food"]  # an item with a category is not also unknown
    assert ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows") == 6  # the CSV is a dataset too
    again = import_categorized_csv(ws, path)  # re-import replaces, never doubles
    assert again.items == 6 and sum(label_counts(ws, again).values()) == 7
    with pytest.raises(CompareError, match="needs image_name and categories"):
        import_categorized_csv(ws, write_csv(tmp_path / "bad.csv", ["name", "x"], [["a", "b"]]))
    # a row repeated after a retry: the item keeps its best answer, never failed and categorised at once
    retried = import_categorized_csv(ws, categorised(tmp_path / "retried.csv", [
        ("a.jpg", "ERROR: 503"), ("a.jpg", "Food"), ("b.jpg", "ERROR: 503"), ("b.jpg", ""), ("c.jpg", "ERROR: x"),
    ]))  # fmt: skip
    assert label_counts(ws, retried) == {"Food": 1, "unknown": 1, FAILED: 1} and retried.items == 3


def fisher_by_hypergeometric(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p straight from the hypergeometric distribution (tables as likely or less)."""
    total, carrying = n_a + n_b, k_a + k_b
    dist = hypergeom(total, carrying, n_a)
    observed = dist.pmf(k_a)
    support = np.arange(max(0, carrying - n_b), min(carrying, n_a) + 1)
    pmf = dist.pmf(support)
    return float(pmf[pmf <= observed * (1 + 1e-7)].sum())


def test_statistics_match_scipy(ws: Workspace, tmp_path: Path):
    # "scene" on most images keeps `unknown` (no category at all) rare, as in real answers
    shares_a = {"scene": 0.9, "city": 0.3, "food": 0.2, "dog": 0.02}
    a = import_categorized_csv(ws, synthetic(tmp_path / "REAL.csv", 400, shares_a, 1))
    b = import_categorized_csv(ws, synthetic(tmp_path / "GEN.csv", 300, {"scene": 0.9, "city": 0.5, "food": 0.2,
                                                                          "cat": 0.1}, 2))  # fmt: skip
    result = compare_sets(ws, a, b, "g-test")
    by = {s.category: s for s in result.categories}
    assert set(by) == {"scene", "city", "food", "dog", "cat"}  # every category of either set, not one set's top
    ca, cb = label_counts(ws, a), label_counts(ws, b)
    n_a, n_b = a.items - ca.get("unknown", 0), b.items - cb.get("unknown", 0)  # categorised items only
    assert (result.n_a, result.n_b) == (n_a, n_b) and ca.get("unknown", 0) > 0
    for cat, stat in by.items():
        k_a, k_b = ca.get(cat, 0), cb.get(cat, 0)
        table = np.array([[k_a, n_a - k_a], [k_b, n_b - k_b]])
        assert stat.share_a == pytest.approx(k_a / n_a) and stat.share_b == pytest.approx(k_b / n_b)
        expected = chi2_contingency(table, correction=False, lambda_="log-likelihood")
        if expected.expected_freq.min() >= 5:
            assert stat.test == "G-test"
            assert stat.statistic == pytest.approx(expected.statistic)
            assert stat.p_value == pytest.approx(expected.pvalue)
        else:
            assert stat.test == "Fisher exact" and stat.statistic is None
            assert stat.p_value == pytest.approx(fisher_exact(table).pvalue)
            assert stat.p_value == pytest.approx(fisher_by_hypergeometric(k_a, n_a, k_b, n_b))
    tested = [s for s in result.categories if s.p_value is not None]
    assert [s.q_value for s in tested] == pytest.approx(list(false_discovery_control([s.p_value for s in tested])))
    assert by["city"].q_value < 1e-3 and by["food"].q_value > 0.05
    assert by["dog"].test == "Fisher exact" and "Fisher" in (by["dog"].warning or "")  # 8 of 400 vs 0 of 300
    chi = compare_sets(ws, a, b, "chi-square")
    table = np.array([[ca["city"], n_a - ca["city"]], [cb["city"], n_b - cb["city"]]])
    city = {s.category: s for s in chi.categories}["city"]
    assert city.test == "chi-square"
    assert city.statistic == pytest.approx(chi2_contingency(table, correction=False).statistic)
    cats = sorted(by, key=str.lower)
    p = np.array([ca.get(c, 0) for c in cats], float)
    q = np.array([cb.get(c, 0) for c in cats], float)
    assert result.jsd == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)
    with pytest.raises(CompareError, match="g-test or chi-square"):
        compare_sets(ws, a, b, "t-test")


def test_shares_and_intervals_match_statsmodels(ws: Workspace, tmp_path: Path):
    from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

    a = import_categorized_csv(ws, synthetic(tmp_path / "A.csv", 250, {"city": 0.3, "food": 0.15, "rare": 0.01}, 7))
    b = import_categorized_csv(ws, synthetic(tmp_path / "B.csv", 180, {"city": 0.45, "food": 0.15}, 8))
    result = compare_sets(ws, a, b)
    for s in result.categories:
        low, high = confint_proportions_2indep(s.count_b, result.n_b, s.count_a, result.n_a, method="newcomb",
                                               compare="diff")  # fmt: skip
        assert (s.ci_low, s.ci_high) == pytest.approx((low, high), abs=1e-9)
        assert s.difference == pytest.approx(s.count_b / result.n_b - s.count_a / result.n_a)
    for k, n in ((0, 10), (7, 20), (81, 263), (20, 20)):
        assert wilson(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-9)


def test_failed_items_are_not_in_the_shares(ws: Workspace, tmp_path: Path):
    """The issue's case: A has 30% failures and the same shares as B among its answered images. Counting the
    failures in the denominators made every category differ; among answered images nothing does."""
    rows_a = [(f"a{i}.jpg", "city") for i in range(280)] + [(f"a{i}.jpg", "food") for i in range(280, 700)]
    rows_a += [(f"a{i}.jpg", "ERROR: 429 rate limited") for i in range(700, 1000)]
    rows_b = [(f"b{i}.jpg", "city") for i in range(400)] + [(f"b{i}.jpg", "food") for i in range(400, 1000)]
    a = import_categorized_csv(ws, categorised(tmp_path / "A.csv", rows_a))
    b = import_categorized_csv(ws, categorised(tmp_path / "B.csv", rows_b))
    result = compare_sets(ws, a, b)
    assert (a.items, result.n_a, result.n_b) == (1000, 700, 1000)
    assert result.jsd == pytest.approx(0.0, abs=1e-12)
    for s in result.categories:
        assert s.difference == pytest.approx(0.0, abs=1e-12) and s.ci_low < 0 < s.ci_high
        assert s.p_value == pytest.approx(1.0) and s.q_value == pytest.approx(1.0)
    # what the old denominators (every item, failures included) said about the same data: "different"
    old = chi2_contingency(np.array([[280, 720], [400, 600]]), correction=False, lambda_="log-likelihood")
    assert old.pvalue < 1e-6
    failed = next(r for r in result.rates if r.label == FAILED)  # the failures are compared on their own
    assert (failed.count_a, failed.of_a, failed.count_b, failed.of_b) == (300, 1000, 0, 1000)
    assert failed.rate_a == pytest.approx(0.3) and failed.p_value is not None and failed.p_value < 1e-10
    low, high = newcombe(300, 1000, 0, 1000)
    assert (failed.ci_low, failed.ci_high) == pytest.approx((low, high))
    unknown = next(r for r in result.rates if r.label == "unknown")
    assert (unknown.of_a, unknown.of_b, unknown.p_value) == (700, 1000, None)  # none in either: nothing to test


def test_small_counts_use_fishers_exact_test(ws: Workspace, tmp_path: Path):
    """0 of 8 vs 5 of 5: the G-test says p 3e-5, the exact answer is 1/C(13, 5) = 7.8e-4."""
    a = import_categorized_csv(ws, categorised(tmp_path / "A.csv", [(f"a{i}.jpg", "dog") for i in range(8)]))
    b = import_categorized_csv(ws, categorised(tmp_path / "B.csv", [(f"b{i}.jpg", "cat") for i in range(5)]))
    result = compare_sets(ws, a, b)
    cat = {s.category: s for s in result.categories}["cat"]
    assert (cat.count_a, cat.count_b, cat.test) == (0, 5, "Fisher exact")
    assert cat.p_value == pytest.approx(1 / math.comb(13, 5)) == pytest.approx(7.77e-4, rel=1e-3)
    assert cat.p_value == pytest.approx(fisher_by_hypergeometric(0, 8, 5, 5))
    g_test = chi2_contingency(np.array([[0, 8], [5, 0]]), correction=False, lambda_="log-likelihood").pvalue
    assert g_test == pytest.approx(3.15e-5, rel=1e-2)  # what fed the correction before
    ps = [s.p_value for s in result.categories]
    assert [s.q_value for s in result.categories] == pytest.approx(list(false_discovery_control(ps)))


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


def sqrtm_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """FD by the textbook formula, with scipy's matrix square root."""
    from scipy import linalg

    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = np.real(linalg.sqrtm(cx @ cy))
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.trace(root))


@pytest.mark.parametrize(("n_a", "n_b", "d"), [(60, 90, 16), (30, 45, 64), (300, 200, 32), (100, 100, 100)])
def test_frechet_distance_matches_scipy_and_torchmetrics(n_a: int, n_b: int, d: int):
    import torch
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(n_a + d)
    x = rng.standard_normal((n_a, d))
    y = rng.standard_normal((n_b, d)) * 1.3 + 0.2
    tx, ty = torch.tensor(x), torch.tensor(y)
    reference = float(_compute_fid(tx.mean(0), torch.cov(tx.T), ty.mean(0), torch.cov(ty.T)))
    assert frechet_distance(x, y) == pytest.approx(sqrtm_frechet(x, y), rel=1e-6)  # n < d and n > d paths
    assert frechet_distance(x, y) == pytest.approx(reference, rel=1e-6)


def test_kid_matches_torchmetrics_and_the_formula():
    import torch
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((60, 16)), rng.standard_normal((60, 16)) + 0.3
    assert polynomial_mmd(x, y) == pytest.approx(float(poly_mmd(torch.tensor(x), torch.tensor(y))), rel=1e-9)
    y = y[:45]  # unequal sizes: the U-statistic written out pair by pair

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / 16 + 1) ** 3)

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert polynomial_mmd(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    # a bootstrap resample (rows drawn with repeats) scored from the kernel and the draw counts equals the
    # U-statistic on the materialised resample with pairs of a row and its own copy left out
    i, j = rng.integers(0, m, m), rng.integers(0, n, n)
    kernels = Kernels.of(x, y)
    fast = kernels.mmd2(np.bincount(i, minlength=m), np.bincount(j, minlength=n))
    ra, rb = x[i], y[j]
    pairs_x = [(p, q) for p in range(m) for q in range(m) if i[p] != i[q]]
    pairs_y = [(p, q) for p in range(n) for q in range(n) if j[p] != j[q]]
    direct = (sum(k(ra[p], ra[q]) for p, q in pairs_x) / len(pairs_x)
              + sum(k(rb[p], rb[q]) for p, q in pairs_y) / len(pairs_y)
              - 2 * sum(k(ra[p], rb[q]) for p in range(m) for q in range(n)) / (m * n))  # fmt: skip
    assert fast == pytest.approx(direct, rel=1e-9)


def test_bootstrap_intervals_cover_known_distances():
    rng = np.random.default_rng(5)
    d = 8
    x, y = rng.standard_normal((400, d)), rng.standard_normal((400, d)) + 0.5  # FD = 8 * 0.25 = 2
    found = distances(x, y, resamples=200, seed=1)
    assert found.fd_ci[0] < 2.0 < found.fd_ci[1] and found.fd_ci[1] - found.fd_ci[0] < 1.5
    assert found.kid_ci[0] < found.kid < found.kid_ci[1] and found.kid_ci[0] > 0  # clearly different sets
    same = distances(x, rng.standard_normal((400, d)), resamples=200, seed=1)
    assert same.kid_ci[0] < 0 < same.kid_ci[1]  # unbiased KID of one distribution: 0 inside
    assert same.fd_ci[0] == 0.0  # FD's true value 0 lies at its floor
    again = distances(x, y, resamples=200, seed=1)
    assert (again.fd_ci, again.kid_ci) == (found.fd_ci, found.kid_ci)  # seeded
    none = distances(x, y, resamples=0)
    assert math.isnan(none.fd_ci[0]) and none.fd == pytest.approx(found.fd)


def test_domain_auc_matches_mann_whitney_per_fold():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((120, 6)), rng.standard_normal((90, 6)) + 0.4
    data, target = np.concatenate([x, y]), np.array([0] * 120 + [1] * 90)
    aucs = []
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(data, target):
        scores = LogisticRegression(max_iter=2000).fit(data[train], target[train]).decision_function(data[test])
        pos, neg = scores[target[test] == 1], scores[target[test] == 0]
        aucs.append(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))  # AUC = U / (n1 n2)
    assert domain_auc(x, y) == pytest.approx(float(np.mean(aucs)), abs=1e-9)


def store_vectors(ws: Workspace, key: str, groups: dict[str, np.ndarray], order: np.ndarray | None = None) -> None:
    """Write unit vectors under hashes `{prefix}{i}`, in `order` (a permutation) across two shards."""
    hashes = [f"{prefix}{i:03d}" for prefix, v in groups.items() for i in range(len(v))]
    vectors = np.concatenate(list(groups.values())).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = np.arange(len(hashes)) if order is None else order
    half = len(order) // 2
    store = EmbeddingStore(ws, key)
    for part in (order[:half], order[half:]):
        store.write_shard([hashes[i] for i in part], vectors[part])


def test_embedding_comparison_per_category_and_independent_of_row_order(tmp_path: Path):
    from services.core.settings import load_settings

    rng = np.random.default_rng(1)
    groups = {"a": rng.standard_normal((60, 8)), "b": rng.standard_normal((50, 8)) + 0.3}
    hashes_a, hashes_b = [f"a{i:03d}" for i in range(60)], [f"b{i:03d}" for i in range(50)]
    labels = {"many": {"a": set(hashes_a[:40]), "b": set(hashes_b[:30])},
              "few": {"a": set(hashes_a[:25]), "b": set(hashes_b[40:])}}  # fmt: skip
    results = []
    for run, order in enumerate([None, rng.permutation(110), rng.permutation(110)]):
        ws = Workspace(tmp_path / f"ws{run}", load_settings())
        store_vectors(ws, "k", groups, order)
        shuffled_a, shuffled_b = list(rng.permutation(hashes_a)), list(rng.permutation(hashes_b))
        results.append(compare_embeddings(ws, "k", shuffled_a, shuffled_b, labels, resamples=30))
        ws.close()
    first = results[0]
    assert (first.n_a, first.n_b) == (60, 50) and first.coords.shape == (110, 2) and first.auc > 0.5
    for other in results[1:]:  # rows inserted and listed in other orders: the same numbers
        assert other.auc == first.auc and other.fd == first.fd and other.fd_ci == first.fd_ci
        assert other.kid_ci == first.kid_ci and np.array_equal(other.coords, first.coords)
    by = {c.category: c for c in first.per_category}
    assert by["many"].distance is not None and (by["many"].embedded_a, by["many"].embedded_b) == (40, 30)
    assert by["many"].distance.fd_ci[0] <= by["many"].distance.fd_ci[1]
    assert by["few"].distance is None and "too few" in by["few"].note and "20" in by["few"].note
    assert not any("dimensions" in w or "sample" in w for w in first.warnings)  # 60 and 50 vectors of 8 dimensions


def test_embedding_comparison_says_what_is_missing(ws: Workspace):
    rng = np.random.default_rng(4)
    store_vectors(ws, "k", {"a": rng.standard_normal((40, 16)), "b": rng.standard_normal((30, 16))})
    with pytest.raises(ValueError, match=r"1 of 2 images of A .* 1 of 1 of B have vectors; embed them first"):
        compare_embeddings(ws, "k", ["a000", "nope"], ["b001"])
    small = compare_embeddings(ws, "k", [f"a{i:03d}" for i in range(10)], [f"b{i:03d}" for i in range(30)],
                               resamples=0, max_vectors=20)  # fmt: skip
    assert small.n_b == 20 and any("fewer than the 16 dimensions" in w for w in small.warnings)
    assert any("seeded sample of 20 of its 30" in w for w in small.warnings)


def test_sets_from_gemini_results_and_galleries(ws: Workspace, tmp_path: Path):
    from services.jobs.manager import JobManager
    from services.stages.describe.stage import CATEGORIZE_STAGE, categorize_settings_hash
    from services.stages.download.folder_import import start_folder_import
    from tests.support.fake_gemini import make_colour_png

    folder = tmp_path / "pics"
    folder.mkdir()
    for i, colour in enumerate(["red", "red", "blue", "blue"]):
        (folder / f"{i}.png").write_bytes(make_colour_png(colour, noise_seed=i))
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, folder, "REAL"))
    cats = save_list(ws, "colours", ["red", "blue", "dark", "square"], "test")
    settings_hash = categorize_settings_hash(ws.settings.caption_model, cats)
    hashes = [r[0] for r in ws.catalog.query("SELECT hash FROM images ORDER BY hash")]
    many = {"categories": ["blue", "dark"], "extra": ["square"]}  # an answer with three valid categories
    with ws.catalog.write() as conn:
        ws.catalog.record_stage(conn, hashes[0], CATEGORIZE_STAGE, settings_hash, "ok", {"categories": ["red"]}, None)
        ws.catalog.record_stage(conn, hashes[1], CATEGORIZE_STAGE, settings_hash, "failed", None, "rate_limited: x")
        ws.catalog.record_stage(conn, hashes[2], CATEGORIZE_STAGE, settings_hash, "ok", many, None)
    real = label_set_from_gemini(ws, "REAL", cats)
    assert label_counts(ws, real) == {"red": 1, "blue": 1, "dark": 1, "square": 1, FAILED: 1}
    assert real.items == 3  # the pending image is left out
    assert category_depth(ws, real) == {1: 1, 3: 1}  # the extra category is counted, and visible
    assert image_link(ws, real).match == "hash" and set_role(ws, real) == "REAL"  # its dataset's kind
    [(item, path)] = items_with_label(ws, real, "red")
    assert item == hashes[0] and path and ws.abspath(path).is_file()
    with ws.catalog.write() as conn:  # the original discarded after preprocessing: the derived copy is shown
        conn.execute("UPDATE images SET path = NULL WHERE hash = ?", (hashes[0],))
        conn.execute("INSERT INTO derived_images VALUES (?, 'border-64', 'derived/x.png', 64, 64)", (hashes[0],))
    assert items_with_label(ws, real, "red") == [(hashes[0], "derived/x.png")]
    with pytest.raises(CompareError, match="no dataset named"):
        label_set_from_gemini(ws, "nope", cats)


def test_csv_names_link_to_imported_images(ws: Workspace, tmp_path: Path):
    """A categorised CSV names files; its galleries, vectors and image properties come from the imported
    dataset those names are found in: exactly, or by file name (URLs, nested folders), never a namesake."""
    from services.core.datasets import dataset_images
    from services.jobs.manager import JobManager
    from services.stages.download.folder_import import start_folder_import
    from tests.support.fake_gemini import make_colour_png

    manager = JobManager(ws)
    for name, colour in (("real-photos", "red"), ("gen-images", "blue")):  # both folders hold 0.png ... 3.png
        folder = tmp_path / name / "nested"
        folder.mkdir(parents=True)
        for i in range(4):
            (folder / f"{i}.png").write_bytes(make_colour_png(colour, noise_seed=i + (10 if colour == "blue" else 0)))
        manager.run(start_folder_import(ws, manager, tmp_path / name, name))
    exact = import_categorized_csv(ws, categorised(tmp_path / "real_exact.csv", [
        ("nested/0.png", "red"), ("nested/1.png", "red"), ("missing.png", "red")]))  # fmt: skip
    link = image_link(ws, exact)
    assert (link.dataset, link.match, link.matched) == ("real-photos", "name", 2)
    by_file = import_categorized_csv(ws, categorised(tmp_path / "gen_files.csv", [
        ("0.png", "blue"), ("2.png", "blue"), ("3.png", "blue")]))  # fmt: skip
    found = set_images(ws, by_file)
    assert (found.link.dataset, found.link.match) == ("gen-images", "file name")  # the namesake in real-photos: no
    assert set(found.hashes.values()) <= {h for h, _ in dataset_images(ws, "gen-images")} and len(found.hashes) == 3
    images_exact = set_images(ws, exact)
    assert images_exact.missing == 1 and "2 of 3 items found" in images_exact.explain("real_exact")
    entries = dict(items_with_label(ws, exact, "red"))
    assert entries["missing.png"] is None and entries["nested/0.png"] and ws.abspath(entries["nested/0.png"]).is_file()
    nowhere = import_categorized_csv(ws, categorised(tmp_path / "elsewhere.csv", [("zzz.jpg", "x")]))
    assert image_link(ws, nowhere).dataset is None and "match no imported image" in set_images(ws, nowhere).explain("e")
    assert (set_role(ws, exact), set_role(ws, by_file), set_role(ws, nowhere)) == ("REAL", "GEN", None)


def test_confounds_warn_when_formats_alone_separate_the_sets(ws: Workspace, tmp_path: Path):
    from PIL import Image

    from services.jobs.manager import JobManager
    from services.stages.download.folder_import import start_folder_import

    for name, fmt in (("jpegs", "JPEG"), ("pngs", "PNG")):
        (tmp_path / name).mkdir()
        for i in range(6):
            img = Image.new("RGB", (64 + i, 48), (i * 30, 100, 200))
            img.save(tmp_path / name / f"{i}.{fmt.lower()}", fmt, **({"quality": 70} if fmt == "JPEG" else {}))
        manager = JobManager(ws)
        manager.run(start_folder_import(ws, manager, tmp_path / name, name))
    from services.core.datasets import dataset_images

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
    assert "Failed and unknown" in text and "Fisher" in text and "categorised" in text
    stats, special = write_tables(result, tmp_path / "tables")
    rows = {r["category"]: r for r in read_csv(stats)}
    assert set(rows) == {"people", "city", "robots"} and float(rows["people"]["q_value"]) < 0.05
    assert rows["people"]["test"] == "G-test" and rows["people"]["statistic"]
    assert [r["label"] for r in read_csv(special)] == ["unknown", FAILED]
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "cli-ws"), "compare", "--a", str(real),
         "--b", str(gen), "--out", str(tmp_path / "cli" / "report.html"), "--charts", str(tmp_path / "reports")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "people:" in run.stdout and (tmp_path / "cli" / "report.html").is_file()
    assert (tmp_path / "cli" / "category_stats.csv").is_file()
    # the seeds' reports/*.png, drawn by kaleido with the machine's Chromium from the report's figures
    from PIL import Image

    pngs = sorted(p.name for p in (tmp_path / "reports").glob("*.png"))
    assert pngs == ["GEN_x_category_distribution.png", "REAL_x_category_distribution.png", "category_differences.png",
                    "combined_category_distribution.png", "normalized_category_distribution.png"]  # fmt: skip
    for name in pngs:
        with Image.open(tmp_path / "reports" / name) as image:
            assert image.format == "PNG" and image.size == (1200, 600)
            assert len(image.convert("RGB").getcolors(maxcolors=100_000) or []) > 10  # drawn, not blank
    missing = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "cli-ws"), "compare", "--a", "nope",
         "--b", "GEN_x", "--out", str(tmp_path / "x.html")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "no label set 'nope'" in missing.stderr


def test_chart_files_hold_the_comparisons_counts_and_svg_too(ws: Workspace, tmp_path: Path):
    import xml.etree.ElementTree as ET

    from services.stages.compare.chart_files import ChartRenderError, chart_figures, chart_zip, write_chart_files

    real = synthetic(tmp_path / "REAL_y.csv", 120, {"people": 0.2, "city": 0.3}, 5)
    gen = synthetic(tmp_path / "GEN_y.csv", 120, {"people": 0.5, "robots": 0.1}, 6)
    result = compare_sets(ws, import_categorized_csv(ws, real), import_categorized_csv(ws, gen))
    figures = chart_figures(result)
    by = {s.category: s for s in result.categories}
    bars = figures["REAL_y_category_distribution"].data[0]
    assert dict(zip(bars.customdata, bars.y, strict=True)) == {c: s.count_a for c, s in by.items() if s.count_a}
    assert "robots" not in bars.customdata  # a category only the other set has is not in this set's chart
    shares = figures["normalized_category_distribution"].data[1]
    assert dict(zip(shares.customdata, shares.y, strict=True)) == pytest.approx(
        {c: s.share_b * 100 for c, s in by.items()}
    )
    svgs = write_chart_files(result, tmp_path / "svg", "svg")
    assert len(svgs) == 5 and all(ET.parse(f).getroot().tag.endswith("svg") for f in svgs)
    with pytest.raises(ChartRenderError, match="chart format 'gif'"):
        write_chart_files(result, tmp_path / "gif", "gif")
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(chart_zip(result, "svg"))) as zf:  # what the page offers
        assert sorted(zf.namelist()) == sorted(f.name for f in svgs)


def test_cli_embeddings_with_intervals_per_category_and_a_report(tmp_path: Path):
    """CSV sets whose names are imported images with stored vectors: the CLI prints FD and KID with intervals,
    per category ("too few" where a set lacks images), and the report carries the same tables."""
    from PIL import Image

    from services.core.datasets import dataset_entries
    from services.core.settings import load_settings
    from services.jobs.manager import JobManager
    from services.stages.download.folder_import import start_folder_import

    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[str, str]]] = {"REAL": [], "GEN": []}
    for name, fmt in (("REAL", "JPEG"), ("GEN", "PNG")):
        (tmp_path / name).mkdir()
        for i in range(40):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{name}{i}.{fmt.lower()}", fmt)
            rows[name].append((f"{name}{i}.{fmt.lower()}", "dog" if i < 30 else ("cat" if name == "GEN" else "dog")))
        manager.run(start_folder_import(ws, manager, tmp_path / name, f"{name}-images", kind=name))
        entries = dataset_entries(ws, f"{name}-images")
        vectors = rng.standard_normal((len(entries), 8)) + (0.4 if name == "GEN" else 0.0)
        EmbeddingStore(ws, "k").write_shard(
            [h for h, _, _ in entries], (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        )
    ws.close()
    real = categorised(tmp_path / "REAL_e.csv", rows["REAL"])
    gen = categorised(tmp_path / "GEN_e.csv", rows["GEN"])
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "ws"), "compare", "--a", str(real),
         "--b", str(gen), "--embedding", "k", "--resamples", "40", "--out", str(tmp_path / "out" / "r.html")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"embeddings \(40 and 40 vectors\): FD [\d.]+ \[[\d.]+, [\d.]+\], KID", run.stdout), run.stdout
    assert re.search(r"  dog: FD [\d.]+ \[", run.stdout)  # 40 and 30 images
    assert "cat: too few: 0 and 10 embedded images" in run.stdout
    assert "share no file format" in run.stdout  # JPEG vs PNG: the confound is reported
    report = (tmp_path / "out" / "r.html").read_text()
    assert "Per category" in report and "too few" in report and "Image properties" in report
    assert "Categories per image" in report
