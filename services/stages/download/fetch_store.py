"""The worker half of a download job: fetch bytes, prove they are an image, store them by content hash,
make the resized copy, for a chunk of items at a time (`run_chunk` journals each result as it comes).

`fetch_batch` is a plain top-level generator of picklable arguments, so any `concurrent.futures` executor
runs it under `run_chunk`: a local process pool by default, a thread pool for small jobs, a Dask client for a
cluster. Each worker process keeps one fetcher (connection pool, per-host slots) and one thread pool across
chunks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from services.core.settings import DownloadSettings
from services.core.workspace import derived_relpath, image_relpath, is_disk_full, write_atomic
from services.io.archives import ArchiveError, ArchiveLimits, ArchiveReader, is_archive_locator
from services.io.http_fetch import FetchError, HttpFetcher
from services.io.imaging import (
    ImageCheckError,
    border_resize,
    check_image,
    encode_jpeg,
    placeholder_jpeg,
    sha256_hex,
)
from services.jobs.job_context import ContextThreadPoolExecutor
from services.jobs.manager import DISK_FULL, ImageRecord, ItemResult


@dataclass(frozen=True)
class StoreOptions:
    workspace: str
    source_kind: str  # 'url' or 's3'
    download: dict[str, Any]  # DownloadSettings as a dict (picklable, hashable as JSON)
    journal_dir: str
    resize: int | None = None
    keep_originals: bool = True
    placeholder: bool = False
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_signed: bool = True  # False: no credentials on S3 requests (an endpoint no administrator listed)

    @property
    def variant(self) -> str | None:
        return f"border-{self.resize}" if self.resize else None

    def fingerprint(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class ByteSource(Protocol):
    def fetch(self, locator: str) -> tuple[bytes, int]:
        """The object's bytes and the number of attempts it took; raises FetchError."""
        ...


class HttpSource:
    def __init__(self, cfg: DownloadSettings) -> None:
        self.fetcher = HttpFetcher(cfg)

    def fetch(self, locator: str) -> tuple[bytes, int]:
        result = self.fetcher.fetch(locator)
        return result.data, result.attempts


class PathSource:
    """Local files and zip members (folder imports): read with the same size cap as downloads."""

    def __init__(self, cfg: DownloadSettings) -> None:
        self.cfg = cfg
        self.archives = ArchiveReader(ArchiveLimits(max_member_bytes=cfg.max_bytes))

    def fetch(self, locator: str) -> tuple[bytes, int]:
        if is_archive_locator(locator):
            try:
                return self.archives.read(locator), 1
            except FileNotFoundError as exc:
                raise FetchError("missing", f"{locator}: the archive no longer exists") from exc
            except ArchiveError as exc:  # a corrupt member (bad CRC, broken stream): its reason, once
                raise FetchError("unreadable", f"{locator}: {exc.reason}") from exc
            except (KeyError, OSError, RuntimeError) as exc:
                raise FetchError("unreadable", f"{locator}: {exc}") from exc
        path = Path(locator)
        try:
            size = path.stat().st_size
            if size > self.cfg.max_bytes:
                raise FetchError("too_large", f"{size} bytes is over the {self.cfg.max_bytes} byte limit")
            return path.read_bytes(), 1
        except FileNotFoundError as exc:
            raise FetchError("missing", f"{path} no longer exists") from exc
        except OSError as exc:
            raise FetchError("unreadable", f"{path}: {exc.strerror or exc}") from exc


