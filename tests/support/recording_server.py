"""A loopback HTTP(S) listener that records every request it receives, for the SSRF tests.

Bind one on 127.0.0.1 as the "secret" service a forged request must never reach, and one on another loopback
address (127.0.0.2, Linux routes all of 127/8 to lo) as the "allowed" intranet host.

Routes (GET):
  /img/NAME        a small PNG
  /goto/NAME       302 with the raw Location registered by `redirect(NAME, location)` (sent byte for byte)
  /BUCKET?...      an empty S3 ListObjectsV2 answer (any other path), so an S3 client can list
Every request is kept in `requests` (client address, method, path, headers, TLS server name).
"""

from __future__ import annotations

import io
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

LIST_RESULT = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Name>bkt</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<IsTruncated>false</IsTruncated></ListBucketResult>"
)


def small_png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 9), (seed % 256, 40, 200)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Received:
    client: tuple[str, int]
    method: str
    path: str
    headers: dict[str, str]
    server_name: str | None


@dataclass
class RecordingServer:
    host: str
    port: int = 0
    tls: ssl.SSLContext | None = None
    requests: list[Received] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._names: dict[int, str | None] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_PUT(self) -> None:
                server._handle(self)

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server((self.host, self.port), Handler)
        self.port = self.httpd.server_address[1]
        if self.tls is not None:
            self.tls.sni_callback = self._sni
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        with self.lock:
            self._names[id(sock)] = name

    @property
    def base(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def redirect(self, name: str, location: str) -> str:
        self.redirects[name] = location
        return f"{self.base}/goto/{name}"

    def start(self) -> RecordingServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            name = self._names.get(id(h.connection))
            self.requests.append(
                Received(h.client_address[:2], h.command, h.path, {k: v for k, v in h.headers.items()}, name)
            )
        parts = h.path.split("?")[0].strip("/").split("/")
        if parts[0] == "img":
            self._send(h, 200, small_png(len(parts[-1])), "image/png")
        elif parts[0] == "goto" and parts[-1] in self.redirects:
            h.send_response(302)
            h.send_header("Location", self.redirects[parts[-1]])  # written as given, backslashes and all
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            self._send(h, 200, LIST_RESULT, "application/xml")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def pair_on_one_port() -> tuple[RecordingServer, RecordingServer]:
    """(secret on 127.0.0.1, allowed on 127.0.0.2) listening on the same port, as one name re-resolved to
    another address would find them."""
    for _ in range(50):
        allowed = RecordingServer("127.0.0.2")
        try:
            secret = RecordingServer("127.0.0.1", allowed.port)
        except OSError:
            allowed.httpd.server_close()
            continue
        return secret.start(), allowed.start()
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")
