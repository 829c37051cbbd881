"""Gemini through the `google-genai` SDK: one JSON-answering call with a schema, our own retries, a shared
request budget, and errors sorted into classes a job can act on.

The SDK's own retries are off (it retries only when given `HttpRetryOptions`), so every attempt passes the
rate limiter and a 429's `RetryInfo` delay pauses all threads. Offline, a call fails in well under a second
(DNS or connect error), and a stalled server is cut by the per-request timeout.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.core.errors import WorkbenchError
from services.core.settings import Settings
from services.io.rate_limit import RateLimiter

log = logging.getLogger(__name__)

RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "connection", "malformed_response", "empty"})
MISSING_KEY_HELP = (
    "no Gemini API key: set WORKBENCH_GEMINI_API_KEY (or GEMINI_API_KEY) in the environment, or "
    "gemini_api_key in .streamlit/secrets.toml or config.yaml"
)


class GeminiError(WorkbenchError):
    """A failed call, with a class the job records (`rate_limited`, `auth`, `malformed_response`, ...)."""

    error_class = "gemini"
    http_status = 502

    def __init__(self, error_class: str, message: str, retry_after: float | None = None, attempts: int = 1):
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message
        self.retry_after = retry_after
        self.attempts = attempts


@dataclass
class GeminiAnswer:
    data: dict[str, Any]
    text: str
    input_tokens: int
    output_tokens: int
    attempts: int
    seconds: float


@dataclass
class CallStats:
    """Counters for a run (shown after it, and asserted by the benchmark)."""

    requests: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


_models_built = threading.Lock()


def build_sdk_models() -> None:
    """Build every request and response model of the SDK now, in one thread.

    `google.genai.types` defers building its pydantic models to first use; two threads that first use the same
    model at once can see it half built (`type object 'Part' has no attribute '__pydantic_core_schema__'`),
    which failed whole Describe runs under load. A run calls this before it starts its threads (about 0.5 s,
    once per process)."""
    import pydantic
    from google.genai import types

    with _models_built:
        for model in vars(types).values():
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel) and model is not pydantic.BaseModel:
                if not model.__pydantic_complete__:
                    model.model_rebuild(raise_errors=False)


def make_client(settings: Settings) -> Any:
    """A `google.genai.Client` for the configured key and endpoint; raises `GeminiError('config')` with no key."""
    from google import genai
    from google.genai import types

    build_sdk_models()

    if settings.gemini_api_key is None or not settings.gemini_api_key.get_secret_value().strip():
        raise GeminiError("config", MISSING_KEY_HELP)
    options = types.HttpOptions(
        base_url=settings.gemini.base_url,
        api_version=settings.gemini.api_version,
        timeout=int(settings.gemini.timeout_seconds * 1000),
    )
    return genai.Client(api_key=settings.gemini_api_key.get_secret_value(), http_options=options)


class GeminiCaller:
    """Thread-safe: one per run, shared by every worker thread (one client, one limiter, one set of stats)."""

    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter | None = None,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.model = settings.caption_model
        self.client = client if client is not None else make_client(settings)
        gem = settings.gemini
        self.limiter = limiter or RateLimiter(gem.requests_per_minute, gem.burst)
        self.max_attempts = max(1, settings.processing.max_retries + 1)
        self.backoff = settings.processing.retry_backoff_seconds
        self.pace = settings.processing.per_request_sleep_seconds
        self.stats = CallStats()
        self._sleep = sleep

    def generate_json(
        self, parts: list[Any], schema: dict[str, Any], check: Callable[[dict[str, Any]], Any] | None = None
    ) -> GeminiAnswer:
        """Ask for JSON matching `schema` (OpenAPI subset, enums allowed); retries what a retry can fix.
        `check` raises `GeminiError('malformed_response')` for an answer that parses but does not fit."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                text, usage = self._call_once(parts, schema)
                data = parse_json_object(text)
                if check is not None:
                    check(data)
                return GeminiAnswer(data, text, usage[0], usage[1], attempt, time.monotonic() - started)
            except GeminiError as exc:
                exc.attempts = attempt
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                log.info("gemini %s (attempt %d), retrying in %.1fs", exc.error_class, attempt, delay)
                self._sleep(delay)

    def _retry_delay(self, exc: GeminiError, attempt: int) -> float | None:
        if exc.error_class not in RETRYABLE or attempt >= self.max_attempts:
            return None
        backoff = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)
        if exc.retry_after is not None:
            if exc.retry_after > self.settings.gemini.max_retry_delay_seconds:
                exc.message += f" (the server asked to wait {exc.retry_after:.0f}s; retry the failures later)"
                return None
            self.limiter.pause(exc.retry_after)
            return exc.retry_after
        result: float | None = backoff
        return result

    def _call_once(self, parts: list[Any], schema: dict[str, Any]) -> tuple[str, tuple[int, int]]:
        from google.genai import errors, types

        self.limiter.acquire()
        self.stats.add(requests=1)
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=schema,
            temperature=self.settings.gemini.temperature,
        )
        try:
            response = self.client.models.generate_content(model=self.model, contents=parts, config=config)
        except errors.APIError as exc:
            raise self._classify_api_error(exc) from None
        except Exception as exc:  # transport errors come from the SDK's HTTP library
            raise _classify_transport_error(exc) from None
        finally:
            if self.pace > 0:
                self._sleep(self.pace)  # the seeds' per-request pause, on top of the budget
        usage = response.usage_metadata
        tokens = (
            int(getattr(usage, "prompt_token_count", 0) or 0),
            int(getattr(usage, "candidates_token_count", 0) or 0),
        )
        self.stats.add(input_tokens=tokens[0], output_tokens=tokens[1])
        text = response.text
        if not text:
            reason = _finish_reason(response)
            error_class = "blocked" if reason and reason != "STOP" else "empty"
            raise GeminiError(error_class, f"no text in the answer ({reason})")
        return text, tokens

    def _classify_api_error(self, exc: Any) -> GeminiError:
        code = int(getattr(exc, "code", 0) or 0)
        message = str(getattr(exc, "message", "") or exc)[:300]
        if code == 429:
            self.stats.add(rate_limited=1)
            return GeminiError("rate_limited", f"429 {message}", retry_delay_from_error(exc))
        if code >= 500:
            self.stats.add(server_errors=1)
            return GeminiError("server_error", f"{code} {message}", retry_delay_from_error(exc))
        if code in (401, 403) or "API_KEY_INVALID" in json.dumps(getattr(exc, "details", None) or {}):
            return GeminiError("auth", f"{code} {message}: check the Gemini API key")
        if code == 404:
            return GeminiError("not_found", f"404 {message}: is {self.model!r} a Gemini model name?")
        if code == 408:
            return GeminiError("timeout", f"408 {message}")
        return GeminiError("bad_request", f"{code} {message}")


