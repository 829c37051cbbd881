"""The explicit model pulls (the only code that downloads weights) and their one guard.

A pull runs in its own process (`python -m services.io.pulls KIND ...`), so its timeout really stops it: the
process group is killed and the partial files it left (`*.incomplete` blobs in the Hugging Face cache, a cut
`~/.cache/clip` file) are removed, where a thread would have gone on downloading in the background. Who may
pull from a page is a setting (`allow_page_pulls`): on a server with sign-in, only an administrator pulls,
with `python -m services models pull`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services import APP_ROOT
from services.core.errors import WorkbenchError
from services.core.settings import Settings

TROCR_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")


class PullError(WorkbenchError, RuntimeError):
    error_class = "pull_failed"
    http_status = 502


def page_pulls_allowed(settings: Settings, sign_in: bool) -> bool:
    """Whether a page's Pull button may download weights into the server's cache: `allow_page_pulls` when set,
    else yes on a laptop (no sign-in) and no on a server with sign-in (like `server_paths`)."""
    return settings.allow_page_pulls if settings.allow_page_pulls is not None else not sign_in


@dataclass(frozen=True)
class Pull:
    """One download: what it is (for messages), the worker's arguments, and the files or folders where a
    stopped download leaves partial files."""

    what: str
    argv: tuple[str, ...]  # ("clip", MODEL, TAG) or ("trocr", HUB_ID)
    partial: tuple[Path, ...] = ()


def run_pull(pull: Pull, timeout: float) -> str:
    """The downloaded path; PullError when the download fails, or takes longer than `timeout` seconds, in which
    case it is stopped (its process killed) and its partial files removed."""
    started = time.time()
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.io.pulls", *pull.argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill reaches anything it started
        cwd=str(APP_ROOT),
        env=env,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        _stop(proc)
        removed = remove_partial_files(pull.partial, started)
        cleaned = f"; {removed} partial file{'s' if removed != 1 else ''} removed" if removed else ""
        raise PullError(f"pulling {pull.what} took over {timeout:.0f}s; the download was stopped{cleaned}") from None
    except BaseException:  # an interrupt: the download must not outlive its caller
        _stop(proc)
        remove_partial_files(pull.partial, started)
        raise
    answer = _answer(out)
    if proc.returncode != 0 or not answer.get("path"):
        remove_partial_files(pull.partial, started)
        cause = answer.get("error") or (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise PullError(
            f"could not download {pull.what}: {cause}; check the network or copy a Hugging Face cache from a "
            "machine that has it"
        )
    return str(answer["path"])


def _answer(out: str) -> dict[str, str]:
    for line in reversed(out.strip().splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                return {str(k): str(v) for k, v in data.items()}
    return {}


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


def remove_partial_files(places: Sequence[Path], since: float) -> int:
    """Remove what a stopped download left: `*.incomplete` files under the given folders, and the given files
    themselves, when written after `since`. Returns how many were removed."""
    removed = 0
    for place in places:
        candidates = list(place.rglob("*.incomplete")) if place.is_dir() else [place]
        for path in candidates:
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime >= since - 1:
                    path.unlink()
                    removed += 1
    return removed


def hf_hub_cache() -> Path:
    """Where huggingface_hub puts downloads, read from the environment now (its own constants are read once,
    when it is imported)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hf_repo_folder(repo_id: str) -> Path:
    """The cache folder of one Hub model repository (`models--ORG--NAME`)."""
    return hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))


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


def _download(argv: Sequence[str]) -> str:
    """The download itself, in the pull process: an open_clip pretrained tag, or a TrOCR repository."""
    kind, *args = argv
    if kind == "clip" and len(args) == 2:
        import open_clip
        from open_clip.pretrained import download_pretrained

        cfg = open_clip.get_pretrained_cfg(args[0], args[1])
        if not cfg:
            raise ValueError(f"{args[0]} has no pretrained tag {args[1]!r}")
        return str(download_pretrained(cfg))
    if kind == "trocr" and len(args) == 1:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(args[0], allow_patterns=list(TROCR_PATTERNS)))
    raise ValueError(f"unknown pull {' '.join(argv)!r}")


def _main(argv: Sequence[str]) -> int:
    try:
        path = _download(argv)
    except Exception as exc:  # any network or hub failure is reported the same way, as one JSON line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"path": path}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
