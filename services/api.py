"""REST API over the workspace: a safe successor to seed 004's cache web API.

Every endpoint but `/health` and the docs needs the token (`Authorization: Bearer <token>` or `X-API-Key`),
compared in constant time and checked before a request's body is read. Clients never name files or
databases: images are addressed by content hash (64 hex digits) and only this workspace's catalog is read.
Errors are JSON with proper status codes; request bodies are bounded before they are read, uploads'
images by decoded pixels (services.api_uploads); nothing is unpickled. OpenAPI docs are at `/docs`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from functools import partial
from typing import IO, Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api_uploads import UploadLimits, UploadRefused, UploadReport, read_upload
from services.asgi_limits import json_answer, run_within
from services.clip_models import ClipSpec, LoadedClip, ModelUnavailableError, autocast_for, load_clip
from services.embeddings import EMBED_STAGE, EmbeddingStore, list_embedding_keys, vector_for
from services.imaging import ImageCheckError
from services.locators import import_roots, shown_locator
from services.names import InvalidNameError, SafeName, check_name
from services.ocr import OcrSetup, RecipeMisfitError, ocr_bytes
from services.ocr_engines import EngineUnavailableError
from services.ocr_rules import RulesError
from services.recipes import RecipeError
from services.scoring import bin_edges, bin_index, score, stack_models
from services.tag_models import ModelFileError, TagModel, list_models
from services.workspace import Workspace

HASH = re.compile(r"^[0-9a-f]{64}$")


OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
UNAUTHORISED = {"detail": "missing or wrong token"}


def token_matches(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    """`Authorization: Bearer <token>` or `X-API-Key: <token>`, compared in constant time."""
    supplied = b""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization" and value[:7].lower() == b"bearer ":
            supplied = value[7:].strip()
            break
        if lowered == b"x-api-key" and not supplied:
            supplied = value.strip()
    return bool(supplied) and hmac.compare_digest(supplied, token.encode())


class TokenGate:
    """Checks the token in the headers before the app sees the request, so an anonymous client never has its
    body read: FastAPI parses File/Form bodies before dependencies run, which let anyone make the server read
    and spool `max_upload_mb` per request. `/health` and the OpenAPI docs (`/docs`, `/openapi.json`: the
    shape of the API, no data) answer GET without a token; every other method and path needs it."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        if not token:
            raise ValueError("the API needs a token")
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in self.open_paths and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)
            return
        if not token_matches(list(scope.get("headers") or []), self.token):
            await json_answer(send, 401, UNAUTHORISED, ((b"www-authenticate", b"Bearer"),))
            return
        await self.app(scope, receive, send)


JSON_AND_FORM_MARGIN = 64 * 2**10  # multipart framing and part headers, or JSON keys and names, around an image


