"""Request bodies bounded inside ASGI middleware, shared by the REST API's body limit (services/api/app.py) and the
dashboard's upload gate (ui/upload_gate.py): the app reads the body through a counter that stops it at the
cap, and an answer the app starts after that is replaced by the caller's 413."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.core.errors import WorkbenchError


class _BodyTooLarge(WorkbenchError):
    error_class = "too_large"
    http_status = 413


async def run_within(app: ASGIApp, scope: Scope, receive: Receive, send: Send, cap: int) -> bool:
    """Run `app` on the request with its body cut at `cap` bytes. True when the body passed `cap` before the
    app had answered: nothing was sent, and the caller answers 413 (an app that parses a form turns the
    cut into its own error, which is dropped)."""
    seen = 0
    exceeded = False
    started = False

    async def counted() -> Message:
        nonlocal seen, exceeded
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > cap:
            exceeded = True
            raise _BodyTooLarge
        return message

    async def unless_exceeded(message: Message) -> None:
        nonlocal started
        if exceeded:
            return  # whatever the app answers once the cap is passed, the client gets the caller's 413
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, counted, unless_exceeded)
    except _BodyTooLarge:
        pass
    return exceeded and not started


async def json_answer(
    send: Send, status: int, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """An answer sent before the body was read: the connection is closed after it, so the rest of the body
    is never read either."""
    data = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                    (b"connection", b"close"), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": data})