class _Worker:
    def __init__(self, opts: StoreOptions) -> None:
        self.opts = opts
        self.cfg = DownloadSettings(**opts.download)
        self.source: ByteSource
        if opts.source_kind == "s3":
            from services.io.s3_client import S3Source

            self.source = S3Source(self.cfg, opts.s3_bucket or "", opts.s3_endpoint_url, opts.s3_signed)
        elif opts.source_kind == "path":
            self.source = PathSource(self.cfg)
        else:
            self.source = HttpSource(self.cfg)
        self.pool = ContextThreadPoolExecutor(max_workers=self.cfg.threads_per_worker, thread_name_prefix="fetch")
        self.root = Path(opts.workspace)
        self._placeholder: ImageRecord | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def placeholder(self) -> ImageRecord:
        with self._lock:
            if self._placeholder is None:
                data = placeholder_jpeg(self.cfg.placeholder_size)
                digest = sha256_hex(data)
                rel = image_relpath(digest, "jpg")
                if not (self.root / rel).exists():
                    write_atomic(self.root / rel, data)
                size = self.cfg.placeholder_size
                self._placeholder = ImageRecord(digest, "JPEG", len(data), size, size, rel, is_placeholder=True)
            return self._placeholder


_WORKERS: dict[str, _Worker] = {}
_WORKERS_LOCK = threading.Lock()


def release_workers() -> None:
    """Drop this process's cached fetchers (a new run re-reads credentials and settings)."""
    with _WORKERS_LOCK:
        for worker in _WORKERS.values():
            worker.close()
        _WORKERS.clear()


def _worker_for(opts: StoreOptions) -> _Worker:
    key = opts.fingerprint()
    with _WORKERS_LOCK:
        if key not in _WORKERS:
            _WORKERS[key] = _Worker(opts)
        return _WORKERS[key]


def fetch_batch(
    items: list[tuple[str, str | None]], opts: StoreOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """Fetch and store a chunk of (key, locator) items on the worker's threads, each result as it finishes;
    items a cancel stopped before they started are left out (they stay pending)."""
    worker = _worker_for(opts)
    futures = [worker.pool.submit(_process_item, worker, key, locator or key, cancelled) for key, locator in items]
    for future in as_completed(futures):
        result = future.result()
        if result is not None:
            yield result


def _process_item(worker: _Worker, key: str, locator: str, cancelled: Callable[[], bool]) -> ItemResult | None:
    if cancelled():
        return None
    opts = worker.opts
    try:
        data, attempts = worker.source.fetch(locator)
        result = _store(worker, key, locator, data, attempts)
    except (FetchError, ImageCheckError) as exc:
        result = ItemResult(
            key=key,
            status="failed",
            attempts=getattr(exc, "attempts", 1),
            error_class=exc.error_class,
            error_message=exc.message,
        )
        if opts.placeholder and exc.error_class not in ("credentials",):
            result.image = worker.placeholder()
    except Exception as exc:  # a bug or an unexpected library error: name it per item, never lose the run
        error_class = DISK_FULL if is_disk_full(exc) else "error"  # a full disk stops the job, item stays pending
        result = ItemResult(
            key=key, status="failed", error_class=error_class, error_message=f"{exc.__class__.__name__}: {exc}"
        )
    return result


def _store(worker: _Worker, key: str, locator: str, data: bytes, attempts: int) -> ItemResult:
    opts = worker.opts
    checked = check_image(data, worker.cfg.max_pixels, opts.resize)
    original_rel = image_relpath(checked.hash, checked.extension)
    keep_original = opts.keep_originals or not opts.resize
    if keep_original and not (worker.root / original_rel).exists():
        write_atomic(worker.root / original_rel, data, worker.root / "tmp")
    derived: list[tuple[str, str, int, int]] = []
    if opts.resize and opts.variant:
        rel = derived_relpath(opts.variant, checked.hash, "jpg")
        if not (worker.root / rel).exists():
            write_atomic(worker.root / rel, encode_jpeg(border_resize(checked.image, opts.resize)), worker.root / "tmp")
        derived.append((opts.variant, rel, opts.resize, opts.resize))
    source_locator = f"s3://{opts.s3_bucket}/{locator}" if opts.source_kind == "s3" else locator
    source_kind = "zip" if opts.source_kind == "path" and is_archive_locator(locator) else opts.source_kind
    return ItemResult(
        key=key,
        status="ok",
        attempts=attempts,
        image=ImageRecord(
            checked.hash,
            checked.format,
            checked.nbytes,
            checked.width,
            checked.height,
            original_rel if keep_original else None,
        ),
        source=(source_kind, source_locator),
        derived=derived,
    )
