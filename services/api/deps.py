"""What every route depends on: the workspace and the token the app was made for, the slots of worker threads
for heavy requests, an image row by hash. Routers live with their stage (`services/stages/<stage>/api.py`) and
read these from `request.app.state`, so no route is a closure inside `create_app`."""

from __future__ import annotations

import hmac
import re
from typing import Any

import anyio
from fastapi import HTTPException, Request

from services.core.workspace import Workspace

HASH = re.compile(r"^[0-9a-f]{64}$")
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


def workspace(request: Request) -> Workspace:
    """The workspace this API serves."""
    ws: Workspace = request.app.state.workspace
    return ws


def authorised(request: Request) -> None:
    """The same check as TokenGate (which already ran): keeps the lock on each route in the OpenAPI docs."""
    if not token_matches(list(request.scope.get("headers") or []), request.app.state.token):
        raise HTTPException(401, UNAUTHORISED["detail"], headers={"WWW-Authenticate": "Bearer"})


def worker_slots(request: Request) -> anyio.CapacityLimiter:
    """At most `api.workers` heavy requests (decoding, embedding, OCR) at once, in worker threads; made in the
    event loop on the first request that needs it."""
    state = request.app.state
    if getattr(state, "worker_slots", None) is None:
        state.worker_slots = anyio.CapacityLimiter(max(1, workspace(request).settings.api.workers))
    slots: anyio.CapacityLimiter = state.worker_slots
    return slots


def image_row(ws: Workspace, image_hash: str) -> Any:
    if not HASH.match(image_hash):
        raise HTTPException(422, "an image hash is 64 lowercase hex digits (sha256 of the file)")
    row = ws.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (image_hash,)).fetchone()
    if row is None:
        raise HTTPException(404, f"no image {image_hash} in this workspace")
    return row
