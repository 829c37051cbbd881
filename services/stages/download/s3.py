"""Download stage for S3 (seeds 001/002): a CSV of file names, one listing of the prefix, matching by
basename with or without extension, an analysis shown before anything is fetched, and batch mode over a
drop folder of `KIND_name.csv` files.

Ambiguous names (one basename in two folders, or `a` matching both `a.jpg` and `a.png`) are reported with
their candidates and never resolved silently; they and missing names become failed items of their own class.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from services.core.datasets import DatasetError, ensure_dataset, insert_rows
from services.core.workspace import Workspace
from services.io.s3_client import S3Object, check_endpoint, list_prefix, make_client
from services.jobs.manager import ItemResult, JobManager
from services.jobs.params import JobParams, StoreParams, job_params
from services.stages.download.urls import DownloadTaskBase, guess_kind

NAME_HEADERS = {"filename", "file_name", "file", "name", "image", "image_name", "key", "s3_key", "path", "image_path"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif"}
BATCH_NAME = re.compile(r"^([A-Za-z]+)_(.+)\.csv$")
LISTING_TTL_SECONDS = 600


@dataclass
class NameList:
    columns: list[str]
    has_header: bool
    name_column: int
    rows: list[list[str]]

    def names(self) -> list[str]:
        return [(r[self.name_column].strip() if self.name_column < len(r) else "") for r in self.rows]


@dataclass
class S3Analysis:
    csv_path: str
    bucket: str
    prefix: str
    endpoint_url: str | None
    listed: int
    total_rows: int
    matched: dict[str, str] = field(default_factory=dict)  # name -> key
    already_done: dict[str, str] = field(default_factory=dict)  # name -> image hash
    missing: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    signed: bool = True  # False: requests carry no credentials (s3_client.endpoint_is_signed)

    @property
    def unique_names(self) -> int:
        return len(self.matched) + len(self.missing) + len(self.ambiguous)

    @property
    def available(self) -> int:
        """Matched and not yet in the catalog: what a download would fetch."""
        return len(self.matched) - len(self.already_done)

    def summary(self, examples: int = 5) -> dict[str, Any]:
        return {
            "csv": self.csv_path,
            "source": f"s3://{self.bucket}/{self.prefix}",
            "objects listed": self.listed,
            "rows": self.total_rows,
            "unique names": self.unique_names,
            "already done": len(self.already_done),
            "available to download": self.available,
            "missing": len(self.missing),
            "missing examples": self.missing[:examples],
            "ambiguous": len(self.ambiguous),
            "ambiguous examples": {k: v for k, v in list(self.ambiguous.items())[:examples]},
        }


def read_name_list(csv_path: Path, has_header: bool | None = None, name_column: str | None = None) -> NameList:
    """File names from a CSV with or without a header; the header is detected from the first row."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path.name}: no such file")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        try:
            rows = [r for r in csv.reader(fh) if any(cell.strip() for cell in r)]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{csv_path.name}: not a readable CSV ({exc})") from exc
    if not rows:
        raise DatasetError(f"{csv_path.name}: the file lists no names")
    first = [c.strip() for c in rows[0]]
    if has_header is None:
        has_header = (name_column is not None and name_column in first) or any(c.lower() in NAME_HEADERS for c in first)
    columns = first if has_header else (["file_name"] + [f"column_{i + 1}" for i in range(1, len(first))])
    body = rows[1:] if has_header else rows
    index = 0
    if name_column is not None:
        if name_column not in columns:
            raise DatasetError(f"{csv_path.name}: no column {name_column!r}; columns are {', '.join(columns)}")
        index = columns.index(name_column)
    elif has_header:
        index = next((i for i, c in enumerate(columns) if c.lower() in NAME_HEADERS), 0)
    return NameList(columns, has_header, index, body)


