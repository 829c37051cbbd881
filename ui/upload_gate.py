"""Uploads only from sessions with a signed-in user, and never over `max_upload_mb`.

Streamlit's upload endpoint (`PUT /_stcore/upload_file/{session_id}/{file_id}`) takes a file from any
connected session, before the app has run a line (no sign-in), and keeps it in server memory; it knows only
`server.maxUploadSize`, not the per-widget `max_upload_size`. Two layers, both in this one module:

1. `UploadGate`: ASGI middleware given to Streamlit's public `st.App(middleware=...)` by the launcher
   `dashboard.py` (`python -m services dashboard`, `make run`). It answers 403 for a session with no
   signed-in user and 413 over the limit *before the body is read*.
2. `guard_upload_manager()`: for a server started as plain `streamlit run app.py`, where no middleware can
   be added, it wraps the runtime's uploaded-file manager so that the same files are refused with the same
   codes and never stored. Streamlit has read the body by then (at most `server.maxUploadSize`).

Which sessions have a signed-in user is told to this module by the sign-in gate (ui/auth.py) on every
script run, through `mark_session`.

A session also may not pile files up: Streamlit keeps every file id a session PUTs until a later script
run drops the ones no widget holds, so new ids under the per-file limit used to add up without bound
(+192 MB per three 64 MB PUTs). Both layers count what the manager already holds for the session (and
layer 1 the uploads still in flight) and refuse with 413 past SESSION_UPLOAD_FACTOR x `max_upload_mb` in all
(two: a widget's file can be replaced by another of the largest size while the old one is still held) or
past MAX_FILES_PER_SESSION files.

INTERNAL STREAMLIT HOOKS (Streamlit has no public API for these). Checked by
tests/security/test_upload_gate.py::test_the_streamlit_internals_this_module_uses_are_still_there, which
fails loudly when an upgrade removes one:
- `streamlit.runtime.scriptrunner.get_script_run_ctx().session_id`: the id of the session running the script
  (the id in the upload URL);
- `streamlit.runtime.Runtime.instance().uploaded_file_mgr.add_file(session_id, file)`: where an uploaded
  file is stored (layer 2 wraps it on the instance);
- the upload route `/_stcore/upload_file/{session_id}/{file_id}` (layer 1 matches it);
- `MemoryUploadedFileManager.file_storage[session_id][file_id].data`: what a session holds (read-only).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.limits import json_answer, run_within

log = logging.getLogger(__name__)

UPLOAD_ROUTE = re.compile(r"/_stcore/upload_file/(?P<session>[^/]+)/(?P<file>[^/]+)/?$")
MULTIPART_MARGIN = 2**20  # a file's multipart framing (boundaries, part headers), as Streamlit allows
SIGN_IN_FIRST = "sign in before uploading"
SESSION_UPLOAD_FACTOR = 2  # a session holds at most this many times max_upload_mb of uploads at once
MAX_FILES_PER_SESSION = 1_000
_GUARD_MARK = "_workbench_upload_guard"

_lock = threading.Lock()
_signed_in: set[str] = set()
_limit_bytes: list[int] = []  # the latest max_upload_mb the app was run with, in bytes
_in_flight: dict[str, dict[int, int]] = {}  # session -> {request: bytes reserved} for uploads being read (layer 1)


def current_session_id() -> str | None:
    """The id of the session whose script is running here (internal hook: get_script_run_ctx)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else None


def mark_session(signed_in: bool, max_upload_mb: int) -> None:
    """Called by the sign-in gate on every run: may this session upload (an open workbench: yes)?"""
    session_id = current_session_id()
    with _lock:
        _limit_bytes[:] = [max_upload_mb * 2**20]
        if session_id is not None:
            if signed_in:
                _signed_in.add(session_id)
            else:
                _signed_in.discard(session_id)
        if len(_signed_in) > 10_000:
            _forget_closed_sessions()
    guard_upload_manager()


def session_may_upload(session_id: str) -> bool:
    with _lock:
        return session_id in _signed_in


def refusal(
    session_id: str, size: int, limit: int | None = None, file_id: str | None = None, in_flight: int = 0
) -> tuple[int, str] | None:
    """(HTTP status, reason) when this upload must be refused; None when it may be stored. `size` is this
    file's bytes; what the session already holds (but a file under this same `file_id`, which it replaces),
    plus `in_flight` bytes of its other uploads being read, must leave room for it."""
    if not session_may_upload(session_id):
        return 403, SIGN_IN_FIRST
    limit = limit if limit is not None else (_limit_bytes[0] if _limit_bytes else None)
    if limit is not None and size > limit:
        return 413, f"file over the {limit // 2**20} MB upload limit"
    held = {k: v for k, v in held_by(session_id).items() if k != file_id}
    if len(held) >= MAX_FILES_PER_SESSION:
        return 413, f"this session already holds {len(held):,} uploaded files (at most {MAX_FILES_PER_SESSION:,})"
    if limit is not None and sum(held.values()) + in_flight + size > SESSION_UPLOAD_FACTOR * limit:
        return 413, (
            f"this session already holds {(sum(held.values()) + in_flight) / 2**20:.1f} MB of uploads; a session "
            f"holds at most {SESSION_UPLOAD_FACTOR * limit // 2**20} MB (remove files from the upload widgets, "
            "or reload the page)"
        )
    return None


