"""Preprocess stage: run a recipe over a dataset's images (or a folder imported as a dataset), as a resumable
job on all cores, with quality flags recorded per image.

Each result is keyed by (image hash, `preprocess:<recipe>`, recipe settings hash) in `stage_results`, so a
rerun skips what is done and an edited recipe recomputes everything under its new hash. Outputs go to
`derived/<recipe>@<hash10>/` and are linked to the source image in `derived_images`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from services.core import csv_safety
from services.core.datasets import (
    STORED_PATH,
    dataset_id_of,
    flag_counts,
    image_count,
    sample_entries,
    stage_count,
)
from services.core.names import file_name
from services.core.workspace import Workspace, derived_relpath, is_disk_full, write_atomic
from services.io.imaging import ImageCheckError
from services.jobs.image_stage import ImageStageTask, require_images
from services.jobs.manager import DISK_FULL, ItemResult, JobManager
from services.jobs.params import JobParams, job_params
from services.stages.preprocess.ops import OperationError, OutputTooLargeError, apply_recipe, encode, load_image
from services.stages.preprocess.quality import MEASURE_SIDE, QUALITY_STAGE, QUALITY_VERSION, measure
from services.stages.preprocess.recipes import Recipe, load_recipe, parse_recipe

# --- the preprocess job -----------------------------------------------------------------------------


def stage_name(recipe: Recipe) -> str:
    return f"preprocess:{recipe.name}"


def start_preprocess(
    ws: Workspace, manager: JobManager, dataset: str, recipe: Recipe | str, workers: int | None = None
) -> int:
    """Create the job; the recipe is frozen into it, so editing the recipe later never changes a running job."""
    recipe = load_recipe(ws.root, recipe) if isinstance(recipe, str) else recipe
    dataset_id = require_images(ws, dataset)
    with job_params("preprocess"):
        params = PreprocessParams(
            dataset=dataset,
            recipe=json.loads(recipe.model_dump_json()),
            workers=workers if workers is not None else ws.settings.download.workers,
            chunk_size=16,
        )
    title = f"Preprocess: {dataset} with {recipe.name} v{recipe.version}"
    return manager.create("preprocess", title, params, dataset_id)


@dataclass(frozen=True)
class PreprocessOptions:
    workspace: str
    recipe_json: str
    journal_dir: str
    max_pixels: int


class PreprocessParams(JobParams):
    """A preprocess run: the dataset and the recipe frozen into the job."""

    dataset: str
    recipe: dict[str, Any]


MANIFEST_COLUMNS = ("image_hash", "source_path", "output_path", "status", "error", "quality_flags")


class PreprocessTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = PreprocessParams
    kind: ClassVar[str] = "preprocess"
    sticky_classes: ClassVar[frozenset[str]] = frozenset({"not_image", "too_large", "truncated", "missing"})

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        recipe = parse_recipe(json.dumps(PreprocessParams.model_validate(params).recipe))
        return [(stage_name(recipe), recipe.settings_hash)]

    def batch_work(self) -> Any:
        return preprocess_batch

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> PreprocessOptions:
        return PreprocessOptions(
            workspace=str(ws.root),
            recipe_json=json.dumps(PreprocessParams.model_validate(params).recipe),
            journal_dir=str(ws.job_dir(job_id)),
            max_pixels=ws.settings.download.max_pixels,
        )

    def release(self) -> None:
        _WORKERS.clear()

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        """A manifest CSV: every image of the run with the dataset's input columns (its first row: seed 000's
        group_id, entity_name, ...), its source, output, status and quality flags."""
        p = PreprocessParams.model_validate(params)
        recipe = parse_recipe(json.dumps(p.recipe))
        out = ws.root / "exports" / file_name(f"preprocess-{p.dataset}-{recipe.name}", f"-job{job_id}.csv")
        dataset_id = dataset_id_of(ws.catalog, p.dataset)
        columns: list[str] = json.loads(ws.catalog.scalar("SELECT columns FROM datasets WHERE id = ?", (dataset_id,)))
        shown = [c for c in columns if c not in MANIFEST_COLUMNS]
        rows = ws.catalog.conn.execute(
            """SELECT j.item_key, j.locator, j.status, j.error_class, j.error_message, s.result, q.result AS quality,
                      (SELECT r.data FROM dataset_members m JOIN dataset_rows r INDEXED BY dataset_rows_key
                         ON r.dataset_id = m.dataset_id AND r.source_key = m.name
                       WHERE m.dataset_id = ? AND m.image_hash = j.item_key ORDER BY r.row_index LIMIT 1) AS row_data
               FROM job_items j
               LEFT JOIN stage_results s ON s.image_hash = j.item_key AND s.stage = ? AND s.settings_hash = ?
               LEFT JOIN stage_results q ON q.image_hash = j.item_key AND q.stage = ? AND q.settings_hash = ?
               WHERE j.job_id = ? ORDER BY j.seq""",
            (dataset_id, stage_name(recipe), recipe.settings_hash, QUALITY_STAGE, QUALITY_VERSION, job_id),
        )
        with csv_safety.open_for_write(out, csv_safety.guard_enabled(ws.settings, params)) as writer:
            writer.writerow(["image_hash", *shown, "source_path", "output_path", "status", "error", "quality_flags"])
            for r in rows:
                result = json.loads(r["result"]) if r["result"] else {}
                quality = json.loads(r["quality"]) if r["quality"] else {}
                output = str(ws.root / result["output"]) if result.get("output") else ""
                error = f"{r['error_class']}: {r['error_message']}" if r["error_class"] else ""
                flags = " ".join(quality.get("flags", []))
                values = json.loads(r["row_data"]) if r["row_data"] else []
                row = dict(zip(columns, values, strict=False))
                metadata = [row.get(c, "") for c in shown]
                writer.writerow([r["item_key"], *metadata, str(ws.abspath(r["locator"])), output, r["status"], error,
                                 flags])  # fmt: skip


class _PreprocessWorker:
    def __init__(self, opts: PreprocessOptions) -> None:
        import cv2

        cv2.setNumThreads(1)  # one item per core: OpenCV's own threads would only oversubscribe
        self.opts = opts
        self.root = Path(opts.workspace)
        self.recipe = parse_recipe(opts.recipe_json)
        self.stage = stage_name(self.recipe)
        draft = self.recipe.draft_size()
        self.draft_side = max(draft, MEASURE_SIDE) if draft else None


_WORKERS: dict[str, _PreprocessWorker] = {}


def preprocess_batch(
    items: list[tuple[str, str | None]], opts: PreprocessOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """Run the recipe on a chunk of (image hash, path) items, one after another in this process."""
    key = json.dumps([opts.workspace, opts.recipe_json, opts.journal_dir])
    worker = _WORKERS.get(key)
    if worker is None:
        worker = _WORKERS[key] = _PreprocessWorker(opts)
    for image_hash, locator in items:
        if cancelled():
            return
        yield _preprocess_one(worker, image_hash, locator or "")


def _preprocess_one(worker: _PreprocessWorker, image_hash: str, locator: str) -> ItemResult:
    recipe = worker.recipe
    path = worker.root / locator
    try:
        data = path.read_bytes()
        arr, width, height = load_image(data, worker.opts.max_pixels, worker.draft_side)
        quality = measure(arr, width, height)
        out = apply_recipe(arr, recipe, worker.opts.max_pixels)
        encoded, ext = encode(out, recipe.output)
        rel = derived_relpath(recipe.variant, image_hash, ext)
        write_atomic(worker.root / rel, encoded, worker.root / "tmp")
    except FileNotFoundError:
        return _failed(worker, image_hash, "missing", f"{path} is gone from the workspace")
    except ImageCheckError as exc:
        return _failed(worker, image_hash, exc.error_class, exc.message)
    except OutputTooLargeError as exc:  # the recipe would make an image over download.max_pixels
        return _failed(worker, image_hash, "too_large", str(exc))
    except OperationError as exc:
        return _failed(worker, image_hash, "operation", str(exc))
    except (MemoryError, ValueError, OSError) as exc:
        error_class = DISK_FULL if is_disk_full(exc) else "error"  # a full disk stops the job, item stays pending
        return _failed(worker, image_hash, error_class, f"{exc.__class__.__name__}: {exc}")
    h, w = out.shape[:2]
    result = {"output": rel, "width": w, "height": h, "recipe_version": recipe.version}
    return ItemResult(
        key=image_hash,
        status="ok",
        image_hash=image_hash,
        derived=[(recipe.variant, rel, w, h)],
        result=result,
        stages=[
            (worker.stage, recipe.settings_hash, "ok", result, None),
            (QUALITY_STAGE, QUALITY_VERSION, "ok", quality, None),
        ],
    )


def _failed(worker: _PreprocessWorker, image_hash: str, error_class: str, message: str) -> ItemResult:
    return ItemResult(
        key=image_hash,
        status="failed",
        error_class=error_class,
        error_message=message,
        image_hash=image_hash,
        stages=[(worker.stage, worker.recipe.settings_hash, "failed", None, f"{error_class}: {message}")],
    )


# --- preview and results for the page --------------------------------------------------------------


@dataclass
class Preview:
    image_hash: str
    before: np.ndarray | None
    after: np.ndarray | None
    flags: list[str] = field(default_factory=list)
    error: str | None = None


def preview(ws: Workspace, recipe: Recipe, images: list[tuple[str, str]]) -> list[Preview]:
    """The recipe on a few images, in memory (nothing is stored)."""
    out = []
    for image_hash, rel in images:
        try:
            arr, width, height = load_image(ws.abspath(rel).read_bytes(), ws.settings.download.max_pixels)
            flags = list(measure(arr, width, height)["flags"])
            after = apply_recipe(arr, recipe, ws.settings.download.max_pixels)  # in the dashboard's process
            out.append(Preview(image_hash, arr, after, flags))
        except (ImageCheckError, OperationError, OSError) as exc:
            out.append(Preview(image_hash, None, None, error=str(exc)))
    return out


def sample_images(ws: Workspace, dataset: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """About `n` of the dataset's images at random, reproducibly per seed (indexed lookups, no full read)."""
    return [(h, path) for h, path, _ in sample_entries(ws, dataset, n, seed)]


