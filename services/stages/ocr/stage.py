"""OCR stage: preprocessing recipe -> line detection -> recognition -> rules, per image; as a resumable job
over a dataset; and the CSV log every interface (job, REST, socket) appends to.

A result is `{"code", "cord", "raw", "valid", "confidence", "lines"}`: `raw` is the best line as read,
`code` the text after the rules (None when the pattern rejects every line), `cord` that line's box
`[x1, y1, x2, y2]` in the original image's pixels when the recipe keeps the geometry (photometric steps
only), else in the preprocessed image's. Among several lines, a line that passes the rules wins over one
that does not, then the most confident. A recipe that cannot apply to an image (a crop box outside it)
raises `RecipeMisfitError` naming the step: one failed item or one error answer, never a crash.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from services.core import csv_safety
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.io.imaging import ImageCheckError
from services.jobs.image_stage import ImageStageTask, require_images
from services.jobs.manager import ItemResult, JobManager
from services.jobs.params import EXECUTOR_KEY, JobParams
from services.stages.ocr.engines import TextLine, build_engine, resolve_engine
from services.stages.ocr.rules import OcrRules, load_rules, load_rules_arg
from services.stages.preprocess.ops import OperationError, OutputTooLargeError, apply_recipe, load_image
from services.stages.preprocess.recipes import Crop, Recipe, Resize, ResizePad, load_recipe, parse_recipe

log = logging.getLogger(__name__)
OCR_STAGE = "ocr"
LOG_HEADER = ["Serial Number", "Timestamp", "Detected Text"]
GEOMETRY_OPS = {"crop", "rotate", "resize_pad", "resize", "unwarp_arc", "deskew"}


@dataclass
class OcrResult:
    code: str | None
    cord: list[int] | None
    raw: str
    valid: bool
    confidence: float
    engine: str
    lines: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecipeMisfitError(WorkbenchError, ValueError):
    """The recipe cannot apply to this image (e.g. `ocr-line`'s crop box on a small image); the message names
    the recipe, the step and the image size."""

    error_class = "recipe_misfit"
    shows_class = True
    http_status = 422

    error_class = "recipe_misfit"


class RecipeTooLargeError(RecipeMisfitError):
    """A recipe step would make an image over the pixel bound the image was decoded with (refused before it
    runs); the message names the recipe, the step and the sizes."""

    error_class = "recipe_too_large"
    http_status = 422

    error_class = "too_large"


def recipe_keeps_geometry(recipe: Recipe | None) -> bool:
    return recipe is None or not any(getattr(step, "op", "") in GEOMETRY_OPS for step in recipe.ops)


def recipe_fit_problem(recipe: Recipe | None, width: int, height: int) -> str | None:
    """Why the recipe's crop does not fit a `width` x `height` image (outside it, or cut by its edge), or None.
    Sizes are followed through crops and resizes; after a rotate, unwarp or deskew the size depends on the
    image, so later crops are left to the run (which fails that image with the reason)."""
    w, h = width, height
    for number, op in enumerate(recipe.ops if recipe else [], start=1):
        if isinstance(op, Crop):
            x1, y1, x2, y2 = op.box
            if x1 >= w or y1 >= h:
                return f"step {number} (crop): box {op.box} lies outside the {w}x{h} image"
            if x2 > w or y2 > h:
                kept = f"{min(x2, w) - x1}x{min(y2, h) - y1}"
                return f"step {number} (crop): box {op.box} is cut to {kept} by the edge of the {w}x{h} image"
            w, h = x2 - x1, y2 - y1
        elif isinstance(op, Resize):
            w, h = op.width, op.height
        elif isinstance(op, ResizePad):
            w = h = op.size
        elif op.op in GEOMETRY_OPS:
            return None
    return None


def fit_problems(recipe: Recipe | None, sized: list[tuple[str, int, int]]) -> list[tuple[str, str]]:
    """(name, why) for each (name, width, height) the recipe's crop does not fit."""
    found = [(name, recipe_fit_problem(recipe, w, h)) for name, w, h in sized]
    return [(name, problem) for name, problem in found if problem is not None]


def oriented_size(source: bytes | Path) -> tuple[int, int]:
    """Width and height as the image will be read (EXIF rotation applied), from its header: no decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageCheckError("not_image", f"not a readable image ({exc.__class__.__name__})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def prepare(image: np.ndarray, recipe: Recipe | None, max_pixels: int) -> np.ndarray:
    """The recipe's output as RGB uint8 (what the engines read); no step may make more than `max_pixels`."""
    out = image
    if recipe is not None:
        try:
            out = apply_recipe(image, recipe, max_pixels)
        except OutputTooLargeError as exc:
            raise RecipeTooLargeError(f"recipe {recipe.name!r} makes too large an image: {exc}") from None
        except OperationError as exc:
            raise RecipeMisfitError(f"recipe {recipe.name!r} does not fit this image: {exc}") from None
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=-1)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out.astype(np.uint8))


