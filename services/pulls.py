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
