"""Fetching one URL well: pooled connections, timeouts, retries that honour Retry-After, per-host limits,
checked redirects, a size cap, and every failure named by class.

Every hop goes through the network policy (services/core/network_policy.py): one strict parse, one resolution,
every address classified, and the connection made to the checked address only. Redirects are followed by
hand so that each hop is checked and loops are caught. Retries use tenacity: exponential backoff with
jitter, or the server's Retry-After when it gives one (up to a cap; a longer wait fails the item instead of
stalling a worker).
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

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

from services.core.errors import WorkbenchError
from services.core.network_policy import (
    CheckedTarget,
    NetworkPolicy,
    Resolver,
    UrlRefused,
    join_location,
    parse_networks,
    parse_url,
)
from services.core.settings import DownloadSettings

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


class FetchError(WorkbenchError):
    error_class = "fetch"
    http_status = 502

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
    """Refuse what a shared server must not fetch (the network policy's checks, as FetchError): a URL the
    strict parser refuses, and, when `block_private`, a host resolving to a non-global address (private,
    loopback, link-local such as 169.254.169.254, or an IPv6 form carrying one) outside `allowed`."""
    try:
        parsed = parse_url(url)
        if block_private:
            NetworkPolicy(True, parse_networks(allowed)).check_parsed(parsed)
    except UrlRefused as exc:
        raise FetchError(exc.error_class, exc.message) from None


class HttpFetcher:
    """One per worker process: a keep-alive pool per (scheme, address, port, TLS name), per-host slots.

    Every hop goes through the network policy, and the request is sent to the address the policy checked
    (`connection_from_host(ip, ...)`), with the URL's host as Host header, SNI name and certificate name:
    nothing is resolved a second time. `resolver` and `ca_certs` are for tests (rebinding, a private CA).
    """

    def __init__(self, cfg: DownloadSettings, resolver: Resolver | None = None, ca_certs: str | None = None) -> None:
        self.cfg = cfg
        self.policy = NetworkPolicy.from_settings(cfg, resolver)
        self.headers = {"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.5"}
        extra: dict[str, Any] = {"ca_certs": ca_certs} if ca_certs else {}
        self.pool = urllib3.PoolManager(
            num_pools=256,
            maxsize=max(cfg.per_host_limit, cfg.threads_per_worker),
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
            **extra,
        )
        self._slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(cfg.per_host_limit)
        )
        self._slots_lock = threading.Lock()
        self._answered: dict[tuple[str, int], str] = {}

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
        result: float = min(self.cfg.backoff_max, base + random.uniform(0, self.cfg.backoff_base))
        return result

    def _fetch_once(self, url: str) -> tuple[bytes, str, str]:
        try:
            current = parse_url(url)
        except UrlRefused as exc:
            raise FetchError(exc.error_class, exc.message) from None
        seen = {current.url}
        for _hop in range(self.cfg.max_redirects + 1):
            try:
                target = self.policy.check_parsed(current)
            except UrlRefused as exc:
                raise FetchError(exc.error_class, exc.message) from None
            with self._slot(current.host):
                status, headers, body = self._request(target)
            if status in REDIRECT_CODES:
                location = headers.get("Location")
                if not location:
                    raise FetchError("http_4xx" if status < 400 else "http_5xx", f"HTTP {status} without Location")
                try:
                    current = join_location(current, location)
                except UrlRefused as exc:
                    raise FetchError(exc.error_class, f"redirect refused: {exc.message}") from None
                if current.url in seen:
                    raise FetchError("redirect_loop", f"redirect loop back to {current.url}")
                seen.add(current.url)
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
            return body, current.url, headers.get("Content-Type", "")
        raise FetchError("redirect_loop", f"more than {self.cfg.max_redirects} redirects")

    def _open(self, target: CheckedTarget) -> urllib3.BaseHTTPResponse:
        """Send the GET to the first checked address that accepts a connection (a refused or unreachable
        address falls through to the next one the name resolved to, as a resolving client would)."""
        url = target.url
        tls = {"server_hostname": url.host, "assert_hostname": url.host} if url.scheme == "https" else None
        headers = {**self.headers, "Host": url.host_header}
        # The address that answered last time goes first (only ever one of the addresses just checked), so a
        # dead first address (say an unreachable IPv6 one) costs one failed connect, not one per request.
        preferred = self._answered.get((url.host, url.port))
        addresses = target.addresses
        if preferred in addresses and addresses[0] != preferred:
            addresses = (preferred, *(a for a in addresses if a != preferred))
        for index, address in enumerate(addresses):
            pool = self.pool.connection_from_host(address, url.port, url.scheme, pool_kwargs=tls)
            try:
                response = pool.urlopen(
                    "GET", url.target, headers=headers, redirect=False, retries=False,
                    preload_content=False, assert_same_host=False,
                )  # fmt: skip
            except NewConnectionError:
                if index + 1 == len(addresses):
                    raise
                continue
            if index:
                self._answered[(url.host, url.port)] = address
            return response
        raise AssertionError("a checked target has at least one address")

    def _request(self, target: CheckedTarget) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        cfg = self.cfg
        started = time.monotonic()
        try:
            resp = self._open(target)
        except NameResolutionError as exc:
            raise FetchError("dns", f"cannot resolve host {target.url.host!r}") from exc
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
