"""A dataset written in the format the next tool reads: an ImageFolder tree (one folder per label), Hugging
Face `datasets` Parquet shards (an `image` column and every label and score), WebDataset tar shards, or seed
000's layout (`processed_data/{split}_images/{index}_{entity_name}.{ext}` and `{split}_labeled.csv`, one file
per input row, as its scripts read them).

An `export` job; its items are shards of `shard_size` images in the dataset's input order, each written whole
(to a temporary name, then renamed) or, for folders, file by file, so a killed export resumes at the shard it
was writing and a finished one can be run again over the same folder without duplicates. Each shard lists the
files it holds in the job's journal; the finished export lists them all in `export-files.txt`, and a later
export of the same dataset and format into the folder removes the files the earlier one listed that it no
longer holds (images dropped since, shards renumbered), never a file it did not write. Files are the stored
originals, byte for byte. Names come from what the input called each image (the file name in a folder or zip,
the last part of a URL), with the image's hash added where two images of the dataset share a name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from services.core.datasets import STORED_PATH, DatasetError, dataset_id_of, entries_page, image_count
from services.core.names import file_name
from services.core.workspace import Workspace, write_atomic
from services.jobs.manager import ItemResult, JobManager
from services.jobs.params import DatasetParams, JobParams, job_params
from services.jobs.stage import ChunkedTask
from services.stages.explore.duplicate_choices import dropped_among

log = logging.getLogger(__name__)

KIND = "export"
FORMATS = ("imagefolder", "hf", "webdataset", "seed000")
UNLABELLED = "_unlabelled"
MANIFEST = "export.json"
FILE_LIST = "export-files.txt"


class ExportParams(DatasetParams):
    """What an export writes: the format, the folder, how images are labelled, how many images per shard."""

    format: str = Field(description="imagefolder, hf, webdataset or seed000")
    out: str
    by: str = Field("tag", description="the label: tag (the folder an image was imported from), column:NAME, none")
    shard_size: int = Field(1000, ge=1, le=100_000, description="images per shard (a job item)")
    images: int = Field(0, ge=0)  # stored images when the job was made (the shard count follows)
    rows: int = Field(0, ge=0)  # input rows (seed000 shards rows: one file per row)
    include_dropped: bool = Field(False, description="also export images chosen to drop as near-duplicates")


@dataclass(frozen=True)
class ExportOptions:
    workspace: str
    journal_dir: str
    dataset: str
    format: str
    out: str
    by: str
    shard_size: int
    shards: int
    repeated: frozenset[str] = frozenset()  # seed000: the names rows share (read once per run)
    skip_dropped: bool = True  # leave out images last chosen to drop as near-duplicates (Explore)


@dataclass
class ExportRecord:
    """One image as every format writes it."""

    image_hash: str
    path: Path  # the stored original
    file_name: str  # the name it leaves with (original stem, stored format's suffix, hash if shared)
    source: str  # what the input called it
    labels: list[str]  # by the export's `by` (several tags: several labels)
    tags: list[str]
    columns: dict[str, str]  # the first input row that asked for it
    scores: list[dict[str, Any]]  # every classifier's score: {model, tag, score}


def start_export(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    fmt: str,
    out: Path,
    *,
    by: str = "tag",
    shard_size: int = 1000,
    include_dropped: bool = False,
) -> int:
    """Check the request now (the format, the label source, the dataset's images), then create the job."""
    if fmt not in FORMATS:
        raise DatasetError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    dataset_id = dataset_id_of(ws.catalog, dataset)
    columns = json.loads(ws.catalog.scalar("SELECT columns FROM datasets WHERE id = ?", (dataset_id,)))
    if by.startswith("column:") and by.removeprefix("column:") not in columns:
        raise DatasetError(f"--by {by}: dataset {dataset!r} has no such column (columns: {', '.join(columns)})")
    if by not in ("tag", "none") and not by.startswith("column:"):
        raise DatasetError(f"--by {by!r}: use tag, none or column:NAME")
    images = image_count(ws, dataset)
    if not images:
        raise DatasetError(f"dataset {dataset!r} has no stored images to export")
    rows = int(ws.catalog.scalar("SELECT COUNT(*) FROM dataset_rows WHERE dataset_id = ?", (dataset_id,)))
    with job_params(KIND):
        params = ExportParams(
            dataset=dataset, format=fmt, out=str(out.expanduser().resolve()), by=by, shard_size=shard_size,
            images=images, rows=rows, chunk_size=1,  # a shard is a chunk: progress after every shard
            include_dropped=include_dropped,
        )  # fmt: skip
    return manager.create(KIND, f"Export {fmt}: {dataset} ({images} images)", params, dataset_id)


FORMAT_LABELS = {
    "imagefolder": "ImageFolder (a folder per label)",
    "hf": "Hugging Face datasets (Parquet)",
    "webdataset": "WebDataset (tar shards)",
    "seed000": "Seed 000's processed_data/ layout",
}


def label_choices(ws: Workspace, dataset: str) -> list[str]:
    """What `by` may be for this dataset: its tags, nothing, or one of its input columns."""
    from services.core.datasets import get_dataset

    found = get_dataset(ws.catalog, dataset)
    return ["tag", "none", *(f"column:{c}" for c in (found.columns if found else []))]


def page_export_folder(ws: Workspace, dataset: str, fmt: str) -> Path:
    """Where an export started from a page goes: the workspace's `exports/`, named after the dataset (a page
    never names a server path)."""
    return ws.root / "exports" / file_name(dataset, f"-{fmt}")


class ExportTask(ChunkedTask):
    params_model: ClassVar[type[JobParams]] = ExportParams
    kind: ClassVar[str] = KIND
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"missing"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        shards = shard_count(ExportParams.model_validate(params))
        JobManager(ws).add_items(job_id, [(f"shard-{i:05d}", str(i)) for i in range(shards)])

    def batch_work(self) -> Any:
        return export_shards

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> ExportOptions:
        p = ExportParams.model_validate(params)
        repeated = frozenset(seed000_repeated(ws, p.dataset)) if p.format == "seed000" else frozenset()
        return ExportOptions(
            workspace=str(ws.root), journal_dir=str(ws.job_dir(job_id)), dataset=p.dataset, format=p.format,
            out=p.out, by=p.by, shard_size=p.shard_size, shards=shard_count(p), repeated=repeated,
            skip_dropped=not p.include_dropped,
        )  # fmt: skip

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        """`export.json` beside the files: what was exported, how, and how many images each shard holds."""
        p = ExportParams.model_validate(params)
        rows = ws.catalog.query(
            "SELECT item_key, status, result FROM job_items WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        shards = [{"shard": r["item_key"], "status": r["status"], **json.loads(r["result"] or "{}")} for r in rows]
        manifest = {
            "dataset": p.dataset, "format": p.format, "by": p.by, "shard_size": p.shard_size, "job": job_id,
            "images": sum(s.get("images", 0) for s in shards), "shards": shards,
            "dropped_duplicates": sum(s.get("dropped", 0) for s in shards),
        }  # fmt: skip
        out = Path(p.out)
        out.mkdir(parents=True, exist_ok=True)
        if p.format == "seed000":
            manifest["labeled_csv"] = str(write_seed000_csv(ws, p.dataset, out).relative_to(out))
        held = held_files(ws.job_dir(job_id), [str(s["shard"]) for s in shards if s["status"] == "ok"])
        held |= {str(manifest["labeled_csv"])} if p.format == "seed000" else set()
        manifest["removed_stale"] = remove_stale(out, held, p.dataset, p.format)
        write_atomic(out / FILE_LIST, "".join(f"{name}\n" for name in sorted(held)).encode("utf-8"))
        write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def held_files(journal: Path, shards: list[str]) -> set[str]:
    """The files the export's finished shards hold, relative to its folder (from each shard's list)."""
    held: set[str] = set()
    for shard in shards:
        listing = journal / f"{shard}.files"
        if listing.is_file():
            held.update(line for line in listing.read_text("utf-8").splitlines() if line)
    return held


def remove_stale(out: Path, held: set[str], dataset: str, fmt: str) -> int:
    """Remove the files the folder's previous export of this dataset and format listed that this one does not
    hold; a previous export of another dataset or format, or files it did not list, are left alone. Returns how
    many were removed."""
    try:
        previous = json.loads((out / MANIFEST).read_text("utf-8"))
        listed = (out / FILE_LIST).read_text("utf-8").splitlines()
    except (OSError, ValueError):
        return 0  # no earlier export here (or one from before the lists): nothing known to remove
    if not isinstance(previous, dict) or (previous.get("dataset"), previous.get("format")) != (dataset, fmt):
        if listed:
            log.info("export into %s: the earlier export there (another dataset or format) is left as it is", out)
        return 0
    root = out.resolve()
    removed = 0
    for name in sorted(set(listed) - held - {FILE_LIST, MANIFEST}):
        target = (out / name).resolve()
        if not name or not target.is_relative_to(root) or target == root or not target.is_file():
            continue  # a listed name that leaves the folder, or that is gone, is never followed
        target.unlink()
        removed += 1
        for folder in target.parents:  # folders the removal left empty (an ImageFolder label with no image left)
            if folder == root or not folder.is_relative_to(root) or any(folder.iterdir()):
                break
            folder.rmdir()
    return removed


def shard_count(p: ExportParams) -> int:
    return max(1, math.ceil((p.rows if p.format == "seed000" else p.images) / p.shard_size))


def export_shards(
    items: list[tuple[str, str | None]], opts: ExportOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """Write each shard of the chunk (items are shard numbers)."""
    from services.core.settings import load_settings

    ws = Workspace(Path(opts.workspace), load_settings(workspace=opts.workspace))
    try:
        writer = WRITERS.get(opts.format)
        for key, locator in items:
            if cancelled():
                return
            shard = int(locator or 0)
            dropped: set[str] = set()
            try:
                if opts.format == "seed000":
                    images, written, held = write_seed000_shard(
                        ws, opts.dataset, Path(opts.out), shard, opts.shard_size, opts.repeated
                    )
                else:
                    records = shard_records(ws, opts.dataset, opts.by, shard * opts.shard_size, opts.shard_size)
                    if opts.skip_dropped:
                        dropped = dropped_among(ws, [r.image_hash for r in records])
                        records = [r for r in records if r.image_hash not in dropped]
                    if writer is None:
                        raise ValueError(f"export format {opts.format!r}")
                    written, held = writer(Path(opts.out), opts.dataset, shard, opts.shards, records)
                    images = len(records)
            except FileNotFoundError as exc:
                yield ItemResult(key=key, status="failed", error_class="missing", error_message=str(exc))
                continue
            listing = "".join(f"{path.relative_to(opts.out).as_posix()}\n" for path in held)
            write_atomic(Path(opts.journal_dir) / f"{key}.files", listing.encode("utf-8"))
            result = {"images": images, "files": written}
            if dropped:
                result["dropped"] = len(dropped)
            yield ItemResult(key=key, status="ok", result=result)
    finally:
        ws.close()


# --- what each image carries ----------------------------------------------------------------------------------


def shard_records(ws: Workspace, dataset: str, by: str, offset: int, limit: int) -> list[ExportRecord]:
    """The shard's images in input order, with their names, labels, tags, input columns and scores."""
    dataset_id = dataset_id_of(ws.catalog, dataset)
    entries = entries_page(ws, dataset, offset, limit)
    if not entries:
        return []
    hashes = [h for h, _, _ in entries]
    marks = ",".join("?" * len(hashes))
    tags: dict[str, list[str]] = {}
    for r in ws.catalog.query(
        f"SELECT image_hash, tag FROM dataset_member_tags WHERE dataset_id = ? AND image_hash IN ({marks})",
        (dataset_id, *hashes),
    ):
        tags.setdefault(r["image_hash"], []).append(r["tag"])
    scores: dict[str, list[dict[str, Any]]] = {}
    for r in ws.catalog.query(
        f"SELECT image_hash, model, tag, score FROM tag_scores WHERE image_hash IN ({marks}) ORDER BY model",
        tuple(hashes),
    ):
        scores.setdefault(r["image_hash"], []).append({"model": r["model"], "tag": r["tag"], "score": r["score"]})
    columns: list[str] = json.loads(ws.catalog.scalar("SELECT columns FROM datasets WHERE id = ?", (dataset_id,)))
    shared = _shared_names(ws, dataset_id, [n for _, _, n in entries])
    records = []
    for image_hash, rel, name in entries:
        row = ws.catalog.scalar(
            """SELECT data FROM dataset_rows INDEXED BY dataset_rows_key WHERE dataset_id = ? AND source_key = ?
               ORDER BY row_index LIMIT 1""",  # (the primary key would satisfy the ORDER BY by a scan)
            (dataset_id, name),
        )
        values = json.loads(row) if row else []
        row_columns = {c: str(values[i]) if i < len(values) else "" for i, c in enumerate(columns)}
        image_tags = sorted(tags.get(image_hash, []))
        if by == "tag":
            labels = image_tags or [UNLABELLED]
        elif by.startswith("column:"):
            labels = [row_columns.get(by.removeprefix("column:")) or UNLABELLED]
        else:
            labels = []
        path = ws.abspath(rel)
        records.append(
            ExportRecord(
                image_hash=image_hash,
                path=path,
                file_name=_leaving_name(name, image_hash, path.suffix, shared),
                source=name,
                labels=labels,
                tags=image_tags,
                columns=row_columns,
                scores=scores.get(image_hash, []),
            )  # fmt: skip
        )
    return records


def _base_name(source: str) -> str:
    """The last part of what the input called an image: a path in a folder or zip, or a URL's path."""
    last = source.split("!")[-1].split("?")[0].split("#")[0].rstrip("/")
    return last.replace("\\", "/").rsplit("/", 1)[-1]


def _shared_names(ws: Workspace, dataset_id: int, names: list[str]) -> set[str]:
    """Which of these base names more than one image of the dataset has (the index of file names)."""
    shared = set()
    for base in {_base_name(n) for n in names}:
        count = ws.catalog.scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM dataset_members WHERE dataset_id = ? AND file_name = ? LIMIT 2)",
            (dataset_id, base),
        )
        if count > 1:
            shared.add(base)
    return shared


def _leaving_name(source: str, image_hash: str, suffix: str, shared: set[str]) -> str:
    base = _base_name(source)
    stem = Path(base).stem if base else ""
    if not stem or stem.startswith("."):
        return f"{image_hash[:16]}{suffix}"
    tail = f"-{image_hash[:8]}{suffix}" if base in shared else suffix
    return file_name(stem, tail)


# --- writers ----------------------------------------------------------------------------------------------


def _write_folders(
    out: Path, dataset: str, shard: int, shards: int, records: list[ExportRecord]
) -> tuple[int, list[Path]]:
    """`out/<label>/<name>`, a copy of the stored file per label (an image with two tags is in both folders).
    Returns the files written and every file the shard holds (written now or by an earlier run)."""
    written, held = 0, []
    for record in records:
        for label in record.labels or [""]:
            folder = out / file_name(label) if label else out
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / record.file_name
            if target.is_file():
                if _holds(target, record.image_hash):
                    held.append(target)
                    continue  # written by an earlier run of this export
                stem, suffix = Path(record.file_name).stem, Path(record.file_name).suffix
                target = folder / file_name(stem, f"-{record.image_hash[:8]}{suffix}")  # two names cleaned alike
                if target.is_file() and _holds(target, record.image_hash):
                    held.append(target)
                    continue
            partial = target.with_name(f".{target.name}.part")
            shutil.copyfile(record.path, partial)
            os.replace(partial, target)
            written += 1
            held.append(target)
    return written, held


def _holds(path: Path, image_hash: str) -> bool:
    """Whether the file is this image (its bytes' sha256 is the image's name in the catalog)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == image_hash


def _metadata(record: ExportRecord) -> dict[str, Any]:
    return {
        "image_hash": record.image_hash, "file_name": record.file_name, "source": record.source,
        "label": record.labels[0] if record.labels else None, "labels": record.labels, "tags": record.tags,
        "columns": record.columns, "scores": record.scores,
    }  # fmt: skip


def _write_parquet(
    out: Path, dataset: str, shard: int, shards: int, records: list[ExportRecord]
) -> tuple[int, list[Path]]:
    """`out/data/train-NNNNN-of-NNNNN.parquet`: what `datasets.load_dataset(out)` reads as its train split."""
    import datasets

    datasets.disable_progress_bars()  # the job reports progress per shard; its log takes no bars
    features = datasets.Features({
        "image": datasets.Image(),
        "image_hash": datasets.Value("string"),
        "file_name": datasets.Value("string"),
        "source": datasets.Value("string"),
        "label": datasets.Value("string"),
        "labels": [datasets.Value("string")],
        "tags": [datasets.Value("string")],
        "columns": datasets.Value("string"),  # the input row as JSON (columns differ between datasets)
        "scores": [{"model": datasets.Value("string"), "tag": datasets.Value("string"),
                    "score": datasets.Value("float64")}],
    })  # fmt: skip
    rows: dict[str, list[Any]] = {name: [] for name in features}
    for record in records:
        meta = _metadata(record)
        rows["image"].append({"bytes": record.path.read_bytes(), "path": record.file_name})
        for name in ("image_hash", "file_name", "source", "label", "labels", "tags", "scores"):
            rows[name].append(meta[name])
        rows["columns"].append(json.dumps(record.columns, ensure_ascii=False))
    target = out / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(partial))
    os.replace(partial, target)
    return 1, [target]


def _write_tar(out: Path, dataset: str, shard: int, shards: int, records: list[ExportRecord]) -> tuple[int, list[Path]]:
    """`out/<dataset>-NNNNNN.tar`: per image, its bytes under its format's extension and a `.json` of labels."""
    import webdataset

    target = out / file_name(dataset, f"-{shard:06d}.tar")
    out.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    with open(partial, "wb") as fh, webdataset.TarWriter(fh) as sink:
        for record in records:
            extension = record.path.suffix.lstrip(".").lower() or "bin"
            sink.write({"__key__": record.image_hash, extension: record.path.read_bytes(),
                        "json": json.dumps(_metadata(record), ensure_ascii=False).encode("utf-8")})  # fmt: skip
    os.replace(partial, target)
    return 1, [target]


WRITERS: dict[str, Callable[[Path, str, int, int, list[ExportRecord]], tuple[int, list[Path]]]] = {
    "imagefolder": _write_folders,
    "hf": _write_parquet,
    "webdataset": _write_tar,
}


# --- seed 000's layout: one file per input row ----------------------------------------------------------------


SeedRow = tuple[int, list[str], str | None]


def _seed000_rows(ws: Workspace, dataset: str, start: int, limit: int | None) -> Iterator[SeedRow]:
    """(row number, the row's values, its stored file relative to the workspace or None) for rows [start,
    start + limit)."""
    dataset_id = dataset_id_of(ws.catalog, dataset)
    end = start + limit if limit is not None else 2**62
    cursor = ws.catalog.conn.execute(
        f"""SELECT r.row_index, r.data,
                   (SELECT {STORED_PATH} FROM job_items j JOIN images i ON i.hash = j.image_hash
                    WHERE j.job_id IN (SELECT id FROM jobs WHERE dataset_id = ?) AND j.item_key = r.source_key
                      AND j.status = 'ok' LIMIT 1) AS path
            FROM dataset_rows r WHERE r.dataset_id = ? AND r.row_index >= ? AND r.row_index < ?
            ORDER BY r.row_index""",
        (dataset_id, dataset_id, start, end),
    )
    for row in cursor:
        yield int(row["row_index"]), json.loads(row["data"]), row["path"]


def _seed000_split(ws: Workspace, dataset: str) -> tuple[str, list[str]]:
    """The split the seed's folders are named after (the dataset's kind: train or test, else its name), and
    the dataset's columns."""
    row = ws.catalog.conn.execute("SELECT kind, columns FROM datasets WHERE name = ?", (dataset,)).fetchone()
    kind = str(row["kind"])
    return (kind if kind in ("train", "test") else file_name(dataset)), json.loads(row["columns"])


def _seed000_name(
    values: list[str], columns: list[str], row_number: int, suffix: str, repeated: frozenset[str] | set[str]
) -> str:
    """`{index}_{entity_name}{suffix}`: the row's `index` column (test.csv) or its number in the file; where rows
    share an index and entity name (`repeated`), each adds its row number so no file overwrites another."""
    index = values[columns.index("index")] if "index" in columns else str(row_number)
    entity = values[columns.index("entity_name")] if "entity_name" in columns else ""
    stem = f"{index}_{entity}" if entity else index
    return file_name(f"{stem}_row{row_number}" if stem in repeated else stem, suffix)


def seed000_repeated(ws: Workspace, dataset: str) -> set[str]:
    """The `{index}_{entity_name}` stems more than one row of the dataset has (none without an index column: row
    numbers are unique). One grouped read of every row (0.2 s at 100,000), once per run."""
    _, columns = _seed000_split(ws, dataset)
    if "index" not in columns:
        return set()
    index = f"json_extract(data, '$[{columns.index('index')}]')"
    entity = f"json_extract(data, '$[{columns.index('entity_name')}]')" if "entity_name" in columns else "''"
    rows = ws.catalog.query(
        f"""SELECT COALESCE({index}, '') AS ix, COALESCE({entity}, '') AS en FROM dataset_rows WHERE dataset_id = ?
            GROUP BY ix, en HAVING COUNT(*) > 1""",
        (dataset_id_of(ws.catalog, dataset),),
    )
    return {f"{r['ix']}_{r['en']}" if r["en"] else str(r["ix"]) for r in rows}


def write_seed000_shard(
    ws: Workspace, dataset: str, out: Path, shard: int, shard_size: int, repeated: frozenset[str]
) -> tuple[int, int, list[Path]]:
    """The shard's rows as `processed_data/{split}_images/{index}_{entity_name}.{ext}` (rows without an image
    get no file, as in the labelled CSV); returns (rows with an image, files written, files held)."""
    split, columns = _seed000_split(ws, dataset)
    folder = out / "processed_data" / f"{split}_images"
    folder.mkdir(parents=True, exist_ok=True)
    images = written = 0
    held = []
    for number, values, rel in _seed000_rows(ws, dataset, shard * shard_size, shard_size):
        if rel is None:
            continue
        source = ws.abspath(rel)
        target = folder / _seed000_name(values, columns, number, source.suffix, repeated)
        images += 1
        held.append(target)
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            continue
        partial = target.with_name(f".{target.name}.part")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        written += 1
    return images, written, held


def write_seed000_csv(ws: Workspace, dataset: str, out: Path) -> Path:
    """`processed_data/{split}_labeled.csv`: every input column, seed 000's value checks, and `image_path`
    (relative to the export folder; empty for a row without an image)."""
    from services.core import csv_safety
    from services.core.entity_units import ENTITY_VALUE_COLUMNS, parse_entity_value

    split, columns = _seed000_split(ws, dataset)
    units = ws.settings.labels.entity_unit_map
    checks = "entity_name" in columns and "entity_value" in columns
    repeated = seed000_repeated(ws, dataset)
    target = out / "processed_data" / f"{split}_labeled.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    with csv_safety.open_for_write(target, csv_safety.guard_enabled(ws.settings)) as writer:
        writer.writerow(columns + (ENTITY_VALUE_COLUMNS if checks else []) + ["image_path"])
        for number, values, rel in _seed000_rows(ws, dataset, 0, None):
            values = values + [""] * (len(columns) - len(values))
            extra = []
            if checks:
                name, value = values[columns.index("entity_name")], values[columns.index("entity_value")]
                extra = parse_entity_value(name, value, units).cells()
            path = ""
            if rel is not None:
                suffix = Path(rel).suffix
                path = f"processed_data/{split}_images/{_seed000_name(values, columns, number, suffix, repeated)}"
            writer.writerow(values[: len(columns)] + extra + [path])
    return target
