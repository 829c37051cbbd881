"""REST API over the workspace: a safe successor to seed 004's cache web API.

Every endpoint but `/health` and the docs needs the token (`Authorization: Bearer <token>` or `X-API-Key`),
compared in constant time and checked before a request's body is read. Clients never name files or
databases: images are addressed by content hash (64 hex digits) and only this workspace's catalog is read.
Errors are JSON with proper status codes; request bodies are bounded before they are read, uploads'
images by decoded pixels (services.stages.classify.uploads); nothing is unpickled. OpenAPI docs are at `/docs`.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import images
from services.api.deps import UNAUTHORISED, token_matches
from services.api.limits import json_answer, run_within
from services.core.errors import WorkbenchError, problem
from services.core.workspace import Workspace
from services.stages.classify import api as classify_api
from services.stages.classify.uploads import UploadLimits, UploadRefused
from services.stages.explore import api as explore_api
from services.stages.ocr import api as ocr_api

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


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
    """The API for one workspace; `token` must be non-empty (the CLI refuses to start without one). Routes
    come from the routers of the catalog and of each stage that has some; errors end in one handler each."""
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
    app.state.workspace = ws
    app.state.token = token
    app.state.upload_limits = UploadLimits.from_settings(ws.settings, max_images)
    app.state.worker_slots = None

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": _without_paths(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UploadRefused)
    async def upload_refused(_: Request, exc: UploadRefused) -> JSONResponse:
        """An upload refused as a whole: its status, and a detail that may list the members it skipped."""
        return JSONResponse({"detail": _without_paths(exc.detail)}, status_code=exc.status)

    @app.exception_handler(WorkbenchError)
    async def workbench_error(_: Request, exc: WorkbenchError) -> JSONResponse:
        """Every other error of ours: an RFC 9457 problem (`type`, `title`, `status`, `detail`)."""
        body = problem(exc)
        body["detail"] = _without_paths(body["detail"])
        return JSONResponse(body, status_code=exc.http_status, media_type="application/problem+json")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each parameter and the cause (FastAPI's default also echoes the input back)."""
        return JSONResponse({"detail": "; ".join(_parameter_problem(e) for e in exc.errors())}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "catalog_schema": ws.catalog.schema_version}

    app.include_router(images.router)
    app.include_router(classify_api.router)
    app.include_router(ocr_api.router)
    app.include_router(explore_api.router)
    return app


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
