"""`python -m services [--workspace DIR] <command>`: every action the pages offer, for headless boxes and cron.

Jobs run in the foreground with a progress bar (Ctrl+C stops them cleanly; `jobs resume` continues), or
detached with `--background`, in which case the dashboard and `jobs list` show their progress.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from tqdm import tqdm

from services.datasets import DatasetError, export_labelled_csv, list_datasets
from services.jobs import JobError, JobManager, JobProgress
from services.s3_client import S3AccessError
from services.settings import load_settings
from services.workspace import Workspace

app = typer.Typer(
    help="Image-dataset workbench: download, preprocess, describe, embed, classify, compare.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold keys and tokens; tracebacks show only with --debug
)
download_app = typer.Typer(help="Fetch images from URL CSVs or S3 into the workspace.", no_args_is_help=True)
jobs_app = typer.Typer(help="List, resume, retry, cancel and export jobs.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets in the workspace.", no_args_is_help=True)
workspace_app = typer.Typer(help="The workspace folder.", no_args_is_help=True)
app.add_typer(download_app, name="download")
app.add_typer(jobs_app, name="jobs")
app.add_typer(datasets_app, name="datasets")
recipes_app = typer.Typer(help="Preprocessing recipes (presets and the workspace's own).", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(recipes_app, name="recipes")

_state: dict[str, Any] = {}


@app.callback()
def main(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace folder (default: $WORKBENCH_WORKSPACE or ./workspace)."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (it is always in logs/cli.log).")
    ] = False,
) -> None:
    _state["workspace"] = workspace
    _state["debug"] = debug


def cli_debug() -> bool:
    """Whether `--debug` was given (read by the entry point's error handler)."""
    return bool(_state.get("debug"))


def cli_workspace_root() -> Path | None:
    """The workspace this command used or named, for the error log (None if it cannot be told)."""
    if "ws" in _state:
        return Path(_state["ws"].root)
    try:
        return load_settings(workspace=_state.get("workspace")).workspace.expanduser().resolve()
    except Exception:
        return None


def _ws() -> Workspace:
    if "ws" not in _state:
        settings = load_settings(workspace=_state.get("workspace"))
        _state["ws"] = Workspace.open(settings.workspace, settings)
    return _state["ws"]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _job(manager: JobManager, job_id: int) -> JobProgress:
    """The job's progress, or exit 2 with a clear message if there is no such job."""
    try:
        return manager.progress(job_id)
    except JobError as exc:
        _fail(str(exc))


def _format_progress(p: JobProgress) -> str:
    eta = f", ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
    return f"job {p.id} [{p.state}] {p.done} ok, {p.failed} failed, {p.total} total, {p.rate:.1f}/s{eta}"


def _run_foreground(manager: JobManager, job_id: int) -> JobProgress:
    bar = tqdm(total=0, unit="img", desc=f"job {job_id}", dynamic_ncols=True, file=sys.stderr)

    def on_progress(p: JobProgress) -> None:
        bar.total = p.total
        bar.n = p.done + p.failed
        bar.set_postfix(ok=p.done, failed=p.failed, refresh=False)
        bar.refresh()

    try:
        result = manager.run(job_id, on_progress=on_progress)
    finally:
        bar.close()
    return result


ExecutorOpt = Annotated[
    str | None, typer.Option(help="local (default) or dask://HOST:PORT: run the chunks on a Dask cluster.")
]
RawCsvOpt = Annotated[
    bool,
    typer.Option(
        "--raw-csv", help="Write CSV cells as they are, without the spreadsheet formula guard (machine consumers)."
    ),
]


def _csv_guard(raw_csv: bool) -> bool:
    """Whether this command's CSVs are formula-guarded: the setting, unless `--raw-csv` was given."""
    return not raw_csv and _ws().settings.csv_formula_guard


def _finish(
    manager: JobManager, job_id: int, background: bool, executor: str | None = None, raw_csv: bool = False
) -> None:
    """Run the job here (or detached) and report how it ended; exit 1 if it failed or was interrupted (disk
    full), 130 if cancelled. `raw_csv` is stored in the job, so a resumed run writes its CSVs the same way."""
    if raw_csv:
        from services.csv_safety import RAW_CSV_PARAM

        manager.update_params(job_id, {RAW_CSV_PARAM: True})
    if executor:
        from services.executors import ExecutorError

        try:
            manager.set_executor(job_id, executor)
        except ExecutorError as exc:
            _fail(str(exc))
    if background:
        pid = manager.start_background(job_id)
        typer.echo(f"job {job_id} started in the background (pid {pid}); follow it with `jobs show {job_id}`")
        return
    try:
        p = _run_foreground(manager, job_id)
    except JobError as exc:
        _fail(str(exc))
    typer.echo(_format_progress(p))
    counts = manager.failure_counts(job_id)
    if counts:
        typer.echo("failures by class: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if manager.retryable_failures(job_id):  # not for classes no retry can fix (a misfit recipe, a bad image)
            typer.echo(f"retry them with: python -m services jobs retry-failed {job_id}")
    if p.state == "completed" and p.kind.startswith("download"):
        from services.url_download import labelled_csv_path

        typer.echo(f"labelled CSV: {labelled_csv_path(manager.ws, job_id, p.params)}")
    if p.state == "failed":
        _fail(f"job {job_id} failed: {p.error}", 1)
    if p.state == "interrupted":
        _fail(f"job {job_id} interrupted: {p.error or 'its run stopped'}", 1)
    if p.state == "cancelled":
        typer.echo(f"job {job_id} cancelled; continue with `jobs resume {job_id}`")
        raise typer.Exit(130)


# --- download ---------------------------------------------------------------------------------------


@download_app.command("urls")
def download_urls(
    csv_path: Annotated[Path, typer.Argument(help="CSV with a URL column (extra columns are kept).")],
    dataset: Annotated[str, typer.Option(help="Dataset name in the workspace.")],
    url_column: Annotated[str, typer.Option(help="Column holding the image URL.")] = "image_link",
    kind: Annotated[
        str | None, typer.Option(help="Dataset kind (REAL, GEN, train, test...); guessed from the file name.")
    ] = None,
    resize: Annotated[int | None, typer.Option(help="Also store an N x N copy (aspect kept, padded).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (0 = in this process).")] = None,
    out: Annotated[Path | None, typer.Option(help="Labelled CSV to write when done.")] = None,
    placeholder: Annotated[bool, typer.Option(help="Store a black placeholder for failed rows (seed 000).")] = False,
    discard_originals: Annotated[bool, typer.Option(help="With --resize, keep only the resized copy.")] = False,
    background: Annotated[bool, typer.Option(help="Run detached; the dashboard shows progress.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Download every URL of a CSV once, store images by content hash, write a labelled CSV."""
    from services.url_download import start_url_download

    ws = _ws()
    manager = JobManager(ws)
    try:
        job_id = start_url_download(
            ws, manager, csv_path, dataset, url_column, kind, resize, not discard_originals, placeholder, workers, out
        )
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created for dataset {dataset!r}")
    _finish(manager, job_id, background, executor, raw_csv)


def _print_analysis(summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        if isinstance(value, (list, dict)):
            if value:
                typer.echo(f"  {key}: {json.dumps(value)}")
        else:
            typer.echo(f"  {key}: {value}")


@download_app.command("s3")
def download_s3(
    csv_path: Annotated[Path, typer.Argument(help="CSV of file names, with or without a header.")],
    bucket: Annotated[str | None, typer.Option(help="S3 bucket (default: download.s3_bucket setting).")] = None,
    prefix: Annotated[str, typer.Option(help="Key prefix to list, e.g. datalake_training/GEN/.")] = "",
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the CSV's file name).")] = None,
    kind: Annotated[str | None, typer.Option(help="Dataset kind; guessed from the file name (GEN_*, REAL_*).")] = None,
    auto_confirm: Annotated[
        bool, typer.Option("--auto-confirm", help="Skip the y/n prompt after the analysis.")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint (MinIO, R2, moto...).")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Force header detection.")] = None,
    name_column: Annotated[
        str | None, typer.Option(help="Column with the file names (when there is a header).")
    ] = None,
    resize: Annotated[int | None, typer.Option(help="Also store an N x N copy.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (0 = in this process).")] = None,
    out: Annotated[Path | None, typer.Option(help="Labelled CSV to write when done.")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Analyse a file list against an S3 prefix, confirm, then download the matches."""
    ws = _ws()
    bucket = bucket or ws.settings.download.s3_bucket
    if not bucket:
        _fail("no bucket: pass --bucket or set WORKBENCH_DOWNLOAD__S3_BUCKET")
    _download_s3_one(
        ws,
        csv_path,
        bucket,
        prefix,
        dataset or csv_path.stem,
        kind,
        auto_confirm,
        endpoint_url or ws.settings.download.s3_endpoint_url,
        header,
        name_column,
        resize,
        workers,
        out,
        background,
        executor,
        raw_csv,
    )


def _download_s3_one(
    ws: Workspace,
    csv_path: Path,
    bucket: str,
    prefix: str,
    dataset: str,
    kind: str | None,
    auto_confirm: bool,
    endpoint_url: str | None,
    header: bool | None,
    name_column: str | None,
    resize: int | None,
    workers: int | None,
    out: Path | None,
    background: bool,
    executor: str | None = None,
    raw_csv: bool = False,
) -> bool:
    from services.s3_download import analyze_s3, start_s3_download

    manager = JobManager(ws)
    try:
        analysis = analyze_s3(ws, csv_path, bucket, prefix, endpoint_url, header, name_column)
    except (DatasetError, S3AccessError) as exc:
        _fail(str(exc))
    typer.echo(f"Analysis of {csv_path.name}:")
    _print_analysis(analysis.summary())
    if analysis.available == 0:
        typer.echo("nothing to download")
    if not auto_confirm and not typer.confirm(f"Download {analysis.available} files into dataset {dataset!r}?"):
        typer.echo("not confirmed; nothing downloaded")
        return False
    try:
        job_id = start_s3_download(
            ws, manager, analysis, dataset, kind, header, name_column, resize, True, False, workers, out
        )
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created for dataset {dataset!r}")
    _finish(manager, job_id, background, executor, raw_csv)
    return True


@download_app.command("batch")
def download_batch(
    drop_folder: Annotated[Path, typer.Argument(help="Folder of KIND_name.csv files (seed 002's to_download/).")],
    bucket: Annotated[str | None, typer.Option(help="S3 bucket (default: download.s3_bucket setting).")] = None,
    prefix_template: Annotated[
        str | None, typer.Option(help="Prefix per kind, default datalake_training/{KIND}/.")
    ] = None,
    auto_confirm: Annotated[bool, typer.Option("--auto-confirm", help="Skip the prompt for each file.")] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint.")] = None,
    resize: Annotated[int | None, typer.Option(help="Also store an N x N copy.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Every CSV in a drop folder becomes its own dataset, kind and prefix taken from its name."""
    from services.s3_download import plan_batch

    ws = _ws()
    bucket = bucket or ws.settings.download.s3_bucket
    if not bucket:
        _fail("no bucket: pass --bucket or set WORKBENCH_DOWNLOAD__S3_BUCKET")
    try:
        entries, skipped = plan_batch(drop_folder, prefix_template or ws.settings.download.s3_prefix_template)
    except DatasetError as exc:
        _fail(str(exc))
    for path, reason in skipped:
        typer.echo(f"skipped {path.name}: {reason}")
    if not entries:
        _fail(f"no KIND_name.csv files in {drop_folder}")
    failed: list[str] = []
    for entry in entries:
        typer.echo(
            f"\n== {entry.csv_path.name}: kind {entry.kind}, s3://{bucket}/{entry.prefix} -> dataset {entry.dataset}"
        )
        try:
            _download_s3_one(
                ws,
                entry.csv_path,
                bucket,
                entry.prefix,
                entry.dataset,
                entry.kind,
                auto_confirm,
                endpoint_url or ws.settings.download.s3_endpoint_url,
                None,
                None,
                resize,
                workers,
                None,
                False,
            )
        except typer.Exit as exc:  # one bad file does not stop the others
            if exc.exit_code not in (0, None):
                failed.append(entry.csv_path.name)
    if failed:
        _fail(f"{len(failed)} of {len(entries)} files did not finish: {', '.join(failed)}", 1)


@download_app.command("folder")
def download_folder(
    folder: Annotated[Path, typer.Argument(help="Folder of images; sub-folder names become tags.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the folder's name).")] = None,
    kind: Annotated[str, typer.Option(help="Dataset kind.")] = "folder",
    workers: Annotated[int | None, typer.Option(help="Worker processes (0 = in this process).")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Import a local folder of images into the workspace as a dataset (stored once per content hash)."""
    from services.folder_import import start_folder_import

    ws = _ws()
    manager = JobManager(ws)
    try:
        job_id = start_folder_import(ws, manager, folder, dataset, kind, workers)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created for dataset {dataset or folder.resolve().name!r}")
    _finish(manager, job_id, background, executor, raw_csv)


@app.command("preprocess")
def preprocess(
    recipe: Annotated[
        str, typer.Option(help="Recipe name: a preset (ocr-128, ocr-line) or one saved in the workspace.")
    ],
    dataset: Annotated[str | None, typer.Option(help="Dataset to preprocess.")] = None,
    folder: Annotated[Path | None, typer.Option(help="Or a folder: imported as a dataset first.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Run a recipe over every image of a dataset (or folder); skips images already done with the same recipe."""
    from services.folder_import import start_folder_import
    from services.preprocess import start_preprocess
    from services.recipes import RecipeError

    ws = _ws()
    manager = JobManager(ws)
    if (dataset is None) == (folder is None):
        _fail("give exactly one of --dataset or --folder")
    try:
        if folder is not None:
            dataset = dataset_name = folder.resolve().name
            import_job = start_folder_import(ws, manager, folder, dataset_name, workers=workers)
            typer.echo(f"importing {folder} as dataset {dataset_name!r} (job {import_job})")
            if _run_foreground(manager, import_job).state != "completed":
                _fail(f"import job {import_job} did not complete; see `jobs show {import_job}`", 1)
        job_id = start_preprocess(ws, manager, dataset or "", recipe, workers)
    except (DatasetError, RecipeError) as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created: recipe {recipe!r} over dataset {dataset!r}")
    _finish(manager, job_id, background, executor, raw_csv)


@recipes_app.command("list")
def recipes_list() -> None:
    """Recipe names with version, settings hash and description."""
    from services.recipes import is_builtin, list_recipes, load_recipe, recipe_versions

    ws = _ws()
    for name in list_recipes(ws.root):
        r = load_recipe(ws.root, name)
        kind = "built-in" if is_builtin(name) else f"{len(recipe_versions(ws.root, name))} saved version(s)"
        typer.echo(f"{r.name}\tv{r.version}\t{r.settings_hash[:10]}\t{len(r.ops)} ops\t{kind}\t{r.description}")


@recipes_app.command("show")
def recipes_show(
    name: str, version: Annotated[int | None, typer.Option(help="An older saved version (default: the latest).")] = None
) -> None:
    """A recipe as JSON (edit it and `recipes save` it back)."""
    from services.recipes import RecipeError, load_recipe

    try:
        typer.echo(load_recipe(_ws().root, name, version).model_dump_json(indent=2))
    except RecipeError as exc:
        _fail(str(exc))


@recipes_app.command("save")
def recipes_save(path: Annotated[Path, typer.Argument(help="Recipe JSON file.")]) -> None:
    """Validate and save a recipe into the workspace (its version goes up when its operations change)."""
    from services.recipes import RecipeError, parse_recipe, save_recipe

    try:
        recipe = save_recipe(_ws().root, parse_recipe(path.read_text(encoding="utf-8")))
    except (RecipeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"saved {recipe.name} v{recipe.version} ({recipe.settings_hash[:10]})")


# --- jobs -------------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(limit: Annotated[int, typer.Option(help="How many of the newest jobs.")] = 20) -> None:
    """Jobs, newest first, with progress."""
    jobs = JobManager(_ws()).list(limit=limit)
    if not jobs:
        typer.echo("no jobs yet")
    for p in jobs:
        typer.echo(f"{_format_progress(p)}  {p.title}")


@jobs_app.command("show")
def jobs_show(job_id: int, failures: Annotated[int, typer.Option(help="How many failures to list.")] = 10) -> None:
    """One job: progress, failure classes, the first failures, its log file."""
    manager = JobManager(_ws())
    p = _job(manager, job_id)
    typer.echo(_format_progress(p))
    typer.echo(f"title: {p.title}")
    if p.error:
        typer.echo(f"error: {p.error}")
    if p.log_path:
        typer.echo(f"log: {p.log_path}")
    counts = manager.failure_counts(job_id)
    if counts:
        typer.echo("failures by class: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        for f in manager.failures(job_id, failures):
            typer.echo(f"  {f['item_key']}: {f['error_class']}: {f['error_message']}")


@jobs_app.command("resume")
def jobs_resume(job_id: int, background: Annotated[bool, typer.Option(help="Run detached.")] = False) -> None:
    """Continue a cancelled, interrupted or failed job where it stopped."""
    manager = JobManager(_ws())
    if _job(manager, job_id).state == "running":
        _fail(f"job {job_id} is running already")
    _finish(manager, job_id, background)


@jobs_app.command("retry-failed")
def jobs_retry_failed(job_id: int, background: Annotated[bool, typer.Option(help="Run detached.")] = False) -> None:
    """Run only the failed items of a job again."""
    manager = JobManager(_ws())
    try:
        count = manager.reset_failed(job_id)
    except JobError as exc:
        _fail(str(exc))
    typer.echo(f"{count} failed items of job {job_id} queued again")
    _finish(manager, job_id, background)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: int, wait: Annotated[float, typer.Option(help="Seconds to wait for it to stop.")] = 0.0
) -> None:
    """Stop a job after the items in flight; `jobs resume` continues it later."""
    manager = JobManager(_ws())
    try:
        p = manager.cancel(job_id)
        if wait > 0 and p.state == "running":
            p = manager.wait(job_id, timeout=wait)
    except (JobError, TimeoutError) as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id}: {'stopping' if p.state == 'running' else p.state}")


@jobs_app.command("run", hidden=True)
def jobs_run(job_id: int) -> None:
    """Run a job in this process (what `--background` launches)."""
    manager = JobManager(_ws())
    try:
        p = manager.run(job_id)
    except JobError as exc:
        _fail(str(exc))
    typer.echo(_format_progress(p))
    if p.state == "failed":
        raise typer.Exit(1)


@jobs_app.command("export")
def jobs_export(
    job_id: int, out: Annotated[Path, typer.Option(help="CSV file to write.")], raw_csv: RawCsvOpt = False
) -> None:
    """Write the labelled CSV of a download job (all input columns + image_path, image_hash, status, error)."""
    ws = _ws()
    manager = JobManager(ws)
    p = _job(manager, job_id)
    if p.dataset_id is None:
        _fail(f"job {job_id} has no dataset to export")
    variant = f"border-{p.params['resize']}" if p.params.get("resize") else None
    n = export_labelled_csv(ws.catalog, ws.root, p.dataset_id, job_id, out, variant, guard=_csv_guard(raw_csv))
    typer.echo(f"{n} rows written to {out}")


# --- datasets and workspace -------------------------------------------------------------------------


@datasets_app.command("list")
def datasets_list() -> None:
    """Datasets with their row and image counts."""
    rows = list_datasets(_ws().catalog)
    if not rows:
        typer.echo("no datasets yet")
    for d in rows:
        typer.echo(f"{d.name}\tkind={d.kind}\trows={d.rows}\timages={d.images}\tsource={d.source}")


@workspace_app.command("info")
def workspace_info() -> None:
    """Where the workspace is and what it holds."""
    ws = _ws()
    info = ws.catalog.overview()
    typer.echo(f"workspace: {ws.root}")
    typer.echo(f"catalog schema: v{ws.catalog.schema_version}")
    for key, value in info.items():
        typer.echo(f"{key}: {value}")
    active = JobManager(ws).list(active_only=True)
    typer.echo(f"running jobs: {len(active)}")
    typer.echo(f"checked at {time.strftime('%Y-%m-%d %H:%M:%S')}")


@workspace_app.command("new-catalog")
def workspace_new_catalog(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Start a new, empty catalog where the old one is missing, empty or damaged (kept as
    catalog.sqlite.broken-TIME); then `download folder WORKSPACE/images` imports the stored images again."""
    from services.catalog import CatalogError
    from services.workspace import set_aside_catalog

    settings = load_settings(workspace=_state.get("workspace"))
    root = settings.workspace.expanduser().resolve()
    try:
        Workspace(root, settings).close()
    except CatalogError as exc:
        typer.echo(f"problem: {exc}")
    else:
        _fail(f"the catalog of {root} opens fine; nothing was changed")
    if not yes and not typer.confirm(f"Set the old catalog aside and start a new, empty one in {root}?"):
        _fail("not confirmed; nothing was changed", 1)
    for moved in set_aside_catalog(root):
        typer.echo(f"kept the old file as {moved}")
    Workspace(root, settings, allow_new_catalog=True).close()
    typer.echo(f"new catalog: {root / 'catalog.sqlite'}")


# Stage commands live in their own modules and register themselves on `app`.
from services import cli_classify, cli_compare, cli_describe, cli_embed, cli_models, cli_ocr, cli_server  # noqa: E402, F401
