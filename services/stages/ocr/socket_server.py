"""A TCP socket server for industrial triggers: an image in, one JSON line out.

Protocol (per message, any number of messages per connection):
  client -> server: 4-byte big-endian unsigned length N (1 <= N <= ocr.socket_max_bytes), then N bytes of
                    an encoded image (PNG, JPEG, ...)
  server -> client: one UTF-8 JSON line ending in "\\n": the OCR result (`code`, `cord`, `raw`, `valid`,
                    `confidence`, `serial`, ...) or `{"error": "..."}`.
A length of 0 or over the limit, a connection silent for `ocr.socket_timeout_seconds` mid-message, an
image that does not decode, or one the recipe does not fit (`recipe_misfit: ...`) gets an error line;
framing errors and timeouts also close the connection (the stream cannot be resynchronised). Each client
has its own thread; the engine is shared and built once.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import struct
from typing import Any

from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.imaging import ImageCheckError
from services.jobs.worker_requests import WorkerRequestError
from services.stages.ocr.preview import read_one
from services.stages.ocr.stage import OcrSetup, RecipeMisfitError

log = logging.getLogger(__name__)
HEADER = struct.Struct(">I")


class _Closed(WorkbenchError):
    error_class = "closed"
    http_status = 400


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise _Closed
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class OcrSocketServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], ws: Workspace, setup: OcrSetup) -> None:
        self.ws = ws
        self.setup = setup
        self.max_bytes = ws.settings.ocr.socket_max_bytes
        self.timeout_seconds = ws.settings.ocr.socket_timeout_seconds
        super().__init__(address, _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: OcrSocketServer

    def _reply(self, payload: dict[str, Any]) -> None:
        self.request.sendall(json.dumps(payload).encode("utf-8") + b"\n")

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            sock.settimeout(None)  # waiting for the next message may take any time
            try:
                first = sock.recv(1)
                if not first:
                    return
                sock.settimeout(self.server.timeout_seconds)
                (length,) = HEADER.unpack(first + _read_exact(sock, HEADER.size - 1))
                if length == 0 or length > self.server.max_bytes:
                    self._reply({"error": f"message length {length}: must be 1..{self.server.max_bytes} bytes"})
                    return
                data = _read_exact(sock, length)
            except TimeoutError:
                self._safe_reply({"error": f"no complete message within {self.server.timeout_seconds:g}s"})
                return
            except (_Closed, ConnectionError, OSError):
                return
            try:
                result = read_one(self.server.ws, data, self.server.setup)  # in the worker when one serves
            except ImageCheckError as exc:
                result = {"error": f"{exc.error_class}: {exc.message}"}
            except (RecipeMisfitError, WorkerRequestError) as exc:  # this image, not the server: the next may do
                result = {"error": f"{exc.error_class}: {exc}"}
            except Exception as exc:  # one bad image must not take the server down
                log.exception("OCR failed for a socket message")
                result = {"error": f"{exc.__class__.__name__}: {exc}"}
            try:
                self._reply(result)
            except OSError:
                return

    def _safe_reply(self, payload: dict[str, Any]) -> None:
        try:
            self._reply(payload)
        except OSError:
            pass


def send_image(host: str, port: int, data: bytes, timeout: float = 60.0) -> dict[str, Any]:
    """A client for the protocol above (used by tests and handy for integrators)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(HEADER.pack(len(data)) + data)
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            line += chunk
    return dict(json.loads(line))
