"""Requests to the worker's resident models: a page's action on one image or a few (the OCR preview) runs in
the worker, on the models its jobs keep loaded, instead of loading a second copy in the dashboard's process.

The worker serves them over loopback HTTP on a port it picks; the port and a random token are in
`worker/requests.json` (mode 0600, in the workspace like everything else). A request names an operation the
worker was given (`POST /<op>`), sends its arguments as JSON in `X-Worker-Args` and its bytes as the body. The
token is checked before the body is read, and the body and the arguments are bounded. The caller falls back to
its own process when no worker answers (`ask_worker` returns None), so a page works with or without one.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace, write_atomic
from services.jobs.worker_status import live_worker, worker_folder

log = logging.getLogger(__name__)

RequestHandler = Callable[[bytes, dict[str, Any]], dict[str, Any]]  # (body, arguments) -> a JSON-able answer
MAX_ARGS_BYTES = 64 * 1024


class WorkerRequestError(WorkbenchError):
    """The worker could not do what was asked; the message and class are the worker's (a bad image, a recipe
    that does not fit, an engine that is not here)."""

    http_status = 422


class RequestServer:
    """In the worker: answer requests with the handlers it was given, each in a thread of its own."""

    def __init__(self, ws: Workspace, handlers: dict[str, RequestHandler], max_body_bytes: int) -> None:
        self.ws = ws
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes
        self.token = secrets.token_urlsafe(32)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="worker-requests")

    def start(self) -> RequestServer:
        self._thread.start()
        path = worker_folder(self.ws) / "requests.json"
        write_atomic(path, json.dumps({"port": self.httpd.server_address[1], "token": self.token}).encode())
        os.chmod(path, 0o600)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with contextlib.suppress(OSError):
            (worker_folder(self.ws) / "requests.json").unlink()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                server._answer(self)

        return Handler

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        # who asks first, before a byte of the body is read
        if not hmac.compare_digest(h.headers.get("X-Worker-Token", ""), self.token):
            h.close_connection = True
            return self._send(h, 401, {"error": "not allowed", "error_class": "auth"})
        op = h.path.strip("/")
        handler = self.handlers.get(op)
        if handler is None:
            return self._send(h, 404, {"error": f"the worker does no {op!r}", "error_class": "not_found"})
        try:
            length = int(h.headers.get("Content-Length") or "")
        except ValueError:
            h.close_connection = True
            return self._send(h, 411, {"error": "a request needs its length", "error_class": "bad_request"})
        raw_args = h.headers.get("X-Worker-Args", "{}")
        if length > self.max_body_bytes or len(raw_args) > MAX_ARGS_BYTES:
            h.close_connection = True
            return self._send(h, 413, {"error": "request too large", "error_class": "too_large"})
        try:
            args = json.loads(raw_args)
            if not isinstance(args, dict):
                raise ValueError("arguments must be an object")
        except ValueError as exc:
            return self._send(h, 400, {"error": f"bad arguments: {exc}", "error_class": "bad_request"})
        body = h.rfile.read(length)
        try:
            return self._send(h, 200, {"result": handler(body, args)})
        except WorkbenchError as exc:  # the caller raises it again as it was (class, text, whether the class shows)
            text = " ".join(str(exc).split())
            refused = {"error": text, "error_class": exc.error_class, "shows_class": exc.shows_class}
            return self._send(h, 422, refused)
        except ValueError as exc:  # a library's refusal of what was sent (a recipe that does not fit, ...)
            return self._send(h, 422, {"error": str(exc), "error_class": "bad_request"})
        except Exception:
            log.exception("worker request %s failed", op)
            failed = {"error": "the worker failed on this request; see its log", "error_class": "error"}
            return self._send(h, 500, failed)


def ask_worker(ws: Workspace, op: str, body: bytes, args: dict[str, Any], timeout: float = 120.0) -> Any:
    """The worker's answer to `op`, or None when no worker serves this workspace (the caller does it itself).
    A refusal by the worker raises `WorkerRequestError` with its message."""
    if live_worker(ws) is None:
        return None
    try:
        where = json.loads((ws.root / "worker" / "requests.json").read_text())
        port, token = int(where["port"]), str(where["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {
            "X-Worker-Token": token,
            "X-Worker-Args": json.dumps(args),
            "Content-Type": "application/octet-stream",
        }
        conn.request("POST", f"/{op}", body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError):
        log.warning("the worker did not answer %s; doing it here", op, exc_info=True)
        return None
    finally:
        conn.close()
    if response.status == 200:
        return answer.get("result")
    if response.status in (401, 404):
        return None  # an older worker, or a stale file: do it here
    refused = WorkerRequestError(str(answer.get("error") or f"the worker answered {response.status}"),
                                 error_class=str(answer.get("error_class") or "error"))  # fmt: skip
    refused.shows_class = answer.get("shows_class") is True
    raise refused