def held_by(session_id: str) -> dict[str, int]:
    """file id -> bytes, of what the running server's uploaded-file manager holds for this session (internal
    hook: MemoryUploadedFileManager.file_storage); empty when no server runs here."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return {}
    storage = getattr(Runtime.instance().uploaded_file_mgr, "file_storage", None)
    if not isinstance(storage, dict):
        return {}
    files = dict(storage.get(session_id) or {})  # a copy made under the GIL: the manager may add meanwhile
    return {file_id: len(record.data) for file_id, record in files.items()}


def _reserve(session_id: str, request: int, size: int) -> int:
    """Reserve `size` bytes for an upload being read; returns what the session's other uploads in flight hold."""
    with _lock:
        others = sum(_in_flight.get(session_id, {}).values())
        _in_flight.setdefault(session_id, {})[request] = size
        return others


def _release(session_id: str, request: int) -> None:
    with _lock:
        reserved = _in_flight.get(session_id, {})
        reserved.pop(request, None)
        if not reserved:
            _in_flight.pop(session_id, None)


def _forget_closed_sessions() -> None:
    from streamlit.runtime import Runtime

    if Runtime.exists():
        runtime = Runtime.instance()
        _signed_in.intersection_update({s for s in _signed_in if runtime.is_active_session(s)})


def guard_upload_manager() -> bool:
    """Wrap the running server's uploaded-file manager once (layer 2). False when no server runs here
    (AppTest, a script run outside `streamlit run`)."""
    from streamlit.runtime import Runtime
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    if not Runtime.exists():
        return False
    manager = Runtime.instance().uploaded_file_mgr
    if not isinstance(manager, MemoryUploadedFileManager):  # the only manager Streamlit 1.67 builds
        if not type(manager).__module__.startswith("unittest.mock"):  # AppTest runs on a mock runtime
            log.error("upload guard not installed: unknown uploaded-file manager %s", type(manager).__name__)
        return False
    if getattr(manager.add_file, _GUARD_MARK, False):
        return True
    store = manager.add_file

    def add_file(session_id: str, file: Any) -> None:
        refused = refusal(session_id, len(file.data), file_id=file.file_id)
        if refused is not None:
            log.warning("upload refused (%s) for session %s", refused[1], session_id[:8])
            raise HTTPException(status_code=refused[0], detail=refused[1])
        store(session_id, file)

    setattr(add_file, _GUARD_MARK, True)
    vars(manager)["add_file"] = add_file  # on the instance: the upload route calls manager.add_file(...)
    return True


class UploadGate:
    """Layer 1: refuses an upload before its body is read (403 without a signed-in user, 413 over the limit,
    by Content-Length or as a chunked body passes it). Every other request passes untouched."""

    def __init__(self, app: ASGIApp, max_upload_mb: int | None = None) -> None:
        if max_upload_mb is None:
            from services.core.settings import load_settings

            max_upload_mb = load_settings().max_upload_mb
        self.app = app
        self.limit = max_upload_mb * 2**20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = UPLOAD_ROUTE.search(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "PUT":
            await self.app(scope, receive, send)
            return
        session = match["session"]
        if not session_may_upload(session):
            await _answer(send, 403, SIGN_IN_FIRST)
            return
        cap = self.limit + MULTIPART_MARGIN
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > cap:
            await _answer(send, 413, f"file over the {self.limit // 2**20} MB upload limit")
            return
        # what this upload may add: its declared body (framing included), or the per-file limit when chunked
        size = min(int(declared), self.limit) if declared.isdigit() else self.limit
        request = id(scope)
        others = _reserve(session, request, size)
        try:
            refused = refusal(session, size, self.limit, file_id=match["file"], in_flight=others)
            if refused is not None:
                log.warning("upload refused (%s) for session %s", refused[1], session[:8])
                # a signed-in user's file past the session's total: read and discard it (at most `cap`
                # bytes, never kept), so the browser gets the 413 and its reason rather than a reset
                await _discard_body(receive, cap)
                await _answer(send, *refused)
                return
            await self._read_within(scope, receive, send, cap)
        finally:
            _release(session, request)

    async def _read_within(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Pass the upload on, answering 413 as soon as its body passes `cap` bytes."""
        if await run_within(self.app, scope, receive, send, cap):
            await _answer(send, 413, f"file over the {self.limit // 2**20} MB upload limit")


async def _discard_body(receive: Receive, cap: int) -> None:
    """Read a request's body and drop it, up to `cap` bytes (what one upload may be)."""
    seen = 0
    while seen <= cap:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _answer(send: Send, status: int, reason: str) -> None:
    await json_answer(send, status, {"detail": reason})