def quality_counts(ws: Workspace, dataset: str) -> dict[str, int]:
    """How many of the dataset's measured images carry each quality flag (the catalog's counters)."""
    return flag_counts(ws, dataset, QUALITY_VERSION)


@dataclass
class ResultRow:
    image_hash: str
    source: str
    output: str
    flags: list[str]
    seq: int = 0  # the image's place in the dataset: the key the next page starts after


def results_page(
    ws: Workspace, recipe: Recipe, dataset: str, flags: list[str] | None = None, after: int = 0, limit: int = 12
) -> tuple[list[ResultRow], int]:
    """One page of a recipe's outputs for a dataset in input order, starting after the image at `after` (the
    last row's `seq` of the page before: keyset pagination, the same cost on every page), optionally only images
    with all of `flags`; and how many there are in all.

    Without flags the total is a counter and the page is read in input order, from the dataset's images when
    most have results, else from the results; with flags both start from the images carrying the first flag
    (an index of flags), so the cost follows how many carry it, not the dataset's size."""
    dataset_id = dataset_id_of(ws.catalog, dataset)
    stage, settings_hash = stage_name(recipe), recipe.settings_hash
    columns = f"m.image_hash, m.seq, s.result, q.result AS quality, {STORED_PATH} AS source"
    quality = "LEFT JOIN stage_results q ON q.image_hash = m.image_hash AND q.stage = ? AND q.settings_hash = ?"
    ok = "s.image_hash = m.image_hash AND s.stage = ? AND s.settings_hash = ? AND s.status = 'ok'"
    wanted = sorted(set(flags or []))
    if not wanted:
        total = stage_count(ws, dataset, stage, settings_hash)
        if not total:
            return [], 0
        if total * 4 >= image_count(ws, dataset):  # most images have results: walk the images in order
            sql = f"""SELECT {columns} FROM dataset_members m JOIN stage_results s ON {ok}
                      JOIN images i ON i.hash = m.image_hash {quality}
                      WHERE m.dataset_id = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"""
        else:  # few have: start from the results (CROSS JOIN keeps that order of the loops)
            sql = f"""SELECT {columns} FROM stage_results s CROSS JOIN dataset_members m ON {ok}
                      JOIN images i ON i.hash = m.image_hash {quality}
                      WHERE m.dataset_id = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"""
        rows = ws.catalog.query(sql, (stage, settings_hash, QUALITY_STAGE, QUALITY_VERSION, dataset_id, after, limit))
    else:  # start from the images with the first flag (an index), keep those with all of them
        marks = ",".join("?" * len(wanted))
        flagged = f"""FROM image_flags f
            CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = f.image_hash
            JOIN stage_results s ON {ok} JOIN images i ON i.hash = m.image_hash {quality}
            WHERE f.settings_hash = ? AND f.flag = ? AND m.seq > ?
              AND (SELECT COUNT(*) FROM image_flags g WHERE g.settings_hash = f.settings_hash
                   AND g.image_hash = f.image_hash AND g.flag IN ({marks})) = ?"""
        joins = (dataset_id, stage, settings_hash, QUALITY_STAGE, QUALITY_VERSION, QUALITY_VERSION, wanted[0])
        total = int(ws.catalog.scalar(f"SELECT COUNT(*) {flagged}", (*joins, 0, *wanted, len(wanted))))
        if not total:
            return [], 0
        rows = ws.catalog.query(
            f"SELECT {columns} {flagged} ORDER BY m.seq LIMIT ?", (*joins, after, *wanted, len(wanted), limit)
        )
    page = []
    for r in rows:
        image_flags = json.loads(r["quality"])["flags"] if r["quality"] else []
        output = json.loads(r["result"])["output"]
        page.append(ResultRow(r["image_hash"], r["source"] or "", output, image_flags, r["seq"]))
    return page, total
