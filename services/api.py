"""REST API over the workspace: a safe successor to seed 004's cache web API.

Every endpoint but `/health` needs the token (`Authorization: Bearer <token>` or `X-API-Key`), compared in
constant time. Clients never name files or databases: images are addressed by content hash (64 hex digits)
and only this workspace's catalog is read. Errors are JSON with proper status codes; request bodies are
bounded before they are read; nothing is unpickled. OpenAPI docs are at `/docs`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import re
import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.archives import ArchiveError, ArchiveLimits, ArchiveReader, list_images
from services.clip_models import ClipSpec, ModelUnavailableError, load_clip
from services.embeddings import EMBED_STAGE, list_embedding_keys, vector_for
from services.imaging import ImageCheckError, decode_image, sha256_hex
from services.names import InvalidNameError, SafeName, check_name
from services.ocr import OcrSetup, RecipeMisfitError, ocr_bytes
from services.ocr_engines import EngineUnavailableError
from services.ocr_rules import RulesError
from services.recipes import RecipeError
from services.scoring import bin_edges, bin_index, score, stack_models
from services.tag_models import ModelFileError, TagModel, list_models
from services.workspace import Workspace

HASH = re.compile(r"^[0-9a-f]{64}$")


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, whether or not they declare a Content-Length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail": "request body over the {limit // 2**20} MB limit"}}'.encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def create_app(ws: Workspace, token: str, max_images: int = 2000) -> FastAPI:
    """The API for one workspace; `token` must be non-empty (the CLI refuses to start without one)."""
    if not token:
        raise ValueError("the API needs a token: set WORKBENCH_API_TOKEN (or api_token in .streamlit/secrets.toml)")
    app = FastAPI(
        title="Image-dataset workbench API",
        version="1",
        description="Images by content hash, embeddings, tags, trained models and classification of uploads.",
    )
    app.add_middleware(BodyLimit, limit=ws.settings.max_upload_mb * 2**20)

    def authorised(request: Request) -> None:
        supplied = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})

    guard = [Depends(authorised)]

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": _without_paths(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each parameter and the cause (FastAPI's default also echoes the input back)."""
        return JSONResponse({"detail": "; ".join(_parameter_problem(e) for e in exc.errors())}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "catalog_schema": ws.catalog.schema_version}

    @app.get("/images/random", dependencies=guard)
    def random_image() -> dict[str, Any]:
        """A random stored image (404 on an empty catalog, where seed 004 looped forever)."""
        row = ws.catalog.conn.execute(
            """SELECT hash FROM images WHERE is_placeholder = 0 LIMIT 1
               OFFSET abs(random()) % MAX(1, (SELECT COUNT(*) FROM images WHERE is_placeholder = 0))"""
        ).fetchone()
        if row is None:
            raise HTTPException(404, "the catalog has no images yet")
        return image_metadata(row["hash"])

    @app.get("/images/{image_hash}", dependencies=guard)
    def image_metadata(image_hash: str) -> dict[str, Any]:
        row = _image_row(ws, image_hash)
        sources = ws.catalog.query("SELECT kind, locator FROM image_sources WHERE image_hash = ?", (image_hash,))
        stages = ws.catalog.query(
            "SELECT stage, settings_hash, status FROM stage_results WHERE image_hash = ? ORDER BY stage", (image_hash,)
        )
        return {
            "hash": row["hash"],
            "format": row["format"],
            "bytes": row["bytes"],
            "width": row["width"],
            "height": row["height"],
            "sources": [{"kind": s["kind"], "locator": s["locator"]} for s in sources],
            "stages": [{"stage": s["stage"], "settings": s["settings_hash"], "status": s["status"]} for s in stages],
        }

    @app.get("/images/{image_hash}/embedding", dependencies=guard)
    def embedding(
        image_hash: str, model: Annotated[SafeName | None, Query(description="embedding key")] = None
    ) -> dict[str, Any]:
        _image_row(ws, image_hash)
        keys = [
            r["settings_hash"]
            for r in ws.catalog.query(
                "SELECT settings_hash FROM stage_results WHERE image_hash = ? AND stage = ? AND status = 'ok'",
                (image_hash, EMBED_STAGE),
            )
        ]
        if model is None:
            if len(keys) != 1:
                raise HTTPException(404 if not keys else 400, f"embeddings of this image: {keys}; pass ?model=")
            model = keys[0]
        if model not in list_embedding_keys(ws) or model not in keys:
            raise HTTPException(404, f"no {model!r} embedding for this image (it has: {keys})")
        vector = vector_for(ws, model, image_hash)
        if vector is None:
            raise HTTPException(404, f"no {model!r} embedding for this image")
        return {"hash": image_hash, "model": model, "dim": int(vector.shape[0]), "vector": vector.tolist()}

    @app.get("/images/{image_hash}/tags", dependencies=guard)
    def tags(image_hash: str) -> dict[str, Any]:
        _image_row(ws, image_hash)
        rows = ws.catalog.query(
            """SELECT DISTINCT d.name AS dataset, json_extract(r.data, '$[1]') AS tag
               FROM job_items j JOIN jobs jb ON jb.id = j.job_id AND jb.kind = 'import_folder'
               JOIN datasets d ON d.id = jb.dataset_id
               JOIN dataset_rows r ON r.dataset_id = d.id AND r.source_key = j.item_key
               WHERE j.image_hash = ? AND j.status = 'ok' AND d.columns = '["path", "tag"]'""",
            (image_hash,),
        )
        by_dataset: dict[str, list[str]] = {}
        for r in rows:
            if r["tag"]:
                by_dataset.setdefault(r["dataset"], []).append(r["tag"])
        scores = ws.catalog.query(
            "SELECT model, tag, score FROM tag_scores WHERE image_hash = ? ORDER BY score DESC", (image_hash,)
        )
        return {
            "hash": image_hash,
            "tags": {k: sorted(v) for k, v in by_dataset.items()},
            "scores": [{"model": s["model"], "tag": s["tag"], "score": s["score"]} for s in scores],
        }

    @app.get("/models", dependencies=guard)
    def models(
        dataset: Annotated[SafeName | None, Query(description="only this dataset's models (a name)")] = None,
    ) -> list[dict[str, Any]]:
        try:
            return [_model_summary(m) for m in list_models(ws, dataset)]
        except ModelFileError as exc:
            raise HTTPException(422, f"dataset: {exc}") from None

    @app.post("/classify", dependencies=guard)
    async def classify(
        file: UploadFile = File(..., description="an image, or a zip of images"),
        dataset: Annotated[SafeName | None, Query(description="use only this dataset's models (a name)")] = None,
        bins: int = Query(10, ge=1, le=1000),
    ) -> dict[str, Any]:
        data = await file.read()
        try:
            chosen = list_models(ws, dataset)
        except ModelFileError as exc:
            raise HTTPException(422, f"dataset: {exc}") from None
        if not chosen:
            raise HTTPException(404, "no trained models" + (f" for dataset {dataset!r}" if dataset else ""))
        try:
            stacked = stack_models(chosen)
        except ModelFileError as exc:
            raise HTTPException(409, f"{exc}; pass ?dataset= to pick one set of models") from None
        images, skipped = _images_of(data, file.filename or "upload", max_images)
        if not images:
            raise HTTPException(422, {"message": "no image in the upload", "skipped": skipped})
        vectors = _vectors(ws, chosen[0], stacked.embedding_key, [(h, img) for _, h, img in images])
        probabilities = score(vectors, stacked)
        idx = bin_index(probabilities, bins)
        labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in bin_edges(bins)]
        results = [
            {
                "name": name,
                "hash": image_hash,
                "scores": [
                    {
                        "model": stacked.names[m],
                        "tag": stacked.tags[m],
                        "model_type": stacked.types[m],
                        "score": round(float(probabilities[i, m]), 6),
                        "bin": labels[idx[i, m]],
                    }
                    for m in range(len(stacked))
                ],
            }  # fmt: skip
            for i, (name, image_hash, _) in enumerate(images)
        ]
        return {"embedding": stacked.embedding_key, "results": results, "skipped": skipped}

    @app.post("/ocr", dependencies=guard)
    async def ocr(
        request: Request,
        engine: Annotated[SafeName | None, Query(description="auto, rapidocr, tesseract or trocr")] = None,
        recipe: Annotated[SafeName | None, Query(description="a saved or built-in Preprocess recipe, by name")] = None,
        rules: Annotated[SafeName | None, Query(description="saved or built-in OCR rules, e.g. seed-003")] = None,
    ) -> dict[str, Any]:
        """An image as multipart `file`, or JSON `{"image": base64, "engine"?, "recipe"?, "rules"?}` (seed
        003's ImageRequest). Answers `code`, `cord` [x1, y1, x2, y2], `raw`, `valid`, `confidence`. Recipes and
        rules are named, never given as files."""
        data, options = await _ocr_input(request)
        chosen = {"engine": engine, "recipe": recipe, "rules": rules}
        for key, value in options.items():  # the JSON body's names, checked like the query's
            try:
                chosen[key] = check_name(value, key)
            except InvalidNameError as exc:
                raise HTTPException(422, str(exc)) from None
        try:
            setup = OcrSetup.resolve(ws, chosen["engine"], chosen["recipe"], chosen["rules"])
        except (EngineUnavailableError, RulesError, RecipeError) as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            return ocr_bytes(ws, data, setup)
        except ImageCheckError as exc:
            raise HTTPException(422, f"{exc.error_class}: {exc.message}") from None
        except RecipeMisfitError as exc:
            raise HTTPException(422, f"{exc.error_class}: {exc}") from None
        except EngineUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None

    return app


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


