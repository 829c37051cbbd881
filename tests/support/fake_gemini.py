"""A loopback stand-in for the Gemini API that the real `google-genai` client talks to (via `base_url`).

It answers `POST /{version}/models/{model}:generateContent` the way the service does: it reads the request
in camelCase or snake_case, looks at the image (its mean colour picks a palette name) or, for a text-only
request, at the colour words in the text, and answers a description of "a <colour> square" plus categories
chosen from the response schema's enum. Per colour, a script of faults is played first:

  ok           a valid answer
  malformed    text that is not JSON
  no-summary   JSON without a usable summary
  outside      categories outside the list (and one inside)
  many         three categories from the list (the prompt asks for one or two)
  429          RESOURCE_EXHAUSTED with a RetryInfo delay of `retry_delay` seconds
  500          INTERNAL
  slow         waits `slow_seconds`, then answers
  blocked      no candidates, promptFeedback.blockReason = SAFETY

Optionally it enforces its own requests-per-minute quota (429 with a retry delay when over it) and injects
429 bursts every `burst_every` requests. Every request is logged (time, colour, kind, outcome).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 40, 220),
    "yellow": (235, 225, 30),
    "magenta": (210, 40, 200),
    "cyan": (40, 210, 215),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "orange": (240, 140, 20),
    "gray": (128, 128, 128),
}
API_KEY = "test-key-not-secret"
_PATH = re.compile(r"^/(?P<version>v[0-9a-z]+)/models/(?P<model>[^:/]+):generateContent$")


def make_colour_png(colour: str, size: tuple[int, int] = (40, 30), noise_seed: int | None = None) -> bytes:
    """A solid image of a palette colour; `noise_seed` inverts a 3x3 cell at a place of its own, so files (and
    their JPEG re-encodings) differ while the mean colour stays nearest to the palette colour."""
    img = Image.new("RGB", size, PALETTE[colour])
    if noise_seed is not None:
        cols, rows = size[0] // 3, size[1] // 3
        x, y = 3 * (noise_seed % cols), 3 * ((noise_seed // cols) % rows)
        img.paste(tuple(255 - c for c in PALETTE[colour]), (x, y, x + 3, y + 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def nearest_colour(rgb: tuple[float, float, float]) -> str:
    return min(PALETTE, key=lambda name: sum((a - b) ** 2 for a, b in zip(PALETTE[name], rgb, strict=True)))


def _get(d: dict[str, Any], camel: str) -> Any:
    """A field by its camelCase or snake_case name (the SDK mixes both)."""
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return d.get(camel, d.get(snake))


@dataclass
class Logged:
    at: float
    colour: str
    kind: str  # image or text
    outcome: str
    model: str
    digest: str  # sha256 of the image sent (or of the prompt, for text requests)


class FakeGemini:
    def __init__(
        self,
        rpm_limit: float | None = None,
        burst_every: int = 0,
        burst_length: int = 0,
        retry_delay: float = 0.2,
        slow_seconds: float = 3.0,
        latency: float = 0.0,
    ) -> None:
        self.script: dict[str, list[str]] = defaultdict(list)
        self.summaries: dict[str, str] = {}  # per colour: the summary to answer instead of "A <colour> square..."
        self.answer_categories: dict[str, list[str]] = {}  # per colour: the categories to answer (any text)
        self.rpm_limit = rpm_limit
        self.burst_every = burst_every
        self.burst_length = burst_length
        self.retry_delay = retry_delay
        self.slow_seconds = slow_seconds
        self.latency = latency
        self.log: list[Logged] = []
        self.last_body: dict[str, Any] | None = None
        self.image_sizes: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._updated = time.monotonic()
        self._count = 0
        self._burst_left = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                outer._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.request_queue_size = 128  # the SDK opens many connections at once
        self.server.daemon_threads = True
        self.server.server_bind()
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> FakeGemini:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- counters for tests ---

    @property
    def requests(self) -> int:
        return len(self.log)

    def outcomes(self) -> Counter[str]:
        return Counter(e.outcome for e in self.log)

    def per_colour(self) -> Counter[str]:
        return Counter(e.colour for e in self.log)

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # --- the endpoint ---

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        match = _PATH.match(h.path.split("?")[0])
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if match is None:
            return self._error(h, 404, "NOT_FOUND", f"unknown path {h.path}")
        if h.headers.get("x-goog-api-key") != API_KEY:
            details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
            return self._error(h, 400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details)
        body = json.loads(raw)
        self.last_body = body
        colour, kind, prompt, digest = self._read_request(body)
        model = match.group("model")
        outcome = self._next_outcome(colour)
        with self._lock:
            self.log.append(Logged(time.monotonic(), colour, kind, outcome, model, digest))
        if self.latency:
            time.sleep(self.latency)
        if outcome == "429":
            retry = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_delay}s"}]
            return self._error(h, 429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", retry)
        if outcome == "500":
            return self._error(h, 500, "INTERNAL", "An internal error has occurred.")
        if outcome == "slow":
            time.sleep(self.slow_seconds)
        if outcome == "blocked":
            return self._send(h, 200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {}})
        text = self._answer_text(colour, body, outcome)
        usage = {"promptTokenCount": 258 + len(prompt) // 4, "candidatesTokenCount": len(text) // 4}
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        reply = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": usage,
            "modelVersion": model,
        }
        self._send(h, 200, reply)

    def _next_outcome(self, colour: str) -> str:
        with self._lock:
            self._count += 1
            if self.burst_every and self._count % self.burst_every == 0:
                self._burst_left = self.burst_length
            if self._burst_left > 0:  # an overload burst: refused requests do not use the quota
                self._burst_left -= 1
                return "429"
            if self.rpm_limit:
                now = time.monotonic()
                capacity = max(1.0, self.rpm_limit / 60.0)
                self._tokens = min(capacity, self._tokens + (now - self._updated) * self.rpm_limit / 60.0)
                self._updated = now
                if self._tokens < 1.0:
                    return "429"
                self._tokens -= 1.0
            script = self.script.get(colour)
            return script.pop(0) if script else "ok"

    def _read_request(self, body: dict[str, Any]) -> tuple[str, str, str, str]:
        texts: list[str] = []
        colour = None
        digest = ""
        for content in _get(body, "contents") or []:
            for part in content.get("parts", []):
                if "text" in part:
                    texts.append(part["text"])
                inline = _get(part, "inlineData")
                if inline:
                    data = base64.urlsafe_b64decode(inline["data"] + "=" * (-len(inline["data"]) % 4))
                    digest = hashlib.sha256(data).hexdigest()
                    with Image.open(io.BytesIO(data)) as img:
                        self.image_sizes.append(img.size)
                        small = img.convert("RGB").resize((1, 1), Image.Resampling.BOX)
                        colour = nearest_colour(small.getpixel((0, 0)))  # type: ignore[arg-type]
        prompt = "\n".join(texts)
        if colour is not None:
            return colour, "image", prompt, digest
        description = prompt.split("JSON:", 1)[-1].split("Choose", 1)[0].lower()
        words = [name for name in PALETTE if re.search(rf"\b{name}\b", description)]
        return (words[0] if words else "none"), "text", prompt, hashlib.sha256(prompt.encode()).hexdigest()

    def _answer_text(self, colour: str, body: dict[str, Any], outcome: str) -> str:
        if outcome == "malformed":
            return '{"summary": "A ' + colour + ' square", "objects": [ {"name": '
        config = _get(body, "generationConfig") or {}
        schema = _get(config, "responseSchema") or _get(config, "responseJsonSchema") or {}
        properties = schema.get("properties", {})
        answer: dict[str, Any] = {}
        if "summary" in properties:
            answer = {
                "summary": ""
                if outcome == "no-summary"
                else self.summaries.get(colour, f"A {colour} square on a plain background."),
                "objects": [{"name": "square", "attributes": [colour, "flat"]}],
                "scene": {"indoor_outdoor": "unknown", "environment": "studio"},
                "style": {"genre": "graphic", "lighting": "flat", "colors": [colour]},
                "camera": {"shot": "close-up", "fov": "normal", "lens": "standard"},
                "text": "",
                "quality": {"aesthetic": "low", "issues": []},
            }
        if "categories" in properties:
            enum = properties["categories"].get("items", {}).get("enum", [])
            chosen = next((e for e in enum if e.lower() == colour), "unknown")
            answer["categories"] = [f"not-a-{colour}-thing", chosen] if outcome == "outside" else [chosen]
            if outcome == "many":
                answer["categories"] = [chosen, *[e for e in enum if e not in (chosen, "unknown")][:2]]
            if colour in self.answer_categories:
                answer["categories"] = self.answer_categories[colour]
        return json.dumps(answer)

    @staticmethod
    def _error(
        h: BaseHTTPRequestHandler, code: int, status: str, message: str, details: list[Any] | None = None
    ) -> None:
        error = {"code": code, "message": message, "status": status, "details": details or []}
        FakeGemini._send(h, code, {"error": error})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        h.send_response(code)
        h.send_header("Content-Type", "application/json; charset=UTF-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
