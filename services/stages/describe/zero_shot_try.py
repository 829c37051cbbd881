"""The Describe page's "try one image" with CLIP zero-shot: scored in the workspace's worker, on the CLIP model
its jobs keep loaded, or in the caller's process when no worker serves the workspace (a laptop without
`make run`). The same prompts, probabilities and top categories as the `categorize_clip` job."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

from services.core.settings import Settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec, load_clip
from services.io.imaging import decode_image
from services.jobs.worker_requests import RequestHandler, ask_worker
from services.stages.describe.categories import MAX_CATEGORIES, MAX_CATEGORY_CHARS, CategoryList
from services.stages.describe.categorize_clip import (
    category_probabilities,
    category_text_features,
    top_categories,
)

TRY_OP = "clip-zero-shot"


@dataclass(frozen=True)
class ZeroShotTry:
    """One image's categories and every category's probability, by model."""

    categories: list[str]
    scores: dict[str, float]
    model: str
    seconds: float  # scoring time where it ran (the model load included on a first try)


def zero_shot_here(settings: Settings, data: bytes, spec: ClipSpec, categories: tuple[str, ...]) -> ZeroShotTry:
    """One image scored against the categories in this process (decoded within the pixel bound)."""
    if not categories or len(categories) > MAX_CATEGORIES or any(len(c) > MAX_CATEGORY_CHARS for c in categories):
        raise ValueError(f"a category list has 1 to {MAX_CATEGORIES} names of at most {MAX_CATEGORY_CHARS} characters")
    started = time.perf_counter()
    image, _, _, _ = decode_image(data, settings.download.max_pixels)
    loaded = load_clip(spec)
    probs = category_probabilities(
        loaded.embed_images([image.convert("RGB")], 1), category_text_features(loaded, categories), loaded.logit_scale
    )[0]
    return ZeroShotTry(
        categories=top_categories(probs, categories),
        scores={c: round(float(p), 4) for c, p in zip(categories, probs, strict=True)},
        model=spec.label,
        seconds=round(time.perf_counter() - started, 3),
    )


def zero_shot_handler(settings: Settings) -> RequestHandler:
    """What the worker does when a page asks (its CLIP models stay loaded between requests and jobs)."""

    def handle(body: bytes, args: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = ClipSpec(**args["spec"])  # names checked again here (ClipSpec is the guard)
            categories = tuple(str(c) for c in args["categories"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a zero-shot request needs a model spec and a list of categories ({exc})") from None
        return dataclasses.asdict(zero_shot_here(settings, body, spec, categories))

    return handle


def try_zero_shot(
    ws: Workspace, data: bytes, spec: ClipSpec, category_list: CategoryList
) -> tuple[ZeroShotTry, Literal["worker", "here"]]:
    """The image's CLIP categories and where they were scored: the worker when one serves, else this process."""
    args = {"spec": dataclasses.asdict(spec), "categories": list(category_list.categories)}
    answer = ask_worker(ws, TRY_OP, data, args)
    if answer is None:
        return zero_shot_here(ws.settings, data, spec, category_list.categories), "here"
    return ZeroShotTry(**answer), "worker"