def read_image(
    engine_name: str,
    settings: Any,
    image: np.ndarray,
    recipe: Recipe | None,
    rules: OcrRules,
    max_pixels: int | None = None,
) -> OcrResult:
    """One image through recipe, engine and rules (the engine is built once per process). No recipe step may
    make more than `max_pixels` (default: `download.max_pixels`, the bound images are decoded with)."""
    engine = build_engine(engine_name, settings)
    bound = max_pixels if max_pixels is not None else settings.download.max_pixels
    lines = merge_rows(engine.read(prepare(image, recipe, bound)))
    checked = [(line, rules.apply(line.text)) for line in lines]
    if not checked:
        return OcrResult(None, None, "", False, 0.0, engine_name, [])
    line, rule = max(checked, key=lambda pair: (pair[1].valid, pair[0].confidence))
    return OcrResult(
        code=rule.text if rule.valid else None,
        cord=line.box,
        raw=line.text,
        valid=rule.valid,
        confidence=round(line.confidence, 4),
        engine=engine_name,
        lines=[{"text": ln.text, "box": ln.box, "confidence": round(ln.confidence, 4), "valid": r.valid,
                "normalised": r.text} for ln, r in checked],
    )  # fmt: skip


def merge_rows(lines: list[TextLine], overlap: float = 0.5) -> list[TextLine]:
    """Pieces on the same row (vertical overlap over half the shorter height) joined left to right: detectors
    often split a line at wide gaps, and a code printed with spaces must be read as one line."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.box[1] + ln.box[3]) / 2):
        if rows:
            last = rows[-1][-1]
            shared = min(last.box[3], line.box[3]) - max(last.box[1], line.box[1])
            shorter = max(1, min(last.box[3] - last.box[1], line.box[3] - line.box[1]))
            if shared / shorter > overlap:
                rows[-1].append(line)
                continue
        rows.append([line])
    merged = []
    for row in rows:
        row.sort(key=lambda ln: ln.box[0])
        box = [min(r.box[0] for r in row), min(r.box[1] for r in row), max(r.box[2] for r in row),
               max(r.box[3] for r in row)]  # fmt: skip
        merged.append(TextLine(" ".join(r.text for r in row if r.text), box, min(r.confidence for r in row)))
    return merged


def decode_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """An uploaded or socket image as an RGB array (the Preprocess loader: EXIF, CMYK, 16-bit, alpha)."""
    array, _, _ = load_image(data, max_pixels)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return array[:, :, :3] if array.shape[2] == 4 else array


# --- the CSV log --------------------------------------------------------------------------------------


def append_log(path: Path, detected: str, when: float | None = None, guard: bool = True) -> int:
    """Append one row under an exclusive lock: the header on the first write, serial numbers that never
    repeat, correct with several processes writing at once. Returns the row's serial number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            serial = _last_serial(fh, size) + 1
            writer = csv_safety.writer(fh, guard)  # the reading is hostile text: formula-guarded
            if size == 0:
                writer.writerow(LOG_HEADER)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when or time.time()))
            writer.writerow([serial, stamp, detected])
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return serial


def _last_serial(fh: Any, size: int) -> int:
    if size == 0:
        return 0
    fh.seek(max(0, size - 4096))
    tail = fh.read().splitlines()
    for line in reversed(tail):
        first = line.split(",", 1)[0].strip().strip('"')  # quoted when formula-guarded
        if first.isdigit():
            return int(first)
    return 0


