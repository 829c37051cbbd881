"""Offline categoriser: CLIP zero-shot against a category list, as a resumable job.

Each category becomes the text "a photo of {category}"; an image's probabilities are the softmax of its
scaled cosine similarities to those texts. The top category is kept, and the second when it scores at least
half as much as the first (Gemini may also give two). The model is loaded once per job process through
`services.io.clip_models`, so any open_clip model the user has works, including a local checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, LoadedClip, load_clip, resolve_weights
from services.jobs.image_stage import ImageStageTask, require_images
from services.jobs.manager import ItemResult, JobManager
from services.jobs.params import JobParams
from services.stages.describe.categories import CategoryList, load_list

CLIP_STAGE = "categorize:clip"
PROMPT_TEMPLATE = "a photo of {}"
SECOND_CATEGORY_RATIO = 0.5


def zero_shot_settings_hash(spec: ClipSpec, category_list: CategoryList, template: str = PROMPT_TEMPLATE) -> str:
    parts = [spec.identity(), category_list.content_hash, template]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:12]


def start_zero_shot(
    ws: Workspace, manager: JobManager, dataset: str, category_list: CategoryList, spec: ClipSpec
) -> int:
    """Checks the weights are here first (an error in seconds, not a failed job later)."""
    resolve_weights(spec)
    dataset_id = require_images(ws, dataset)
    params = CategorizeClipParams(
        dataset=dataset,
        list=(category_list.name, category_list.version),
        spec=dataclasses.asdict(spec),
        settings_hash=zero_shot_settings_hash(spec, category_list),
        workers=0,  # one process: the model is loaded once and the batch uses every core
        chunk_size=ws.settings.clip.batch_size,
    )
    title = f"Categorize (CLIP zero-shot): {dataset} with {spec.label} ({category_list.label})"
    return manager.create("categorize_clip", title, params, dataset_id)


@dataclass(frozen=True)
class ZeroShotOptions:
    workspace: str
    spec: ClipSpec
    categories: tuple[str, ...]
    list_label: str
    settings_hash: str
    journal_dir: str
    batch_size: int


class CategorizeClipParams(JobParams):
    """CLIP zero-shot categories: the dataset, the category list (name, version) and the model."""

    dataset: str
    list: tuple[str, int]
    spec: dict[str, Any]
    settings_hash: str


class CategorizeClipTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = CategorizeClipParams
    kind: ClassVar[str] = "categorize_clip"
    holds_model: ClassVar[bool] = True

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        return [(CLIP_STAGE, CategorizeClipParams.model_validate(params).settings_hash)]

    def batch_work(self) -> Any:
        return zero_shot_batch

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> ZeroShotOptions:
        p = CategorizeClipParams.model_validate(params)
        category_list = load_list(ws, p.list[0], p.list[1])
        return ZeroShotOptions(
            workspace=str(ws.root),
            spec=ClipSpec(**p.spec),
            categories=category_list.categories,
            list_label=category_list.label,
            settings_hash=p.settings_hash,
            journal_dir=str(ws.job_dir(job_id)),
            batch_size=p.chunk_size or ws.settings.clip.batch_size,
        )


_TEXT_FEATURES: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


def zero_shot_batch(
    items: list[tuple[str, str | None]], opts: ZeroShotOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """Score a batch of (image hash, path) items against every category at once."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    loaded = load_clip(opts.spec)
    text = category_text_features(loaded, opts.categories)
    images, keys = [], []
    for image_hash, rel in items:
        path = Path(opts.workspace) / (rel or "")
        try:
            with Image.open(path) as img:
                images.append(ImageOps.exif_transpose(img).convert("RGB"))
            keys.append(image_hash)
        except FileNotFoundError:
            yield _failed(opts, image_hash, "missing", f"{path} is gone from the workspace")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            yield _failed(opts, image_hash, "not_image", f"{path}: cannot decode ({exc})")
    if not images or cancelled():
        return
    probs = category_probabilities(loaded.embed_images(images, opts.batch_size), text, loaded.logit_scale)
    for image_hash, row in zip(keys, probs, strict=True):
        result = {
            "categories": top_categories(row, opts.categories),
            "scores": {c: round(float(p), 4) for c, p in zip(opts.categories, row, strict=True)},
            "list": opts.list_label,
            "model": opts.spec.label,
        }
        yield ItemResult(
            key=image_hash,
            status="ok",
            image_hash=image_hash,
            result={"categories": result["categories"]},
            stages=[(CLIP_STAGE, opts.settings_hash, "ok", result, None)],
        )


def category_text_features(loaded: LoadedClip, categories: tuple[str, ...]) -> np.ndarray:
    """The prompts' text embeddings, computed once per model and list in this process."""
    key = (loaded.spec.identity(), categories)
    if key not in _TEXT_FEATURES:
        _TEXT_FEATURES[key] = loaded.embed_texts([PROMPT_TEMPLATE.format(c) for c in categories])
    return _TEXT_FEATURES[key]


def category_probabilities(images: np.ndarray, texts: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over categories of the scaled cosine similarities (rows: images)."""
    logits = logit_scale * images @ texts.T
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def top_categories(probs: np.ndarray, categories: tuple[str, ...]) -> list[str]:
    order = np.argsort(-probs)
    chosen = [categories[order[0]]]
    if len(order) > 1 and probs[order[1]] >= SECOND_CATEGORY_RATIO * probs[order[0]]:
        chosen.append(categories[order[1]])
    return chosen


def _failed(opts: ZeroShotOptions, image_hash: str, error_class: str, message: str) -> ItemResult:
    return ItemResult(
        key=image_hash,
        status="failed",
        error_class=error_class,
        error_message=message,
        image_hash=image_hash,
        stages=[(CLIP_STAGE, opts.settings_hash, "failed", None, f"{error_class}: {message}")],
    )