def _classify_transport_error(exc: Exception) -> GeminiError:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "TimeoutException" in names or isinstance(exc, TimeoutError):
        return GeminiError("timeout", f"no answer in time ({exc.__class__.__name__})")
    if "TransportError" in names or isinstance(exc, ConnectionError):
        return GeminiError("connection", f"cannot reach the Gemini endpoint: {exc}")
    return GeminiError("error", f"{exc.__class__.__name__}: {exc}")


def _finish_reason(response: Any) -> str | None:
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        feedback = getattr(response, "prompt_feedback", None)
        return str(getattr(feedback, "block_reason", None) or "no candidates")
    reason = getattr(candidates[0], "finish_reason", None)
    return getattr(reason, "value", None) or (str(reason) if reason else None)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*s\s*$")


def retry_delay_from_error(exc: Any) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "2.5s"`) or a `Retry-After` header."""
    details = getattr(exc, "details", None)
    error = details.get("error", details) if isinstance(details, dict) else None
    for item in (error or {}).get("details", []) if isinstance(error, dict) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        value = headers.get("retry-after")
        if value and value.strip().replace(".", "", 1).isdigit():
            return float(value)
    return None


def parse_json_object(text: str) -> dict[str, Any]:
    """The answer as a JSON object; tolerates a ```json fence, refuses anything else as malformed."""
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", cleaned)
    try:
        data = json.loads(cleaned)
    except json.JSONDecodeError as exc:
        raise GeminiError("malformed_response", f"answer is not JSON ({exc.msg} at {exc.pos}): {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise GeminiError("malformed_response", f"answer is JSON but not an object: {text[:80]!r}")
    return data
