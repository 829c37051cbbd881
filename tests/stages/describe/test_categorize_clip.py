"""CLIP zero-shot categories with a tiny random open_clip model loaded through the product's loader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, ModelUnavailableError, load_clip, resolve_weights
from services.jobs.manager import JobManager
from services.stages.describe.categories import CategoryList, save_list
from services.stages.describe.categorize_clip import (
    CLIP_STAGE,
    PROMPT_TEMPLATE,
    category_probabilities,
    start_zero_shot,
    top_categories,
    zero_shot_settings_hash,
)
from services.stages.describe.results import ImageResult, ResultKeys, agreement, iter_results
from tests.support.describe_data import colour_dataset
from tests.support.tiny_models import TINY_CLIP_NAME, save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipSpec:
    path = save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    return ClipSpec(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(path), device="cpu")


def test_loader_reads_the_saved_weights_and_caches_the_model(tiny_clip: ClipSpec):
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    loaded = load_clip(tiny_clip)
    saved = load_file(tiny_clip.checkpoint)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor.cpu(), saved[name]), name
    assert load_clip(tiny_clip) is loaded  # once per process
    vectors = loaded.embed_images([Image.new("RGB", (50, 40), "red")] * 3)
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_missing_weights_fail_in_seconds_with_both_fixes(tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        resolve_weights(ClipSpec(model="ViT-B-32", pretrained="openai"))
    assert time.monotonic() - started < 5
    assert "python -m services models pull ViT-B-32/openai" in str(err.value) and "--checkpoint" in str(err.value)
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_weights(ClipSpec(model="ViT-B-32", checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelUnavailableError, match="no pretrained tag 'nonsense'"):
        resolve_weights(ClipSpec(model="ViT-B-32", pretrained="nonsense"))
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        resolve_weights(ClipSpec(model="my-own-arch", checkpoint=str(tmp_path / "w.pt")))


def test_zero_shot_job_matches_a_direct_computation_and_is_not_redone(
    ws: Workspace, tmp_path: Path, tiny_clip: ClipSpec
):
    import torch
    from PIL import Image

    colours = ["red", "green", "blue", "yellow"]
    dataset = colour_dataset(ws, tmp_path, colours)
    cats = save_list(ws, "colours", ["red", "green", "blue"], "test")
    manager = JobManager(ws)
    p = manager.run(start_zero_shot(ws, manager, dataset, cats, tiny_clip))
    assert (p.state, p.done, p.failed) == ("completed", 4, 0)
    results = list(
        iter_results(ws, dataset, ResultKeys.current(ws, cats, (CLIP_STAGE, zero_shot_settings_hash(tiny_clip, cats))))
    )
    assert [r.name for r in results] == [f"{i:02d}_{c}.png" for i, c in enumerate(colours)]
    # the same numbers straight from open_clip, outside the job
    loaded = load_clip(tiny_clip)
    with torch.inference_mode():
        images = torch.stack([loaded.preprocess(Image.open(ws.abspath(r.path)).convert("RGB")) for r in results])
        img = loaded.model.encode_image(images)
        txt = loaded.model.encode_text(loaded.tokenizer([PROMPT_TEMPLATE.format(c) for c in cats.categories]))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        expected = (loaded.model.logit_scale.exp() * img @ txt.T).softmax(dim=-1).numpy()
    for r, row in zip(results, expected, strict=True):
        got = np.array([r.clip_scores[c] for c in cats.categories])
        assert np.allclose(got, row, atol=2e-4)
        assert r.clip_categories == top_categories(row, cats.categories)
        assert set(r.clip_categories) <= set(cats.categories)
    again = manager.run(start_zero_shot(ws, manager, dataset, cats, tiny_clip))
    assert (
        again.done == 4 and ws.catalog.scalar("SELECT COUNT(*) FROM stage_results WHERE stage = ?", (CLIP_STAGE,)) == 4
    )


def test_a_broken_image_fails_alone(ws: Workspace, tmp_path: Path, tiny_clip: ClipSpec):
    dataset = colour_dataset(ws, tmp_path, ["red", "blue"])
    cats = save_list(ws, "colours", ["red", "blue"], "test")
    [first, _] = list(iter_results(ws, dataset, ResultKeys.current(ws)))
    ws.abspath(first.path).write_bytes(b"not an image any more")
    manager = JobManager(ws)
    job = start_zero_shot(ws, manager, dataset, cats, tiny_clip)
    p = manager.run(job)
    assert (p.done, p.failed) == (1, 1) and manager.failure_counts(job) == {"not_image": 1}


def test_probabilities_and_top_categories():
    images = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    texts = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    probs = category_probabilities(images, texts, 10.0)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] == pytest.approx(np.exp(10) / (np.exp(10) + 1))
    assert top_categories(probs[0], ("a", "b")) == ["a"]
    assert top_categories(np.array([0.45, 0.40, 0.15]), ("a", "b", "c")) == ["a", "b"]
    assert top_categories(np.array([0.6, 0.25, 0.15]), ("a", "b", "c")) == ["a"]


def test_agreement_per_category():
    cats = CategoryList("c", 1, ("cat", "dog", "car"), "h", "t", 0.0)

    def r(gemini: list[str] | None, clip: list[str] | None) -> ImageResult:
        return ImageResult("h", "n", "p", categories=gemini, clip_categories=clip)

    rows, overall = agreement(
        [
            r(["cat"], ["cat"]),
            r(["cat", "dog"], ["dog"]),
            r(["cat"], ["car"]),
            r(["unknown"], ["car"]),
            r(None, ["cat"]),
        ],
        cats,
    )
    by = {a.category: a for a in rows}
    assert (by["cat"].gemini, by["cat"].clip, by["cat"].both) == (3, 1, 1)
    assert by["cat"].agreement == pytest.approx(1 / 3)
    assert (by["dog"].gemini, by["dog"].both, by["dog"].agreement) == (1, 1, 1.0)
    assert (by["car"].gemini, by["car"].clip, by["car"].agreement) == (0, 2, None)
    assert by["unknown"].gemini == 1
    assert overall == pytest.approx(2 / 4)  # the image CLIP answered but Gemini did not is not compared
