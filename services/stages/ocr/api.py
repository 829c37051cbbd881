"""The OCR stage's route: one image (multipart or seed 003's base64 JSON) read with a named engine, recipe and
rules."""

from __future__ import annotations

import base64
import binascii
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request

from services.api.deps import authorised, worker_slots, workspace
from services.core.names import SafeName, check_name
from services.core.workspace import Workspace
from services.stages.ocr.engines import EngineUnavailableError
from services.stages.ocr.preview import read_one
from services.stages.ocr.stage import OcrSetup

router = APIRouter(dependencies=[Depends(authorised)])


@router.post("/ocr")
async def ocr(
    request: Request,
    engine: Annotated[SafeName | None, Query(description="auto, rapidocr, tesseract or trocr")] = None,
    recipe: Annotated[SafeName | None, Query(description="a saved or built-in Preprocess recipe, by name")] = None,
    rules: Annotated[SafeName | None, Query(description="saved or built-in OCR rules, e.g. seed-003")] = None,
) -> dict[str, Any]:
    """An image as multipart `file`, or JSON `{"image": base64, "engine"?, "recipe"?, "rules"?}` (seed
    003's ImageRequest). Answers `code`, `cord` [x1, y1, x2, y2], `raw`, `valid`, `confidence`. Recipes and
    rules are named, never given as files."""
    ws = workspace(request)
    data, options = await _ocr_input(request)
    if len(data) > ws.settings.api.max_image_bytes:
        limit = ws.settings.api.max_image_bytes
        raise HTTPException(413, f"the image is {len(data):,} bytes, over the {limit:,} byte limit")
    chosen = {"engine": engine, "recipe": recipe, "rules": rules}
    for key, value in options.items():  # the JSON body's names, checked like the query's (422 if not a name)
        chosen[key] = check_name(value, key)
    # Engines load and images decode in a worker thread: the server keeps answering meanwhile. Bad rules, recipes
    # and images (422), a misfit recipe (422), no engine on this machine (503): the app's one error handler.
    return await anyio.to_thread.run_sync(partial(_ocr_one, ws, data, chosen), limiter=worker_slots(request))


def _ocr_one(ws: Workspace, data: bytes, chosen: dict[str, str | None]) -> dict[str, Any]:
    """The work of POST /ocr, in a worker thread: the named engine, recipe and rules, then one image (decoded
    pixels bounded by `api.max_image_pixels`)."""
    try:
        setup = OcrSetup.resolve(ws, chosen["engine"], chosen["recipe"], chosen["rules"])
    except EngineUnavailableError as exc:  # a named engine that cannot run here: the request's fault
        raise HTTPException(422, str(exc)) from None
    return read_one(ws, data, setup, max_pixels=ws.settings.api.max_image_pixels)  # in the worker when one serves


async def _ocr_input(request: Request) -> tuple[bytes, dict[str, str]]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "multipart body without a `file` part")
        return await upload.read(), {}
    if kind.startswith("application/json"):
        try:
            body = await request.json()
            data = base64.b64decode(body["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise HTTPException(422, 'JSON body must be {"image": "<base64>"}') from None
        if not isinstance(body, dict):
            raise HTTPException(422, 'JSON body must be {"image": "<base64>"}')
        return data, {k: body[k] for k in ("engine", "recipe", "rules") if body.get(k)}
    raise HTTPException(415, "send multipart/form-data with `file`, or application/json with base64 `image`")
