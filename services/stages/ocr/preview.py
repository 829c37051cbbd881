"""OCR of one image in the workspace's worker, on the engine its OCR jobs keep loaded: the OCR page's preview,
and the API's `POST /ocr` and the device socket's images (read, logged to the CSV and pushed as they always
were). Each falls back to the caller's process when no worker serves the workspace (a laptop without
`make run`), so there is one copy of a model per workspace when a worker runs, and the old behaviour without."""

from __future__ import annotations

from typing import Any, Literal

from services.core.settings import Settings
from services.core.workspace import Workspace
from services.jobs.worker_requests import RequestHandler, ask_worker
from services.stages.ocr.rules import OcrRules
from services.stages.ocr.stage import OcrResult, OcrSetup, decode_bytes, ocr_bytes, read_image
from services.stages.preprocess.recipes import parse_recipe

PREVIEW_OP = "ocr-preview"
READ_OP = "ocr-read"


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
        if not isinstance(args.get("engine"), str) or not isinstance(args.get("rules"), str):
            raise ValueError("a preview request names an engine and gives its rules")
        result = preview_here(settings, body, args["engine"], str(recipe_json) if recipe_json else None, args["rules"])
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


def read_handler(ws: Workspace) -> RequestHandler:
    """The worker's `ocr_bytes` for the API and the socket: the setup comes resolved (engine name, recipe and
    rules as JSON); the pixel bound is the smaller of the caller's and the worker's."""

    def handle(body: bytes, args: dict[str, Any]) -> dict[str, Any]:
        engine, recipe_json, rules_json = args.get("engine"), args.get("recipe"), args.get("rules")
        if not isinstance(engine, str) or not isinstance(rules_json, str) or not isinstance(recipe_json, str | None):
            raise ValueError("an OCR request names an engine and gives its rules (and recipe) as JSON")
        setup = OcrSetup(engine, parse_recipe(recipe_json) if recipe_json else None,
                         OcrRules.model_validate_json(rules_json))  # fmt: skip
        bound = ws.settings.download.max_pixels
        asked = args.get("max_pixels")
        max_pixels = min(bound, asked) if isinstance(asked, int) and asked > 0 else bound
        return ocr_bytes(ws, body, setup, max_pixels)

    return handle


def read_one(ws: Workspace, data: bytes, setup: OcrSetup, max_pixels: int | None = None) -> dict[str, Any]:
    """`ocr_bytes` in the worker when one serves the workspace, else in this process; the same answer."""
    args = {
        "engine": setup.engine,
        "recipe": setup.recipe.model_dump_json() if setup.recipe else None,
        "rules": setup.rules.model_dump_json(),
        "max_pixels": max_pixels,
    }
    answer = ask_worker(ws, READ_OP, data, args)
    if answer is None:
        return ocr_bytes(ws, data, setup, max_pixels)
    return dict(answer)
