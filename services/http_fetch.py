"""Fetching one URL well: pooled connections, timeouts, retries that honour Retry-After, per-host limits,
checked redirects, a size cap, and every failure named by class.

Redirects are followed by hand so that each hop is checked (scheme, and on a shared server, the address it
resolves to) and loops are caught. Retries use tenacity: exponential backoff with jitter, or the server's
Retry-After when it gives one (up to a cap; a longer wait fails the item instead of stalling a worker).
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from services.settings import DownloadSettings

FAILURE_CLASSES = (
    "dns",
    "connect",
    "timeout",
    "http_4xx",
    "http_5xx",
    "too_large",
    "not_image",
    "truncated",
    "redirect_loop",
    "invalid_url",
    "blocked_url",
)
REDIRECT_CODES = {301, 302, 303, 307, 308}
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FetchError(Exception):
    def __init__(
        self, error_class: str, message: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 1


@dataclass
class FetchResult:
    data: bytes
    final_url: str
    content_type: str
    attempts: int


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def check_url(url: str, block_private: bool, allowed: tuple[str, ...] = ()) -> None:
    """Refuse what a shared server must not fetch: other schemes, and non-global addresses (private, loopback,
    link-local such as 169.254.169.254) unless inside an allowed network."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FetchError("invalid_url", f"cannot parse URL: {exc}") from exc
    if not url.strip():
        raise FetchError("invalid_url", "empty URL")
    if parts.scheme not in ("http", "https"):
        raise FetchError("invalid_url", f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise FetchError("invalid_url", "URL has no host")
    if block_private:
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise FetchError("dns", f"cannot resolve {parts.hostname}: {exc}") from exc
        networks = [ipaddress.ip_network(n, strict=False) for n in allowed]
        for info in infos:
            addr = ipaddress.ip_address(info[4][0])
            if not addr.is_global and not any(addr in net for net in networks):
                raise FetchError(
                    "blocked_url",
                    f"{parts.hostname} resolves to non-public address {addr} (allow it with download.allowed_networks)",
                )


class HttpFetcher:
    """One per worker process: a shared connection pool and per-host concurrency slots."""

    def __init__(self, cfg: DownloadSettings) -> None:
        self.cfg = cfg
        self.pool = urllib3.PoolManager(
            num_pools=256,
            maxsize=max(cfg.per_host_limit, cfg.threads_per_worker),
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
            headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.5"},
        )
        self._slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(cfg.per_host_limit)
        )
        self._slots_lock = threading.Lock()

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            return self._slots[host]

    def fetch(self, url: str) -> FetchResult:
        """Fetch with retries; raises FetchError (with `.attempts`) once retries are spent."""
        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            reraise=True,
        )
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    data, final_url, ctype = self._fetch_once(url)
        except FetchError as exc:
            exc.attempts = attempts
            if exc.retryable and attempts > 1:
                exc.message = f"{exc.message} (after {attempts} tries)"
            raise
        return FetchResult(data, final_url, ctype, attempts)

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, FetchError) or not exc.retryable:
            return False
        if exc.retry_after is not None and exc.retry_after > self.cfg.max_retry_after:
            exc.message += f"; Retry-After {exc.retry_after:.0f}s is over the {self.cfg.max_retry_after:.0f}s cap"
            return False
        return True

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, FetchError) and exc.retry_after is not None:
            return exc.retry_after
        base = self.cfg.backoff_base * 2 ** (state.attempt_number - 1)
        return min(self.cfg.backoff_max, base + random.uniform(0, self.cfg.backoff_base))

    def _fetch_once(self, url: str) -> tuple[bytes, str, str]:
        current = url
        seen = {url}
        for _hop in range(self.cfg.max_redirects + 1):
            check_url(current, self.cfg.block_private_networks, tuple(self.cfg.allowed_networks))
            host = urlsplit(current).hostname or ""
            with self._slot(host):
                status, headers, body = self._request(current)
            if status in REDIRECT_CODES:
                location = headers.get("Location")
                if not location:
                    raise FetchError("http_4xx" if status < 400 else "http_5xx", f"HTTP {status} without Location")
                current = urljoin(current, location)
                if current in seen:
                    raise FetchError("redirect_loop", f"redirect loop back to {current}")
                seen.add(current)
                continue
            if status == 429 or 400 <= status < 500:
                raise FetchError(
                    "http_4xx",
                    f"HTTP {status}",
                    retryable=status in RETRYABLE_STATUS,
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                )
            if status >= 500:
                raise FetchError(
                    "http_5xx",
                    f"HTTP {status}",
                    retryable=status in RETRYABLE_STATUS,
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                )
            return body, current, headers.get("Content-Type", "")
        raise FetchError("redirect_loop", f"more than {self.cfg.max_redirects} redirects")

    def _request(self, url: str) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        cfg = self.cfg
        started = time.monotonic()
        try:
            resp = self.pool.request("GET", url, preload_content=False, redirect=False, retries=False)
        except NameResolutionError as exc:
            raise FetchError("dns", f"cannot resolve host {urlsplit(url).hostname!r}") from exc
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, so it must come first.
        except NewConnectionError as exc:
            raise FetchError("connect", f"connection failed: {_reason(exc)}", retryable=True) from exc
        except ConnectTimeoutError as exc:
            raise FetchError("timeout", f"connect timed out after {cfg.connect_timeout}s", retryable=True) from exc
        except ReadTimeoutError as exc:
            raise FetchError("timeout", f"no response within {cfg.read_timeout}s", retryable=True) from exc
        except SSLError as exc:
            raise FetchError("connect", f"TLS error: {_reason(exc)}") from exc
        except LocationParseError as exc:
            raise FetchError("invalid_url", f"cannot parse URL: {exc}") from exc
        except (ProtocolError, HTTPError) as exc:
            raise FetchError("connect", f"connection dropped: {_reason(exc)}", retryable=True) from exc
        complete = False
        try:
            if resp.status in REDIRECT_CODES or resp.status >= 400:
                resp.drain_conn()
                complete = True
                return resp.status, resp.headers, b""
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise FetchError("too_large", f"Content-Length {int(length)} is over the {cfg.max_bytes} byte limit")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.stream(256 * 1024):
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise FetchError("too_large", f"body passed the {cfg.max_bytes} byte limit")
                if time.monotonic() - started > cfg.total_timeout:
                    raise FetchError("timeout", f"download took over {cfg.total_timeout}s", retryable=True)
                chunks.append(chunk)
            complete = True
            return resp.status, resp.headers, b"".join(chunks)
        except ReadTimeoutError as exc:
            raise FetchError("timeout", f"body stalled for {cfg.read_timeout}s", retryable=True) from exc
        except ProtocolError as exc:
            detail = exc.args[-1] if exc.args else exc
            raise FetchError("truncated", f"body cut short: {detail!r}", retryable=True) from exc
        finally:
            # A half-read body must not go back to the pool: the next request would read its tail.
            if complete:
                resp.release_conn()
            else:
                resp.close()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1][:200] if text else exc.__class__.__name__