def ocr_body_limit(max_image_bytes: int) -> int:
    """The largest body POST /ocr can need for an image of `max_image_bytes`: base64 in JSON makes 4 bytes of
    every 3, plus a margin for the multipart framing or the JSON around it."""
    return 4 * -(-max_image_bytes // 3) + JSON_AND_FORM_MARGIN


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, whether or not they declare a Content-Length: a
    declared length is refused before any body is read, a chunked body as soon as it passes the limit
    (FastAPI turns errors raised while it parses a form into a 400, so that answer is replaced by the 413).
    `path_limits` gives routes that need less their own, lower limit (POST /ocr takes one image, so its body
    is bounded by `api.max_image_bytes`, not by `max_upload_mb`)."""

    def __init__(self, app: ASGIApp, limit: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.path_limits = {path.rstrip("/"): min(limit, cap) for path, cap in (path_limits or {}).items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", "")).rstrip("/")
        limit = self.path_limits.get(path, self.limit)
        route = path if path in self.path_limits else None
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit, route)
            return
        if await run_within(self.app, scope, receive, send, limit):
            await _too_large(send, limit, route)


async def _too_large(send: Send, limit: int, route: str | None = None) -> None:
    if route is None:
        detail = f"request body over the {limit // 2**20} MB limit"
    else:
        detail = f"request body over the {limit:,} byte limit of {route} (one image within api.max_image_bytes)"
    await json_answer(send, 413, {"detail": detail})


def create_app(ws: Workspace, token: str, max_images: int | None = None) -> FastAPI:
    """The API for one workspace; `token` must be non-empty (the CLI refuses to start without one)."""
    if not token:
        raise ValueError("the API needs a token: set WORKBENCH_API_TOKEN (or api_token in .streamlit/secrets.toml)")
    app = FastAPI(
        title="Image-dataset workbench API",
        version="1",
        description="Images by content hash, embeddings, tags, trained models and classification of uploads.",
    )
    app.add_middleware(
        BodyLimit,
        limit=ws.settings.max_upload_mb * 2**20,
        path_limits={"/ocr": ocr_body_limit(ws.settings.api.max_image_bytes)},
    )
    app.add_middleware(TokenGate, token=token)  # added last: runs first, before any body is read
    limits = UploadLimits.from_settings(ws.settings, max_images)
    workers: list[anyio.CapacityLimiter] = []  # made in the event loop, on the first classify request

    def authorised(request: Request) -> None:
        """The same check as TokenGate (which already ran): keeps the lock on each route in the OpenAPI docs."""
        if not token_matches(list(request.scope.get("headers") or []), token):
            raise HTTPException(401, UNAUTHORISED["detail"], headers={"WWW-Authenticate": "Bearer"})

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
        point = secrets.token_hex(32)  # the first image whose hash follows a random one: an indexed lookup
        row = (
            ws.catalog.conn.execute(
                "SELECT hash FROM images WHERE hash >= ? AND is_placeholder = 0 ORDER BY hash LIMIT 1", (point,)
            ).fetchone()
            or ws.catalog.conn.execute(
                "SELECT hash FROM images WHERE is_placeholder = 0 ORDER BY hash LIMIT 1"
            ).fetchone()
        )
        if row is None:
            raise HTTPException(404, "the catalog has no images yet")
        return image_metadata(row["hash"])

    @app.get("/images/{image_hash}", dependencies=guard)
    def image_metadata(image_hash: str) -> dict[str, Any]:
        row = _image_row(ws, image_hash)
        sources = ws.catalog.query("SELECT kind, locator FROM image_sources WHERE image_hash = ?", (image_hash,))
        roots = import_roots(ws.catalog) if any(s["kind"] in ("path", "zip") for s in sources) else []
        stages = ws.catalog.query(
            "SELECT stage, settings_hash, status FROM stage_results WHERE image_hash = ? ORDER BY stage", (image_hash,)
        )
        return {
            "hash": row["hash"],
            "format": row["format"],
            "bytes": row["bytes"],
            "width": row["width"],
            "height": row["height"],
            # files by their place in what was imported (`parts/p.png`), never the server's path (R9)
            "sources": [{"kind": s["kind"], "locator": shown_locator(s["locator"], roots)} for s in sources],
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
        """Scores of every model for the image, or for each image of the zip (members that cannot be used
        are listed under `skipped` with the reason). Decoding and embedding run in a worker thread, at most
        `api.workers` requests at once, so the server keeps answering meanwhile."""
        if not workers:
            workers.append(anyio.CapacityLimiter(max(1, ws.settings.api.workers)))
        name = file.filename or "upload"
        try:
            return await anyio.to_thread.run_sync(
                partial(_classify_upload, ws, file.file, name, dataset, bins, limits), limiter=workers[0]
            )
        except UploadRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None

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
        if len(data) > ws.settings.api.max_image_bytes:
            limit = ws.settings.api.max_image_bytes
            raise HTTPException(413, f"the image is {len(data):,} bytes, over the {limit:,} byte limit")
        chosen = {"engine": engine, "recipe": recipe, "rules": rules}
        for key, value in options.items():  # the JSON body's names, checked like the query's
            try:
                chosen[key] = check_name(value, key)
            except InvalidNameError as exc:
                raise HTTPException(422, str(exc)) from None
        if not workers:
            workers.append(anyio.CapacityLimiter(max(1, ws.settings.api.workers)))
        try:  # engines load and images decode in a worker thread: the server keeps answering meanwhile
            return await anyio.to_thread.run_sync(partial(_ocr_one, ws, data, chosen), limiter=workers[0])
        except (RulesError, RecipeError) as exc:
            raise HTTPException(422, str(exc)) from None
        except ImageCheckError as exc:
            raise HTTPException(422, f"{exc.error_class}: {exc.message}") from None
        except RecipeMisfitError as exc:
            raise HTTPException(422, f"{exc.error_class}: {exc}") from None
        except EngineUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None

    return app


def _ocr_one(ws: Workspace, data: bytes, chosen: dict[str, str | None]) -> dict[str, Any]:
    """The work of POST /ocr, in a worker thread: the named engine, recipe and rules, then one image (decoded
    pixels bounded by `api.max_image_pixels`)."""
    try:
        setup = OcrSetup.resolve(ws, chosen["engine"], chosen["recipe"], chosen["rules"])
    except EngineUnavailableError as exc:  # a named engine that cannot run here: the request's fault
        raise HTTPException(422, str(exc)) from None
    return ocr_bytes(ws, data, setup, max_pixels=ws.settings.api.max_image_pixels)


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


def _classify_upload(
    ws: Workspace, upload: IO[bytes], filename: str, dataset: str | None, bins: int, limits: UploadLimits
) -> dict[str, Any]:
    """The work of POST /classify, in a worker thread: models, then the upload's images one at a time (stored
    vectors reused; the others decoded, preprocessed and embedded in small batches), then one scoring pass."""
    try:
        chosen = list_models(ws, dataset)
    except ModelFileError as exc:
        raise UploadRefused(422, f"dataset: {exc}") from None
    if not chosen:
        raise UploadRefused(404, "no trained models" + (f" for dataset {dataset!r}" if dataset else ""))
    try:
        stacked = stack_models(chosen)
    except ModelFileError as exc:
        raise UploadRefused(409, f"{exc}; pass ?dataset= to pick one set of models") from None
    store = EmbeddingStore(ws, stacked.embedding_key)
    stored = store.stored_hashes()
    embedder = _Embedder(chosen[0], ws.settings.clip.batch_size)
    report = UploadReport()
    images: list[tuple[str, str]] = []
    seen: set[str] = set()  # an image twice in one upload is decoded once
    vectors: dict[str, np.ndarray] = {}

    def known(image_hash: str) -> bool:
        return image_hash in stored or image_hash in seen

    for image in read_upload(upload, filename, limits, embedder.prepare, known, report=report):
        images.append((image.name, image.hash))
        seen.add(image.hash)
        if image.prepared is not None:
            vectors.update(embedder.add(image.hash, image.prepared))
    vectors.update(embedder.flush())
    if not images:
        raise UploadRefused(422, {"message": "no image in the upload", "skipped": report.skipped})
    from_store = sorted({h for _, h in images if h in stored} - vectors.keys())
    if from_store:
        loaded = store.load(from_store)
        vectors.update(zip(loaded.hashes, loaded.vectors, strict=True))
    matrix = np.stack([vectors[h] for _, h in images]).astype(np.float32)
    probabilities = score(matrix, stacked)
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
        for i, (name, image_hash) in enumerate(images)
    ]
    return {"embedding": stacked.embedding_key, "results": results, "skipped": report.skipped}


class _Embedder:
    """The models' CLIP model, loaded on the first image that needs it; images arrive as preprocessed tensors
    (224x224) and are embedded `batch` at a time, so decoded images are never collected."""

    def __init__(self, model: TagModel, batch: int) -> None:
        self.model = model
        self.batch = max(1, batch)
        self.loaded: LoadedClip | None = None
        self.pending: list[tuple[str, Any]] = []

    def _clip(self) -> LoadedClip:
        if self.loaded is None:
            spec = self.model.manifest.get("embedding_spec")
            if not spec:
                raise UploadRefused(409, f"{self.model.name}: its manifest does not name the CLIP model to embed with")
            try:
                self.loaded = load_clip(ClipSpec(**spec))
            except ModelUnavailableError as exc:
                raise UploadRefused(503, str(exc)) from None
        return self.loaded

    def prepare(self, image: Any) -> Any:
        return self._clip().preprocess(image)

    def add(self, image_hash: str, tensor: Any) -> dict[str, np.ndarray]:
        self.pending.append((image_hash, tensor))
        return self.flush() if len(self.pending) >= self.batch else {}

    def flush(self) -> dict[str, np.ndarray]:
        if not self.pending:
            return {}
        import torch

        loaded = self._clip()
        batch = torch.stack([t for _, t in self.pending]).to(loaded.device)
        with torch.inference_mode(), autocast_for(loaded.device):
            features = loaded.model.encode_image(batch).float().cpu().numpy()
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        out = {h: features[i].astype(np.float32) for i, (h, _) in enumerate(self.pending)}
        self.pending = []
        return out