def log_result(ws: Workspace, result: OcrResult) -> int:
    detected = (
        result.code if result.valid and result.code else (f"InvalidCode ({result.raw})" if result.raw else "NoText")
    )
    return append_log(ws.root / ws.settings.ocr.log_csv, detected, guard=ws.settings.csv_formula_guard)


def push_result(url: str | None, payload: dict[str, Any], timeout: float) -> None:
    """POST the result to the configured URL; a failure is logged, never raised (the reading stands)."""
    if not url:
        return
    import urllib3

    try:
        urllib3.request(
            "POST", url, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"},
            timeout=urllib3.Timeout(total=timeout), retries=False,
        )  # fmt: skip
    except urllib3.exceptions.HTTPError as exc:
        log.warning("could not push the OCR result to %s: %s", url, exc)


# --- the job ------------------------------------------------------------------------------------------


def ocr_settings_hash(engine: str, model: str, recipe: Recipe | None, rules: OcrRules) -> str:
    parts = [engine, model if engine == "trocr" else "", recipe.settings_hash if recipe else None, rules.settings_hash]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def start_ocr(
    ws: Workspace,
    manager: JobManager,
    dataset: str,
    engine: str = "auto",
    recipe: str | Recipe | None = None,
    rules: str | OcrRules = "none",
) -> int:
    """Engine, recipe and rules are resolved and frozen into the job (errors now, not in the background).
    Recipe and rules are names (or objects the CLI read from a file the person at the shell named)."""
    engine = resolve_engine(engine, ws.settings)
    recipe_obj = load_recipe(ws.root, recipe) if isinstance(recipe, str) and recipe else recipe or None
    rules_obj = rules if isinstance(rules, OcrRules) else load_rules(ws.root, rules)
    dataset_id = require_images(ws, dataset)
    params = OcrParams(
        dataset=dataset,
        engine=engine,
        model=ws.settings.ocr.trocr_model,
        recipe=json.loads(recipe_obj.model_dump_json()) if recipe_obj else None,
        rules=json.loads(rules_obj.model_dump_json()),
        settings_hash=ocr_settings_hash(engine, ws.settings.ocr.trocr_model, recipe_obj, rules_obj),
        workers=0,  # engines hold models: one process, built once
        chunk_size=8,
    )
    title = (
        f"OCR: {dataset} with {engine}"
        + (f", recipe {recipe_obj.name}" if recipe_obj else "")
        + f", rules {rules_obj.name}"
    )
    return manager.create("ocr", title, params, dataset_id)


@dataclass(frozen=True)
class OcrOptions:
    workspace: str
    params_json: str
    journal_dir: str


class OcrParams(JobParams):
    """An OCR run: the engine, TrOCR model, recipe and rules frozen into the job, and their settings hash."""

    dataset: str
    engine: str
    model: str
    recipe: dict[str, Any] | None = None
    rules: dict[str, Any]
    settings_hash: str