def match_names(names: list[str], objects: list[S3Object]) -> tuple[dict[str, str], list[str], dict[str, list[str]]]:
    """(matched name -> key, missing names, ambiguous name -> candidate keys)."""
    by_base: dict[str, list[str]] = defaultdict(list)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        if obj.key.endswith("/"):
            continue
        base = PurePosixPath(obj.key).name
        by_base[base].append(obj.key)
        by_stem[_stem(base)].append(obj.key)
    matched: dict[str, str] = {}
    missing: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        base = PurePosixPath(name).name
        candidates = by_base.get(base, []) if PurePosixPath(base).suffix.lower() in IMAGE_SUFFIXES else []
        if not candidates and base:
            candidates = by_stem.get(_stem(base), [])
        if len(candidates) == 1:
            matched[name] = candidates[0]
        elif len(candidates) > 1:
            ambiguous[name] = sorted(candidates)
        else:
            missing.append(name)
    return matched, missing, ambiguous


def _stem(base: str) -> str:
    path = PurePosixPath(base)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else base


def cached_listing(
    ws: Workspace, bucket: str, prefix: str, endpoint_url: str | None, refresh: bool = False, signed: bool = True
) -> list[S3Object]:
    """One listing per (endpoint, bucket, prefix, signed or not) for ten minutes: the analysis and the job share
    it. The endpoint is checked against the network policy first, so a cached listing never skips the check."""
    check_endpoint(ws.settings.download, endpoint_url)
    key = ("s3-listing", endpoint_url or "", bucket, prefix) + (() if signed else ("anonymous",))
    if not refresh:
        hit = ws.cache.get(key)
        if hit is not None:
            return [S3Object(k, s) for k, s in hit]
    client = make_client(ws.settings.download, endpoint_url, signed=signed)
    objects = list_prefix(client, bucket, prefix)
    ws.cache.set(key, [(o.key, o.size) for o in objects], expire=LISTING_TTL_SECONDS)
    return objects


def analyze_s3(
    ws: Workspace,
    csv_path: Path,
    bucket: str,
    prefix: str,
    endpoint_url: str | None = None,
    has_header: bool | None = None,
    name_column: str | None = None,
    refresh: bool = True,
    signed: bool = True,
) -> S3Analysis:
    """The pre-download analysis: total, already done, available, missing and ambiguous, with examples.
    `signed=False` lists (and the job downloads) without credentials: what pages on a server with sign-in
    do for an endpoint no administrator listed (s3_client.endpoint_is_signed)."""
    csv_path = Path(csv_path).expanduser().resolve()
    names = read_name_list(csv_path, has_header, name_column)
    objects = cached_listing(ws, bucket, prefix, endpoint_url, refresh=refresh, signed=signed)
    matched, missing, ambiguous = match_names(names.names(), objects)
    locators = {f"s3://{bucket}/{key}": name for name, key in matched.items()}
    done = ws.catalog.source_hashes("s3", list(locators))
    return S3Analysis(
        csv_path=str(csv_path),
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint_url,
        listed=len(objects),
        total_rows=len(names.rows),
        matched=matched,
        already_done={locators[loc]: h for loc, h in done.items()},
        missing=missing,
        ambiguous=ambiguous,
        signed=signed,
    )


def start_s3_download(
    ws: Workspace,
    manager: JobManager,
    analysis: S3Analysis,
    dataset: str,
    *,
    kind: str | None = None,
    has_header: bool | None = None,
    name_column: str | None = None,
    resize: int | None = None,
    keep_originals: bool = True,
    placeholder: bool = False,
    workers: int | None = None,
    out: Path | None = None,
) -> int:
    """Register the dataset and create the job from a confirmed analysis; returns the job id."""
    csv_path = Path(analysis.csv_path)
    names = read_name_list(csv_path, has_header, name_column)
    if resize is not None and not 8 <= resize <= 4096:
        raise DatasetError(f"--resize {resize}: must be between 8 and 4096 pixels")
    ds = ensure_dataset(ws.catalog, dataset, kind or guess_kind(csv_path), str(csv_path), names.columns)
    with job_params("download_s3"):
        params = S3DownloadParams(
            csv_path=str(csv_path),
            bucket=analysis.bucket,
            prefix=analysis.prefix,
            endpoint_url=analysis.endpoint_url,
            signed=analysis.signed,
            has_header=names.has_header,
            name_column=names.columns[names.name_column],
            resize=resize,
            keep_originals=keep_originals,
            placeholder=placeholder,
            workers=workers if workers is not None else ws.settings.download.workers,
            out=str(Path(out).expanduser().resolve()) if out else None,
            dataset=dataset,
        )
    title = f"Download S3: {dataset} (s3://{analysis.bucket}/{analysis.prefix})"
    return manager.create("download_s3", title, params, ds.id)


