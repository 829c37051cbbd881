"""What pages read at any size (a page of rows, counts, a sample), checked against the whole-dataset Python
computations they replace, on a real folder import with results of every kind: Describe's filtered table and
counts, Preprocess's result pages and flag counts, OCR's readings, the cost estimate."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.core.datasets import dataset_entries, entries_page
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.describe.categories import save_list
from services.stages.describe.results import (
    STATUSES,
    ResultKeys,
    answered_by_both,
    filter_results,
    iter_results,
    result_counts,
    results_view,
)
from services.stages.describe.stage import CATEGORIZE_STAGE, DESCRIBE_STAGE, estimate_cost
from services.stages.download.folder_import import start_folder_import
from services.stages.ocr.stage import OCR_STAGE, ocr_readings, ocr_results
from services.stages.preprocess.quality import FLAGS, QUALITY_STAGE, QUALITY_VERSION
from services.stages.preprocess.recipes import PRESETS
from services.stages.preprocess.stage import quality_counts, results_page, stage_name
from tests.support.fake_gemini import make_colour_png

CATEGORIES = ["cat", "dog", "bird"]
N = 60  # images with results
UNTOUCHED = 400


@pytest.fixture
def populated(ws: Workspace, manager: JobManager, tmp_path: Path) -> tuple[Workspace, ResultKeys]:
    """60 imported images with descriptions, Gemini and CLIP categories, failures, quality flags, recipe
    outputs and OCR readings on seeded random subsets."""
    root = tmp_path / "set"
    root.mkdir()
    for i in range(N):
        (root / f"img{i:03d}.png").write_bytes(make_colour_png("red", (32, 24), noise_seed=i))
    for i in range(UNTOUCHED):  # images without any result: some filters' results are then sparse, some dense
        pixels = np.random.default_rng(1000 + i).integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"other{i:03d}.png")
    manager.run(start_folder_import(ws, manager, root, "set"))
    category_list = save_list(ws, "animals", CATEGORIES, "test")
    keys = ResultKeys.current(ws, category_list, ("categorize:clip", "clip-hash"))
    rng = random.Random(7)
    recipe = PRESETS["ocr-128"]
    with ws.catalog.write() as conn:
        for image_hash, _, name in dataset_entries(ws, "set"):
            if name.startswith("other"):
                continue
            roll = rng.random()
            if roll < 0.5:
                words = rng.choice(["a Cat on a mat", "two dogs", "a bird in flight", "Ünïcode café"])
                description = {"summary": words, "objects": [words.split()[-1]]}
                ws.catalog.record_stage(conn, image_hash, DESCRIBE_STAGE, keys.describe_hash, "ok",
                                        {"description": description}, None)  # fmt: skip
            elif roll < 0.6:
                ws.catalog.record_stage(conn, image_hash, DESCRIBE_STAGE, keys.describe_hash, "failed", None, "timeout")
            if rng.random() < 0.5:
                picked = rng.sample(CATEGORIES, rng.randint(0, 2))
                ws.catalog.record_stage(conn, image_hash, CATEGORIZE_STAGE, keys.categorize_hash or "", "ok",
                                        {"categories": picked, "rejected": []}, None)  # fmt: skip
            elif rng.random() < 0.2:
                ws.catalog.record_stage(conn, image_hash, CATEGORIZE_STAGE, keys.categorize_hash or "", "failed",
                                        None, "blocked")  # fmt: skip
            if rng.random() < 0.6:
                top = rng.sample(CATEGORIES, 3)
                ws.catalog.record_stage(conn, image_hash, "categorize:clip", "clip-hash", "ok",
                                        {"categories": top, "scores": {c: 0.3 for c in top}}, None)  # fmt: skip
            if rng.random() < 0.8:
                flags = [f for f in FLAGS if rng.random() < 0.3]
                ws.catalog.record_stage(conn, image_hash, QUALITY_STAGE, QUALITY_VERSION, "ok", {"flags": flags}, None)
                ws.catalog.record_stage(conn, image_hash, stage_name(recipe), recipe.settings_hash, "ok",
                                        {"output": f"derived/{image_hash}.png"}, None)  # fmt: skip
            roll = rng.random()
            if roll < 0.4:
                ws.catalog.record_stage(conn, image_hash, OCR_STAGE, "ocr-hash", "ok",
                                        {"code": "AB1", "raw": "AB 1", "valid": rng.random() < 0.5}, None)  # fmt: skip
            elif roll < 0.5:
                ws.catalog.record_stage(conn, image_hash, OCR_STAGE, "ocr-hash", "ok", {"raw": None}, None)
            elif roll < 0.6:
                ws.catalog.record_stage(conn, image_hash, OCR_STAGE, "ocr-hash", "failed", None, "engine: boom")
    return ws, keys


def test_describe_table_and_counts_match_the_whole_list_filtered_in_python(
    populated: tuple[Workspace, ResultKeys],
) -> None:
    ws, keys = populated
    everything = list(iter_results(ws, "set", keys))
    assert len(everything) == N + UNTOUCHED
    for category, text, status in itertools.product([None, "cat", "dog"], ["", "cat", "ÜNÏ", "two"], STATUSES):
        expected = filter_results(everything, category, text, status)
        shown, total = results_view(ws, "set", keys, category, text, status, limit=7)
        assert total == len(expected), (category, text, status)
        assert [r.image_hash for r in shown] == [r.image_hash for r in expected[:7]], (category, text, status)
        assert [(r.description, r.categories, r.clip_categories, r.describe_error) for r in shown] == [
            (r.description, r.categories, r.clip_categories, r.describe_error) for r in expected[:7]
        ]
    counts = result_counts(ws, "set", keys)
    assert counts.images == N + UNTOUCHED
    assert counts.described == sum(r.description is not None for r in everything)
    assert counts.categorized == sum(r.categories is not None for r in everything)
    assert counts.clip == sum(r.clip_categories is not None for r in everything)
    assert counts.failed == sum(bool(r.describe_error or r.categorize_error) for r in everything) > 0
    both = {r.image_hash for r in answered_by_both(ws, "set", keys)}
    assert both == {r.image_hash for r in everything if r.categories is not None and r.clip_categories is not None}


def test_preprocess_pages_walk_every_result_once_in_input_order(populated: tuple[Workspace, ResultKeys]) -> None:
    ws, _ = populated
    recipe = PRESETS["ocr-128"]
    order = [h for h, _, _ in dataset_entries(ws, "set")]
    results = {
        r["image_hash"]: json.loads(r["result"])["flags"]
        for r in ws.catalog.query("SELECT image_hash, result FROM stage_results WHERE stage = 'quality'")
    }
    expected_counts: dict[str, int] = {}
    for flags in results.values():
        for flag in flags:
            expected_counts[flag] = expected_counts.get(flag, 0) + 1
    assert quality_counts(ws, "set") == expected_counts
    for wanted in [[], *[[f] for f in FLAGS], [FLAGS[0], FLAGS[1]]]:
        expected = [h for h in order if h in results and set(wanted) <= set(results[h])]
        walked: list[str] = []
        after = 0
        while True:
            rows, total = results_page(ws, recipe, "set", wanted, after, 5)
            assert total == len(expected), wanted
            if not rows:
                break
            walked += [r.image_hash for r in rows]
            assert all(set(wanted) <= set(r.flags) and r.flags == results[r.image_hash] for r in rows)
            after = rows[-1].seq
        assert walked == expected, wanted


def test_ocr_readings_and_the_cost_estimate_match_the_whole_list(populated: tuple[Workspace, ResultKeys]) -> None:
    ws, keys = populated
    every = [r for r in ocr_results(ws, "set", "ocr-hash") if r["raw"] is not None or r["error"]]
    readings = ocr_readings(ws, "set", "ocr-hash", limit=4)
    assert readings.total == len(every) > 0
    assert readings.accepted == sum(bool(r["valid"]) for r in every)
    assert readings.failed == sum(bool(r["error"]) for r in every)
    assert readings.rows == every[:4]
    assert entries_page(ws, "set", 10, 3) == dataset_entries(ws, "set")[10:13]
    # a settings hash with few readings: read from the readings, not from every image, with the same answer
    with ws.catalog.write() as conn:
        for image_hash, _, _ in dataset_entries(ws, "set")[::25]:
            ws.catalog.record_stage(conn, image_hash, OCR_STAGE, "sparse", "ok", {"raw": "X", "valid": True}, None)
    sparse = ocr_readings(ws, "set", "sparse", limit=2)
    every = [r for r in ocr_results(ws, "set", "sparse") if r["raw"] is not None or r["error"]]
    assert sparse.total == sparse.accepted == len(dataset_entries(ws, "set")[::25]) and sparse.rows == every[:2]

    everything = list(iter_results(ws, "set", keys))
    from services.stages.describe.categories import load_list

    category_list = load_list(ws, "animals")
    described = estimate_cost(ws, "set", "describe")
    assert described.to_do == sum(r.description is None for r in everything)
    both = estimate_cost(ws, "set", "both", category_list)
    assert both.to_do == sum(r.description is None or r.categories is None for r in everything)
    categorize = estimate_cost(ws, "set", "categorize", category_list)
    assert categorize.to_do == sum(r.categories is None for r in everything)
    # the estimate prices a described image as a text request, the rest as image requests: one image
    # described more turns an image request into a cheaper text request
    undescribed = next(r for r in everything if r.categories is None and r.description is None)
    with ws.catalog.write() as conn:
        ws.catalog.record_stage(conn, undescribed.image_hash, DESCRIBE_STAGE, keys.describe_hash, "ok",
                                {"description": {"summary": "x"}}, None)  # fmt: skip
    after = estimate_cost(ws, "set", "categorize", category_list)
    assert after.to_do == categorize.to_do and after.input_tokens < categorize.input_tokens


def test_classify_summary_and_best_images_match_numpy_over_every_score(
    populated: tuple[Workspace, ResultKeys],
) -> None:
    import numpy as np

    from services.stages.classify.stage import image_scores, score_summary, top_scored

    ws, _ = populated
    order = [h for h, _, _ in dataset_entries(ws, "set")]
    rng = np.random.default_rng(3)
    scored = order[: N - 5]  # five images without scores
    values = {"sha-a": rng.random(len(scored)), "sha-b": rng.random(len(scored)) ** 3}
    values["sha-a"][:10] = [0.0, 1.0, 0.5, 0.5, 0.57, 0.3, 0.007, 0.999, 0.2, 0.0005]  # ends, ties, bin edges
    with ws.catalog.write() as conn:
        conn.executemany(
            "INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) VALUES (?, ?, ?, ?, ?, 0)",
            [(h, sha, f"model-{sha}", "t", float(v[i])) for sha, v in values.items() for i, h in enumerate(scored)],
        )
        conn.execute(  # a score of an image outside the dataset counts nowhere here
            "INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) "
            "VALUES ('x', 'sha-a', 'm', 't', 0.99, 0)"
        )
    for sha, v in values.items():
        for bins, threshold in ((5, 0.5), (10, 0.05), (1, 0.999)):
            summary = score_summary(ws, "set", sha, bins, 0.3, threshold)
            expected_bins = np.bincount(np.minimum((np.clip(v, 0, 1) * bins).astype(int), bins - 1), minlength=bins)
            assert summary.counts == expected_bins.tolist()
            assert summary.scored == len(scored)
            assert summary.reach_model_threshold == int((v >= 0.3).sum())
            assert summary.at_least == int((v >= threshold).sum())
        best = top_scored(ws, "set", sha, 0.2, 10)
        expected = sorted((s for s in v if s >= 0.2), reverse=True)[:10]
        assert [b.score for b in best] == pytest.approx(expected)
        assert all(b.image_hash in scored and b.path for b in best)
    # scores written again (a second classify run): the histogram follows the new scores
    values["sha-a"] = rng.random(len(scored))
    with ws.catalog.write() as conn:
        conn.executemany(
            """INSERT INTO tag_scores (image_hash, model_sha, model, tag, score, updated_at) VALUES (?, ?, ?, ?, ?, 0)
               ON CONFLICT (image_hash, model_sha) DO UPDATE SET score = excluded.score""",
            [(h, "sha-a", "model-sha-a", "t", float(values["sha-a"][i])) for i, h in enumerate(scored)],
        )
    summary = score_summary(ws, "set", "sha-a", 7, 0.3, 0.42)
    expected_bins = np.bincount(np.minimum((values["sha-a"] * 7).astype(int), 6), minlength=7)
    assert summary.counts == expected_bins.tolist() and summary.scored == len(scored)
    assert summary.at_least == int((values["sha-a"] >= 0.42).sum())
    assert image_scores(ws, scored[1], ["sha-a", "sha-b", "sha-none"]) == pytest.approx(
        {"sha-a": float(values["sha-a"][1]), "sha-b": float(values["sha-b"][1])}
    )