class OcrTask(ImageStageTask):
    params_model: ClassVar[type[JobParams]] = OcrParams
    kind: ClassVar[str] = "ocr"
    holds_model: ClassVar[bool] = True
    # the recipe is frozen into the job: a retry meets the same crop box (run again with a recipe that fits)
    sticky_classes: ClassVar[frozenset[str]] = ImageStageTask.sticky_classes | {RecipeMisfitError.error_class}

    def done_stages(self, ws: Workspace, params: dict[str, Any]) -> list[tuple[str, str]]:
        return [(OCR_STAGE, OcrParams.model_validate(params).settings_hash)]

    def batch_work(self) -> Any:
        return ocr_batch

    def chunk_options(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> OcrOptions:
        stored = OcrParams.model_validate(params).model_dump_json(by_alias=True, exclude={EXECUTOR_KEY})
        return OcrOptions(str(ws.root), stored, str(ws.job_dir(job_id)))  # the executor is no parameter to send


def ocr_batch(
    items: list[tuple[str, str | None]], opts: OcrOptions, cancelled: Callable[[], bool]
) -> Iterator[ItemResult]:
    """Read each image of the chunk with the job's engine, recipe and rules."""
    from services.core.settings import load_settings

    params = OcrParams.model_validate_json(opts.params_json)
    ws = Workspace(Path(opts.workspace), load_settings(workspace=opts.workspace))
    settings = ws.settings.model_copy(update={"ocr": ws.settings.ocr.model_copy(update={"trocr_model": params.model})})
    recipe = parse_recipe(json.dumps(params.recipe)) if params.recipe else None
    rules = OcrRules.model_validate(params.rules)
    try:
        for image_hash, rel in items:
            if cancelled():
                return
            try:
                image = decode_bytes((ws.root / (rel or "")).read_bytes(), ws.settings.download.max_pixels)
                found = read_image(params.engine, settings, image, recipe, rules)
                data = found.to_dict()
                data["cord_space"] = "original" if recipe_keeps_geometry(recipe) else "preprocessed"
                summary = {"code": found.code, "valid": found.valid}
                result = ItemResult(
                    key=image_hash, status="ok", image_hash=image_hash, result=summary,
                    stages=[(OCR_STAGE, params.settings_hash, "ok", data, None)],
                )  # fmt: skip
                log_result(ws, found)
            except FileNotFoundError:
                result = _failed(image_hash, params, "missing", f"{rel} is gone from the workspace")
            except RecipeMisfitError as exc:  # the item's locator names the file; the reason stays readable
                result = _failed(image_hash, params, exc.error_class, str(exc))
            except ImageCheckError as exc:
                result = _failed(image_hash, params, exc.error_class, f"{rel}: {exc.message}")
            except (ValueError, OSError) as exc:
                result = _failed(image_hash, params, "not_image", f"{rel}: {exc}")
            yield result
    finally:
        ws.close()


def _failed(image_hash: str, params: OcrParams, error_class: str, message: str) -> ItemResult:
    return ItemResult(
        key=image_hash, status="failed", error_class=error_class, error_message=message, image_hash=image_hash,
        stages=[(OCR_STAGE, params.settings_hash, "failed", None, f"{error_class}: {message}")],
    )  # fmt: skip


def ocr_results(ws: Workspace, dataset: str, settings_hash: str) -> list[dict[str, Any]]:
    """Rows for the page and exports: image name, code, raw, valid, confidence, box."""
    from services.core.datasets import dataset_entries

    entries = dataset_entries(ws, dataset)
    out: list[dict[str, Any]] = []
    for start in range(0, len(entries), 500):
        part = entries[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = {
            r["image_hash"]: r
            for r in ws.catalog.query(
                f"""SELECT image_hash, status, result, error FROM stage_results
                    WHERE stage = ? AND settings_hash = ? AND image_hash IN ({marks})""",
                (OCR_STAGE, settings_hash, *[h for h, _, _ in part]),
            )
        }
        for image_hash, path, name in part:
            row = rows.get(image_hash)
            data = json.loads(row["result"]) if row is not None and row["result"] else {}
            out.append({
                "image": name, "hash": image_hash, "path": path, "code": data.get("code"), "raw": data.get("raw"),
                "valid": data.get("valid"), "confidence": data.get("confidence"), "cord": data.get("cord"),
                "error": row["error"] if row is not None else None,
            })  # fmt: skip
    return out


@dataclass(frozen=True)
class OcrReadings:
    """What the page shows of a dataset's readings: the first rows and the counts of all of them."""

    rows: list[dict[str, Any]]
    total: int  # images read (text found) or failed
    accepted: int
    failed: int


_READING_COUNTS: dict[tuple[str, int, str, int, int], tuple[int, int, int]] = {}  # by the stage's counters
_READING_COUNTS_LOCK = threading.Lock()


def ocr_readings(ws: Workspace, dataset: str, settings_hash: str, limit: int = 1000) -> OcrReadings:
    """The first `limit` images read or failed, in input order, and counts over all of them. The rows are read
    in input order from the dataset's images when most have readings, else from the readings; the counts (one
    pass over the readings) are kept in the process until the stage's counters for the dataset change."""
    from services.core.datasets import STORED_PATH, dataset_id_of, image_count, stage_count

    dataset_id = dataset_id_of(ws.catalog, dataset)
    read = """(json_extract(s.result, '$.raw') IS NOT NULL OR s.error IS NOT NULL)"""
    ok, failed = (stage_count(ws, dataset, OCR_STAGE, settings_hash, status) for status in ("ok", "failed"))
    key = (str(ws.catalog.path), dataset_id, settings_hash, ok, failed)
    with _READING_COUNTS_LOCK:
        counts = _READING_COUNTS.get(key)
    if counts is None:
        row = ws.catalog.conn.execute(
            f"""SELECT COUNT(*), COALESCE(SUM(json_extract(s.result, '$.valid') = 1), 0),
                       COALESCE(SUM(s.error IS NOT NULL), 0)
                FROM stage_results s CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = s.image_hash
                WHERE s.stage = ? AND s.settings_hash = ? AND {read}""",
            (dataset_id, OCR_STAGE, settings_hash),
        ).fetchone()
        counts = (int(row[0]), int(row[1]), int(row[2]))
        with _READING_COUNTS_LOCK:
            if len(_READING_COUNTS) > 256:
                _READING_COUNTS.clear()
            _READING_COUNTS[key] = counts
    if (ok + failed) * 4 >= image_count(ws, dataset):  # most images have readings: walk the images in order
        source = """dataset_members m JOIN stage_results s ON s.image_hash = m.image_hash AND s.stage = ?
                    AND s.settings_hash = ?"""
        params: tuple[object, ...] = (OCR_STAGE, settings_hash, dataset_id)
        where = "m.dataset_id = ?"
    else:  # few have: start from the readings
        source = """stage_results s CROSS JOIN dataset_members m ON m.dataset_id = ? AND m.image_hash = s.image_hash"""
        params = (dataset_id, OCR_STAGE, settings_hash)
        where = "s.stage = ? AND s.settings_hash = ?"
    rows = ws.catalog.query(
        f"""SELECT m.image_hash, m.name, s.result, s.error, {STORED_PATH} AS path
            FROM {source} JOIN images i ON i.hash = m.image_hash WHERE {where} AND {read}
            ORDER BY m.seq LIMIT ?""",
        (*params, limit),
    )
    out = []
    for r in rows:
        data = json.loads(r["result"]) if r["result"] else {}
        out.append({
            "image": r["name"], "hash": r["image_hash"], "path": r["path"], "code": data.get("code"),
            "raw": data.get("raw"), "valid": data.get("valid"), "confidence": data.get("confidence"),
            "cord": data.get("cord"), "error": r["error"],
        })  # fmt: skip
    return OcrReadings(out, *counts)


# --- one image from a device (REST, socket) ---------------------------------------------------------


@dataclass(frozen=True)
class OcrSetup:
    """Engine, recipe and rules resolved once for a server (the engine itself is built on first use)."""

    engine: str
    recipe: Recipe | None
    rules: OcrRules

    @classmethod
    def resolve(
        cls,
        ws: Workspace,
        engine: str | None = None,
        recipe: str | Recipe | None = None,
        rules: str | OcrRules | None = None,
    ) -> OcrSetup:
        """Recipe and rules by name (what API clients send) or as objects; unset ones come from the settings,
        where the administrator may also name a rules file."""
        cfg = ws.settings.ocr
        if recipe is None:
            recipe = cfg.recipe
        if rules is None:
            rules = load_rules_arg(ws.root, cfg.rules)
        return cls(
            engine=resolve_engine(engine or cfg.engine, ws.settings),
            recipe=load_recipe(ws.root, recipe) if isinstance(recipe, str) and recipe else recipe or None,
            rules=rules if isinstance(rules, OcrRules) else load_rules(ws.root, rules),
        )


def ocr_bytes(ws: Workspace, data: bytes, setup: OcrSetup, max_pixels: int | None = None) -> dict[str, Any]:
    """Decode (at most `max_pixels`, default the download limit), read, apply the rules, log to the CSV, push if
    configured; the result with its log serial."""
    image = decode_bytes(data, max_pixels or ws.settings.download.max_pixels)
    found = read_image(setup.engine, ws.settings, image, setup.recipe, setup.rules, max_pixels or None)
    payload = found.to_dict()
    payload["cord_space"] = "original" if recipe_keeps_geometry(setup.recipe) else "preprocessed"
    payload["serial"] = log_result(ws, found)
    push_result(ws.settings.ocr.push_url, payload, ws.settings.ocr.push_timeout_seconds)
    return payload
