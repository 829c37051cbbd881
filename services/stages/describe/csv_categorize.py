"""Seeds 001/002's `categorize_descriptions.py --input-csv`: a descriptions CSV (`image_name,description`, the
seeds' or this workbench's `describe-export`) categorised by Gemini from the text alone, without the images in the
workspace. A job over the file's rows (resumable, each request cached like the Describe job's), written as the
seeds' `image_name,description,categories` CSV, which `compare-import` and the Compare page read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from services.core import csv_safety
from services.core.errors import WorkbenchError
from services.core.names import file_name
from services.core.workspace import Workspace, write_atomic
from services.io.gemini_client import GeminiError, build_sdk_models
from services.jobs.job_context import ContextThreadPoolExecutor
from services.jobs.manager import ItemResult, JobManager, PendingItem, RunContext, dispatch_chunks
from services.jobs.params import JobParams, job_params
from services.jobs.stage import ChunkedTask, ResultLog
from services.stages.describe.categories import CategoryList
from services.stages.describe.stage import DescribeSettings, DescribeWorker, JobPlan

log = logging.getLogger(__name__)

KIND = "categorize_csv"
MAX_ROWS = 1_000_000
MAX_CSV_BYTES = 512 * 2**20
MAX_CELL_CHARS = 100_000
NAME_COLUMNS = ("image_name", "image", "filename", "file_name", "name")


class DescriptionsCsvError(WorkbenchError):
    """The descriptions CSV cannot be used; the message names the file, and the row or column."""

    error_class = "bad_csv"
    http_status = 422


class CsvCategorizeParams(JobParams, DescribeSettings):
    """The rows' file (a copy in the workspace), where the categorised CSV goes, and the frozen Gemini settings."""

    input_csv: str
    source_name: str
    output_csv: str
    concurrency: int | None = Field(default=None, ge=1, description="Requests in flight.")


def read_descriptions(data: bytes, filename: str) -> list[tuple[str, dict[str, Any]]]:
    """(image name, description) per row, in file order. A description cell holding a JSON object (the seeds'
    structured descriptions) is read as one; plain text becomes its summary."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DescriptionsCsvError(f"{filename}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows = csv_safety.dict_reader(io.StringIO(text, newline=""))
    header = {name.strip().lower(): name for name in rows.fieldnames or []}
    name_column = next((header[c] for c in NAME_COLUMNS if c in header), None)
    if name_column is None or "description" not in header:
        columns = ", ".join(header.values()) or "none"
        raise DescriptionsCsvError(f"{filename}: needs `image_name` and `description` columns (columns: {columns})")
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        for row in rows:
            if len(out) >= MAX_ROWS:
                raise DescriptionsCsvError(f"{filename}: more than {MAX_ROWS:,} rows; split the file")
            name = (row.get(name_column) or "").strip()
            cell = (row.get(header["description"]) or "").strip()
            if not name and not cell:
                continue
            if len(cell) > MAX_CELL_CHARS:
                raise DescriptionsCsvError(
                    f"{filename}, row {rows.line_num}: a description of {len(cell):,} characters (at most "
                    f"{MAX_CELL_CHARS:,})"
                )
            if not cell:
                raise DescriptionsCsvError(f"{filename}, row {rows.line_num} ({name}): empty description")
            out.append((name, _description(cell)))
    except (csv.Error, ValueError) as exc:  # broken quoting, a field over the csv module's limit
        raise DescriptionsCsvError(f"{filename}, row {rows.line_num}: {exc}") from None
    if not out:
        raise DescriptionsCsvError(f"{filename}: no rows")
    return out


def _description(cell: str) -> dict[str, Any]:
    if cell.startswith("{"):
        try:
            parsed = json.loads(cell)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed if parsed.get("summary") else {**parsed, "summary": cell[:2000]}
    return {"summary": cell}


def start_csv_categorize(
    ws: Workspace,
    manager: JobManager,
    input_csv: Path,
    output_csv: Path,
    category_list: CategoryList,
    concurrency: int | None = None,
) -> int:
    """Check the file now (errors name the row), keep a copy in the workspace, and create the job."""
    if input_csv.stat().st_size > MAX_CSV_BYTES:
        raise DescriptionsCsvError(f"{input_csv.name}: larger than {MAX_CSV_BYTES // 2**20} MB; split the file")
    return start_csv_categorize_upload(
        ws, manager, input_csv.read_bytes(), input_csv.name, category_list, output_csv=output_csv,
        concurrency=concurrency,
    )  # fmt: skip


def start_csv_categorize_upload(
    ws: Workspace,
    manager: JobManager,
    data: bytes,
    filename: str,
    category_list: CategoryList,
    *,
    output_csv: Path | None = None,
    concurrency: int | None = None,
) -> int:
    """The same job from a file's bytes (the Describe page's upload). Without an output path the categorised CSV
    goes to the workspace's `exports/`, named after the file and its content (`<stem>-categorized-<hash>.csv`)."""
    if len(data) > MAX_CSV_BYTES:
        raise DescriptionsCsvError(f"{filename}: larger than {MAX_CSV_BYTES // 2**20} MB; split the file")
    rows = read_descriptions(data, filename)
    digest = hashlib.sha256(data).hexdigest()[:16]
    copy = ws.root / "uploads" / f"descriptions-{digest}.csv"
    write_atomic(copy, data)
    if output_csv is None:
        output_csv = ws.root / "exports" / file_name(Path(filename).stem, f"-categorized-{digest[:8]}.csv")
    settings = ws.settings
    with job_params(KIND):
        params = CsvCategorizeParams(
            mode="categorize",
            model=settings.caption_model,
            image_max_size=settings.processing.image_max_size,
            list=(category_list.name, category_list.version),
            input_csv=str(copy),
            source_name=filename,
            output_csv=str(output_csv.expanduser().resolve()),
            concurrency=concurrency or settings.gemini.concurrency,
        )
    title = f"Categorize CSV: {filename}, {len(rows)} rows with {settings.caption_model} ({category_list.label})"
    return manager.create(KIND, title, params)


