"""The OCR page's preview of one image: read in the workspace's worker, on the engine its OCR jobs keep loaded,
or in the caller's process when no worker serves the workspace (a laptop without `make run`)."""

from __future__ import annotations

from typing import Any, Literal

from services.core.settings import Settings
from services.core.workspace import Workspace
from services.jobs.worker_requests import RequestHandler, ask_worker
from services.stages.ocr.rules import OcrRules
from services.stages.ocr.stage import OcrResult, decode_bytes, read_image
from services.stages.preprocess.recipes import parse_recipe

PREVIEW_OP = "ocr-preview"


def preview_here(settings: Settings, data: bytes, engine: str, recipe_json: str | None, rules_json: str) -> OcrResult:
    """One image through recipe, engine and rules in this process (decoded within the pixel bound)."""
    recipe = parse_recipe(recipe_json) if recipe_json else None
    rules = OcrRules.model_validate_json(rules_json)
    bound = settings.download.max_pixels
    image = decode_bytes(data, bound)
    return read_image(engine, settings, image, recipe, rules, bound)


def preview_handler(settings: Settings) -> RequestHandler:
    """What the worker does when a page asks for a preview (its engines stay loaded between requests)."""

    def handle(body: bytes, args: dict[str, Any]) -> dict[str, Any]:
        recipe_json = args.get("recipe")
        result = preview_here(
            settings, body, str(args["engine"]), str(recipe_json) if recipe_json else None, str(args["rules"])
        )
        return result.to_dict()

    return handle


def preview(
    ws: Workspace, data: bytes, engine: str, recipe_json: str | None, rules_json: str
) -> tuple[OcrResult, Literal["worker", "here"]]:
    """The preview and where it was read: the worker when one serves the workspace, else this process."""
    answer = ask_worker(ws, PREVIEW_OP, data, {"engine": engine, "recipe": recipe_json, "rules": rules_json})
    if answer is None:
        return preview_here(ws.settings, data, engine, recipe_json, rules_json), "here"
    return OcrResult(**answer), "worker"
