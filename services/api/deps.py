"""What every route depends on: the workspace and the token the app was made for, the slots of worker threads
for heavy requests, an image row by hash. Routers live with their stage (`services/stages/<stage>/api.py`) and
read these from `request.app.state`, so no route is a closure inside `create_app`."""

from __future__ import annotations

import hmac
import re
from typing import Any

import anyio
from fastapi import HTTPException, Request

from services.compat.seed_hash_ids import SEED_HASH_ID, recorded_image
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
    """The image's catalog row, by its sha256 or by seed 004's `hash_id` when the workspace has it recorded (an
    imported seed metadata file, or a lookup from Python: a request never decodes the catalog to find one)."""
    if SEED_HASH_ID.fullmatch(image_hash):
        found = recorded_image(ws, image_hash)
        if found is None:
            raise HTTPException(404, f"no image with seed hash_id {image_hash[:16]}... recorded in this workspace")
        image_hash = found
    elif not HASH.match(image_hash):
        raise HTTPException(
            422, "an image hash is 64 lowercase hex digits (sha256 of the file), or seed 004's 128-digit hash_id"
        )
    row = ws.catalog.conn.execute("SELECT * FROM images WHERE hash = ?", (image_hash,)).fetchone()
    if row is None:
        raise HTTPException(404, f"no image {image_hash} in this workspace")
    return row