_SERVER_PATH = re.compile(r"(?<![\w.~:/-])(?:/[^/\s'\":!,;()\[\]]+){2,}")


def _without_paths(detail: Any) -> Any:
    """Error details with every absolute server path cut to its last part (`/tmp/tmpab12/upload.zip` ->
    `upload.zip`): errors name the item and the cause, never where the server keeps things."""
    if isinstance(detail, str):
        return _SERVER_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], detail)
    if isinstance(detail, dict):
        return {k: _without_paths(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_without_paths(v) for v in detail]
    return detail


def _parameter_problem(error: Any) -> str:
    """`query parameter rules: name must be a name, not a path ...`, without echoing the input."""
    loc = [str(p) for p in error.get("loc", ())]
    where = f"{loc[0]} parameter {'.'.join(loc[1:])}" if len(loc) > 1 else ".".join(loc) or "request"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}"


def _image_row(ws: Workspace, image_hash: str) -> Any:
    if not HASH.match(image_hash):
        raise HTTPException(422, "an image hash is 64 lowercase hex digits (sha256 of the file)")
    row = ws.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (image_hash,)).fetchone()
    if row is None:
        raise HTTPException(404, f"no image {image_hash} in this workspace")
    return row


def _model_summary(m: TagModel) -> dict[str, Any]:
    metrics = m.manifest["metrics"]
    return {
        "name": m.name,
        "tag": m.tag,
        "model_type": m.model_type,
        "dataset": m.manifest["dataset"],
        "embedding": m.manifest["embedding_key"],
        "version": m.manifest["sha256"][:16],
        "average_precision": metrics["average_precision"],
        "roc_auc": metrics["roc_auc"],
        "f1": metrics["f1"],
    }