def categorized_csv(manager: JobManager, job_id: int) -> Path | None:
    """The CSV a completed job wrote, or None while it runs (or when the file was moved away)."""
    if manager.progress(job_id).state != "completed":
        return None
    out = Path(CsvCategorizeParams.model_validate(manager.params(job_id)).output_csv)
    return out if out.is_file() else None


class CsvCategorizeTask(ChunkedTask):
    params_model: ClassVar[type[JobParams]] = CsvCategorizeParams
    kind: ClassVar[str] = KIND
    fatal_classes: ClassVar[frozenset[str]] = frozenset({"config", "auth", "not_found", "connection"})

    def plan(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        """One item per distinct description (the same text in two rows is asked once), at its first row."""
        p = CsvCategorizeParams.model_validate(params)
        rows = read_descriptions(Path(p.input_csv).read_bytes(), p.source_name)
        first: dict[str, int] = {}
        for i, (_, description) in enumerate(rows):
            first.setdefault(description_key(description), i)
        JobManager(ws).add_items(job_id, [(key, str(i)) for key, i in first.items()])

    def process(
        self, ws: Workspace, job_id: int, params: dict[str, Any], items: Any, ctx: RunContext
    ) -> None:  # fmt: skip
        """Text requests in threads sharing one client, one budget and one cache (as the Describe job)."""
        p = CsvCategorizeParams.model_validate(params)
        rows = read_descriptions(Path(p.input_csv).read_bytes(), p.source_name)
        results = ResultLog(ws, job_id, ctx, unjournaled=self.fatal_classes)
        worker = DescribeWorker(ws, JobPlan.from_params(ws, params), results)
        concurrency = max(1, p.concurrency or ws.settings.gemini.concurrency)

        def run_chunk(chunk: list[PendingItem]) -> list[ItemResult]:
            done = []
            for item in chunk:
                if results.stopping:
                    break
                done.append(_categorize_row(worker, item.key, rows[int(item.locator or 0)][1]))
                results.journal(done[-1:])
            return done

        build_sdk_models()
        try:
            with ContextThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gemini") as pool:
                dispatch_chunks(
                    items, lambda chunk: pool.submit(run_chunk, chunk), ctx, chunk_size=1, max_in_flight=concurrency
                )
        finally:
            results.close()

    def finish(self, ws: Workspace, job_id: int, params: dict[str, Any]) -> None:
        """The categorised CSV, in the file's order; a row whose request failed says `(failed)`."""
        write_categorized(ws, job_id, CsvCategorizeParams.model_validate(params))


def description_key(description: dict[str, Any]) -> str:
    """An item's key: the description's content."""
    return "d" + hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _categorize_row(worker: DescribeWorker, key: str, description: dict[str, Any]) -> ItemResult:
    try:
        _, _, _, result, _ = worker.categorize_text("csv-row", description)  # cached by the description's text
    except GeminiError as exc:
        return ItemResult(key=key, status="failed", attempts=exc.attempts, error_class=exc.error_class,
                          error_message=exc.message)  # fmt: skip
    return ItemResult(key=key, status="ok", result={"categories": result["categories"]})


def write_categorized(ws: Workspace, job_id: int, p: CsvCategorizeParams) -> int:
    rows = read_descriptions(Path(p.input_csv).read_bytes(), p.source_name)
    answers: dict[str, str] = {}
    for r in ws.catalog.query("SELECT item_key, status, result FROM job_items WHERE job_id = ?", (job_id,)):
        if r["status"] == "ok" and r["result"]:
            answers[r["item_key"]] = ", ".join(json.loads(r["result"]).get("categories") or [])
        elif r["status"] == "failed":
            answers[r["item_key"]] = "(failed)"
    out = Path(p.output_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with csv_safety.open_for_write(out, csv_safety.guard_enabled(ws.settings, p.model_dump())) as writer:
        writer.writerow(["image_name", "description", "categories"])
        for name, description in rows:
            writer.writerow([name, description.get("summary", ""), answers.get(description_key(description), "")])
    return len(rows)
