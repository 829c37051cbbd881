"""The explicit model pulls (the only code that downloads weights) share one guard: the download runs in a
thread and the caller gives up after a timeout with a clear message, never a hang."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class PullError(RuntimeError):
    pass


def pull_with_timeout(fetch: Callable[[], Any], timeout: float, what: str) -> str:
    """`fetch()`'s result as a string path; PullError when it fails or takes longer than `timeout` seconds."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["path"] = fetch()
        except Exception as exc:  # any network or hub failure is reported the same way
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise PullError(f"pulling {what} took over {timeout:.0f}s; stopped")
    if "error" in result or not result.get("path"):
        raise PullError(
            f"could not download {what}: {result.get('error')}; check the network or copy a Hugging Face cache "
            "from a machine that has it"
        )
    return str(result["path"])


REACH_TIMEOUT_SECONDS = 3.0


def check_reachable(url: str, timeout: float = REACH_TIMEOUT_SECONDS) -> None:
    """PullError within about `timeout` seconds when the host of `url` cannot be reached (no DNS, no route,
    refused). A hub client with no network retries for most of a minute before it fails; this answers first.
    Name resolution runs in a thread so a hanging resolver is bounded by the same timeout."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: dict[str, BaseException | None] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["error"] = None
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if "error" not in outcome:
        raise PullError(f"cannot reach {host}:{port}: no answer within {timeout:.0f}s")
    if outcome["error"] is not None:
        raise PullError(f"cannot reach {host}:{port}: {outcome['error']}")