def _images_of(data: bytes, filename: str, max_images: int) -> tuple[list[tuple[str, str, Any]], list[dict[str, str]]]:
    """(name, hash, PIL image) of an uploaded image or of every image in an uploaded zip; skipped members."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.zip"
            path.write_bytes(data)
            try:
                members, refused = list_images(path, ArchiveLimits(max_members=max_images * 4))
            except ArchiveError as exc:
                raise HTTPException(422, str(exc)) from None
            if len(members) > max_images:
                raise HTTPException(413, f"{len(members)} images in the zip; the API takes at most {max_images}")
            reader = ArchiveReader()
            out, skipped = [], [{"name": s.locator.split("!", 1)[1], "reason": s.reason} for s in refused]
            for m in members:
                name = m.locator.split("!", 1)[1]
                try:
                    out.append((name, *_decoded(reader.read(m.locator))))
                except (ArchiveError, ImageCheckError, KeyError, OSError) as exc:
                    skipped.append({"name": name, "reason": str(getattr(exc, "message", exc))})
            reader.close()
            return out, skipped
    try:
        return [(filename, *_decoded(data))], []
    except ImageCheckError as exc:
        raise HTTPException(422, f"{filename}: {exc.message}") from None


def _decoded(data: bytes, max_pixels: int = 100_000_000) -> tuple[str, Any]:
    """The content hash and the decoded RGB image (decompression bombs and truncated files refused)."""
    img, _, _, _ = decode_image(data, max_pixels)
    return sha256_hex(data), img.convert("RGB")


def _vectors(ws: Workspace, model: TagModel, key: str, images: list[tuple[str, Any]]) -> np.ndarray:
    """Stored vectors for known images; the rest embedded here with the models' CLIP model (loaded once)."""
    stored = {h: vector_for(ws, key, h) for h, _ in images}
    known: dict[str, np.ndarray] = {h: v for h, v in stored.items() if v is not None}
    todo = [(h, img) for h, img in images if h not in known]
    if todo:
        spec = model.manifest.get("embedding_spec")
        if not spec:
            raise HTTPException(409, f"{model.name}: its manifest does not name the CLIP model to embed with")
        try:
            loaded = load_clip(ClipSpec(**spec))
        except ModelUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None
        for (h, _), vector in zip(todo, loaded.embed_images([img for _, img in todo]), strict=True):
            known[h] = vector
    return np.stack([known[h] for h, _ in images]).astype(np.float32)
