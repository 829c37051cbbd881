"""Download stage for URL CSVs (seed 000's `train.csv` / `test.csv` and any CSV with a URL column).

Rows are ingested with every input column; each distinct URL becomes one job item, and a URL already
stored by an earlier job is marked done without a fetch. The labelled CSV is written when the job ends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from services.core import csv_safety
from services.core.datasets import (
    DatasetError,
    ensure_dataset,
    export_labelled_csv,
    insert_rows,
    iter_csv_batches,
    read_csv_header,
)
from services.core.names import file_name
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.jobs.params import JobParams, StoreParams, job_params
from services.jobs.stage import ChunkedTask
from services.stages.download.fetch_store import StoreOptions, fetch_batch, release_workers

KIND_FROM_NAME = re.compile(r"^(REAL|GEN)[_-]", re.IGNORECASE)


URL_SAMPLE_ROWS = 200


def looks_like_url(value: str) -> bool:
    """An http(s) URL with a host, as a CSV cell would hold it (the network policy checks it properly later)."""
    parts = urlsplit(value.strip())
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def url_columns(csv_path: Path, header: list[str] | None = None) -> list[str]:
    """Columns whose sampled non-empty cells are mostly URLs, best first (`image_link` before others), so a
    CSV without image URLs is refused before a job fails every row."""
    header = header if header is not None else read_csv_header(csv_path)
    seen = [0] * len(header)
    urls = [0] * len(header)
    rows = 0
    for batch in iter_csv_batches(csv_path, batch=URL_SAMPLE_ROWS):
        for values in batch:
            for i, value in enumerate(values[: len(header)]):
                if value.strip():
                    seen[i] += 1
                    urls[i] += looks_like_url(value)
            rows += 1
        if rows >= URL_SAMPLE_ROWS:
            break
    found = [header[i] for i in range(len(header)) if seen[i] and urls[i] * 2 >= seen[i]]
    return sorted(found, key=lambda c: (c != "image_link", "url" not in c.lower() and "link" not in c.lower()))


def guess_kind(csv_path: Path) -> str:
    stem = csv_path.stem
    match = KIND_FROM_NAME.match(stem)
    if match:
        return match.group(1).upper()
    return "test" if "test" in stem.lower() else "train"


def start_url_download(
    ws: Workspace,
    manager: JobManager,
    csv_path: Path,
    dataset: str,
    *,
    url_column: str = "image_link",
    kind: str | None = None,
    resize: int | None = None,
    keep_originals: bool = True,
    placeholder: bool = False,
    workers: int | None = None,
    out: Path | None = None,
) -> int:
    """Validate the request, register the dataset and create the job; returns the job id (not yet run)."""
    csv_path = Path(csv_path).expanduser().resolve()
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path.name}: no such file")
    header = read_csv_header(csv_path)
    if url_column not in header:
        raise DatasetError(f"{csv_path.name}: no column {url_column!r}; columns are {', '.join(header)}")
    if url_column not in url_columns(csv_path, header):
        raise DatasetError(
            f"{csv_path.name}: column {url_column!r} holds no image URLs (http:// or https://) in its first "
            f"{URL_SAMPLE_ROWS} rows; columns are {', '.join(header)}"
        )
    if resize is not None and not 8 <= resize <= 4096:
        raise DatasetError(f"--resize {resize}: must be between 8 and 4096 pixels")
    ds = ensure_dataset(ws.catalog, dataset, kind or guess_kind(csv_path), str(csv_path), header)
    with job_params("download_urls"):
        params = UrlDownloadParams(
            csv_path=str(csv_path),
            url_column=url_column,
            resize=resize,
            keep_originals=keep_originals,
            placeholder=placeholder,
            workers=workers if workers is not None else ws.settings.download.workers,
            out=str(Path(out).expanduser().resolve()) if out else None,
            dataset=dataset,
        )
    return manager.create("download_urls", f"Download URLs: {dataset} ({ws.shown_name(csv_path)})", params, ds.id)


def labelled_csv_path(ws: Workspace, job_id: int, params: dict[str, Any]) -> Path:
    p = StoreParams.model_validate(params)
    if p.out:
        return Path(p.out)
    return ws.root / "exports" / file_name(p.dataset, f"-job{job_id}.csv")


class UrlDownloadParams(StoreParams):
    """A URL CSV download: the CSV, its URL column, what to store, where the labelled CSV goes."""

    csv_path: str
    url_column: str


class DownloadTaskBase(ChunkedTask):
    """What URL, S3 and folder imports share: fetch through `fetch_batch`, write the labelled CSV at the end."""

    params_model: ClassVar[type[JobParams]] = UrlDownloadParams

    source_kind: ClassVar[str] = "url"

    def source_options(self, params: dict[str, Any]) -> dict[str, Any]:
        """Where this kind's bytes come from, beyond the common options (S3: bucket and endpoint)."""
        return {}

    def batch_work(self) -> Any:
        return fetch_batch

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> StoreOptions:
        p = StoreParams.model_validate(params)
        return StoreOptions(
            workspace=str(ws.root),
            source_kind=self.source_kind,
            download=ws.settings.download.model_dump(),
            journal_dir=str(ws.job_dir(job_id)),
            resize=p.resize,
            keep_originals=p.keep_originals,
            placeholder=p.placeholder,
            **self.source_options(params),
        )

    def release(self) -> None:
        release_workers()

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        resize = StoreParams.model_validate(params).resize
        variant = f"border-{resize}" if resize else None
        dataset_id = ws.catalog.scalar("SELECT dataset_id FROM jobs WHERE id = ?", (job_id,))
        out = labelled_csv_path(ws, job_id, params)
        guard = csv_safety.guard_enabled(ws.settings, params)
        units = ws.settings.labels.entity_unit_map
        export_labelled_csv(ws.catalog, ws.root, dataset_id, job_id, out, variant, guard=guard, unit_map=units)


class UrlDownloadTask(DownloadTaskBase):
    kind: ClassVar[str] = "download_urls"
    # blocked_url is not sticky: the policy is checked again at fetch time, so a retry after an administrator
    # allows the network succeeds (and one that is still refused fails the same way).
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"invalid_url"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        manager = JobManager(ws)
        p = UrlDownloadParams.model_validate(params)
        csv_path = Path(p.csv_path)
        header = read_csv_header(csv_path)
        col = header.index(p.url_column)
        dataset_id = ws.catalog.scalar("SELECT dataset_id FROM jobs WHERE id = ?", (job_id,))
        index = 0
        for batch in iter_csv_batches(csv_path):
            rows = []
            for values in batch:
                url = values[col].strip() if col < len(values) else ""
                rows.append((index, values, url))
                index += 1
            insert_rows(ws.catalog, dataset_id, rows)
            urls = list(dict.fromkeys(key for _, _, key in rows))
            manager.add_items(job_id, [(u, None) for u in urls])
            manager.mark_known(job_id, ws.catalog.source_hashes("url", urls))