class S3DownloadParams(StoreParams):
    """An S3 download: the name list, the bucket and prefix it was matched against, what to store."""

    csv_path: str
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    signed: bool = True
    has_header: bool | None = None
    name_column: str | None = None


class S3DownloadTask(DownloadTaskBase):
    params_model: ClassVar[type[JobParams]] = S3DownloadParams
    kind: ClassVar[str] = "download_s3"
    source_kind: ClassVar[str] = "s3"
    # Every request goes to one endpoint: a refused endpoint would fail every item, so it stops the job.
    fatal_classes: ClassVar[frozenset[str]] = frozenset({"credentials", "blocked_url", "invalid_url"})
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"missing", "ambiguous"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        manager = JobManager(ws)
        p = S3DownloadParams.model_validate(params)
        analysis = analyze_s3(
            ws, Path(p.csv_path), p.bucket, p.prefix, p.endpoint_url, p.has_header, p.name_column, refresh=False,
            signed=p.signed,
        )  # fmt: skip
        names = read_name_list(Path(p.csv_path), p.has_header, p.name_column)
        dataset_id = ws.catalog.scalar("SELECT dataset_id FROM jobs WHERE id = ?", (job_id,))
        keys = names.names()
        for start in range(0, len(keys), 5000):
            insert_rows(
                ws.catalog,
                dataset_id,
                [(i, names.rows[i], keys[i]) for i in range(start, min(len(keys), start + 5000))],
            )
        manager.add_items(job_id, [(name, key) for name, key in analysis.matched.items()])
        manager.add_items(job_id, [(name, None) for name in analysis.missing + list(analysis.ambiguous)])
        manager.mark_known(job_id, analysis.already_done)
        failures = [
            ItemResult(
                name, "failed", 0, "missing", f"no object named {name!r} under s3://{analysis.bucket}/{analysis.prefix}"
            )
            for name in analysis.missing
        ] + [
            ItemResult(name, "failed", 0, "ambiguous", f"{len(c)} candidates: {', '.join(c[:5])}")
            for name, c in analysis.ambiguous.items()
        ]
        for start in range(0, len(failures), 1000):
            manager.apply_results(job_id, failures[start : start + 1000])

    def source_options(self, params: dict[str, Any]) -> dict[str, Any]:
        p = S3DownloadParams.model_validate(params)
        return {"s3_bucket": p.bucket, "s3_endpoint_url": p.endpoint_url, "s3_signed": p.signed}


@dataclass
class BatchEntry:
    csv_path: Path
    kind: str
    prefix: str
    dataset: str


def plan_batch(drop_folder: Path, prefix_template: str) -> tuple[list[BatchEntry], list[tuple[Path, str]]]:
    """Seed 002's batch mode: `GEN_x.csv` -> kind GEN, prefix from the template, dataset `GEN_x`."""
    if not drop_folder.is_dir():
        raise DatasetError(f"{drop_folder}: not a folder")
    entries: list[BatchEntry] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(drop_folder.glob("*.csv")):
        match = BATCH_NAME.match(path.name)
        if not match:
            skipped.append((path, "name is not KIND_name.csv (e.g. GEN_batch1.csv)"))
            continue
        kind = match.group(1).upper()
        entries.append(BatchEntry(path, kind, prefix_template.format(KIND=kind, kind=kind.lower()), path.stem))
    return entries, skipped
