"""A loopback HTTP server that serves real images and injects every fault class the downloader names.

Routes (all GET):
  /img/NAME                   the registered image NAME (its own content type)
  /r429/N/NAME                429 with Retry-After: 1 for the first N requests, then the image
  /r503/N/NAME                503 for the first N requests, then the image
  /status/CODE                always that status (404, 500, ...)
  /slow/SECONDS/NAME          waits, then serves the image (a read timeout when SECONDS is large)
  /truncated/NAME             claims the full length, sends half, closes
  /wrongtype/NAME             the image labelled text/html
  /html                       an HTML page labelled image/jpeg
  /loop/A -> /loop/B -> /loop/A   a redirect loop
  /redirect/NAME              302 to /img/NAME
  /goto/NAME                  302 to the URL registered with add_redirect (anywhere, e.g. a private address)
  /huge                       Content-Length far over the limit
  /huge-chunked               a chunked body that grows past the limit
  /notimage                   random bytes labelled image/jpeg
  /bomb                       a PNG whose header claims 30000 x 30000 pixels
Each request is logged with the bytes actually sent, so tests can tell a complete fetch from a cut one.
"""

from __future__ import annotations

import io
import random
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90, noise: bool = False) -> bytes:
    rng = random.Random(seed)
    if noise:
        img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    else:
        img = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        for _ in range(8):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            img.paste(colour, (x0, y0, min(width, x0 + width // 4 + 1), min(height, y0 + height // 4 + 1)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_png(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGBA", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256), 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_png_bomb(claimed: int = 30000) -> bytes:
    """A valid small PNG whose IHDR claims `claimed` x `claimed` pixels (CRC fixed up)."""
    data = bytearray(make_png(10, 10))
    ihdr_at = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr_at : ihdr_at + 8] = struct.pack(">II", claimed, claimed)
    crc = zlib.crc32(bytes(data[12 : ihdr_at + 13]))
    data[ihdr_at + 13 : ihdr_at + 17] = struct.pack(">I", crc)
    return bytes(data)


class ImageServer:
    def __init__(self, max_bytes_hint: int = 50 * 1024 * 1024) -> None:
        self.images: dict[str, tuple[bytes, str]] = {}
        self.log: list[tuple[str, int, int]] = []  # (path, status, body bytes sent)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.redirects: dict[str, str] = {}  # /goto/NAME -> any absolute URL
        self.max_bytes_hint = max_bytes_hint
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def add(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.images[name] = (data, content_type)
        return self.url(f"/img/{name}")

    def add_redirect(self, name: str, target: str) -> str:
        self.redirects[name] = target
        return self.url(f"/goto/{name}")

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def completed(self) -> Counter[str]:
        """Paths whose full image body was sent, with counts."""
        with self.lock:
            return Counter(path for path, status, sent in self.log if status == 200 and sent > 0)

    # --- handling --------------------------------------------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        sent = 0
        try:
            h.wfile.write(body)
            sent = len(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        with self.lock:
            self.log.append((h.path, status, sent))

    def _image(self, h: BaseHTTPRequestHandler, name: str, ctype: str | None = None) -> None:
        if name not in self.images:
            self._send(h, 404, b"not found", "text/plain")
            return
        data, own = self.images[name]
        self._send(h, 200, data, ctype or own)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = h.path.split("?")[0].strip("/").split("/")
        with self.lock:
            self.hits[h.path] += 1
            hits = self.hits[h.path]
        route = parts[0]
        if route == "img":
            self._image(h, parts[1])
        elif route in ("r429", "r503"):
            if hits <= int(parts[1]):
                code = 429 if route == "r429" else 503
                self._send(h, code, b"slow down", "text/plain", {"Retry-After": "1"} if code == 429 else None)
            else:
                self._image(h, parts[2])
        elif route == "status":
            self._send(h, int(parts[1]), b"status", "text/plain")
        elif route == "slow":
            time.sleep(float(parts[1]))
            self._image(h, parts[2])
        elif route == "truncated":
            data, ctype = self.images[parts[1]]
            h.send_response(200)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            with self.lock:
                self.log.append((h.path, 200, 0))
        elif route == "goto":
            self._send(h, 302, b"", "text/plain", {"Location": self.redirects[parts[1]]})
        elif route == "wrongtype":
            self._image(h, parts[1], "text/html")
        elif route == "html":
            self._send(h, 200, b"<!DOCTYPE html><html><body>sign in</body></html>", "image/jpeg")
        elif route == "loop":
            target = "/loop/B" if parts[1] == "A" else "/loop/A"
            self._send(h, 302, b"", "text/plain", {"Location": target})
        elif route == "redirect":
            self._send(h, 302, b"", "text/plain", {"Location": f"/img/{parts[1]}"})
        elif route == "huge":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(self.max_bytes_hint * 10))
            h.end_headers()
            h.close_connection = True
            with self.lock:
                self.log.append((h.path, 200, 0))
        elif route == "huge-chunked":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            block = b"\xff" * 65536
            try:
                for _ in range(self.max_bytes_hint // len(block) + 4):
                    h.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                h.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            h.close_connection = True
            with self.lock:
                self.log.append((h.path, 200, 0))
        elif route == "notimage":
            self._send(h, 200, random.Random(1).randbytes(5000), "image/jpeg")
        elif route == "bomb":
            self._send(h, 200, make_png_bomb(), "image/png")
        else:
            self._send(h, 404, b"no route", "text/plain")
