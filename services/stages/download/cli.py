"""`download urls|s3|batch|folder`: the Download stage's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import ExecutorOpt, RawCsvOpt, cli_workspace, fail, finish_job, param_option, say_error
from services.core.errors import WorkbenchError
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.jobs.params import JobParams, StoreParams

commands = typer.Typer()
download_app = typer.Typer(help="Fetch images from URL CSVs or S3 into the workspace.", no_args_is_help=True)
commands.add_typer(download_app, name="download")


@download_app.command("urls")
def download_urls(
    csv_path: Annotated[Path, typer.Argument(help="CSV with a URL column (extra columns are kept).")],
    dataset: Annotated[str, typer.Option(help="Dataset name in the workspace.")],
    url_column: Annotated[str, typer.Option(help="Column holding the image URL.")] = "image_link",
    kind: Annotated[
        str | None, typer.Option(help="Dataset kind (REAL, GEN, train, test...); guessed from the file name.")
    ] = None,
    resize: Annotated[int | None, param_option(StoreParams, "resize")] = None,
    workers: Annotated[int | None, param_option(JobParams, "workers")] = None,
    out: Annotated[Path | None, typer.Option(help="Labelled CSV to write when done.")] = None,
    placeholder: Annotated[bool, typer.Option(help="Store a black placeholder for failed rows (seed 000).")] = False,
    discard_originals: Annotated[bool, typer.Option(help="With --resize, keep only the resized copy.")] = False,
    background: Annotated[bool, typer.Option(help="Run detached; the dashboard shows progress.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Download every URL of a CSV once, store images by content hash, write a labelled CSV."""
    from services.stages.download.urls import start_url_download

    ws = cli_workspace()
    manager = JobManager(ws)
    job_id = start_url_download(
        ws,
        manager,
        csv_path,
        dataset,
        url_column=url_column,
        kind=kind,
        resize=resize,
        keep_originals=not discard_originals,
        placeholder=placeholder,
        workers=workers,
        out=out,
    )
    typer.echo(f"job {job_id} created for dataset {dataset!r}")
    finish_job(manager, job_id, background, executor, raw_csv)


def _print_analysis(summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        if isinstance(value, (list, dict)):
            if value:
                typer.echo(f"  {key}: {json.dumps(value)}")
        else:
            typer.echo(f"  {key}: {value}")


@download_app.command("s3")
def download_s3(
    csv_path: Annotated[
        Path | None, typer.Argument(help="CSV of file names, with or without a header (or --csv-file).")
    ] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv-file", help="Seeds 001/002's name for CSV_PATH.")] = None,
    bucket: Annotated[str | None, typer.Option(help="S3 bucket (default: download.s3_bucket setting).")] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", "--s3-prefix", help="Key prefix to list, e.g. datalake_training/GEN/.")
    ] = "",
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "--output-dir",
            help="Dataset name (default: the CSV's file name). The seeds' --output-dir: the folder they downloaded "
            "into is the dataset here (REAL, GEN), which describe and compare then name.",
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Dataset kind; guessed from the file name (GEN_*, REAL_*).")] = None,
    auto_confirm: Annotated[
        bool, typer.Option("--auto-confirm", help="Skip the y/n prompt after the analysis.")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint (MinIO, R2, moto...).")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Force header detection.")] = None,
    name_column: Annotated[
        str | None, typer.Option(help="Column with the file names (when there is a header).")
    ] = None,
    resize: Annotated[int | None, param_option(StoreParams, "resize")] = None,
    workers: Annotated[int | None, param_option(JobParams, "workers")] = None,
    out: Annotated[Path | None, typer.Option(help="Labelled CSV to write when done.")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Analyse a file list against an S3 prefix, confirm, then download the matches."""
    if csv_path is not None and csv_file is not None:
        fail("name the CSV of file names once: as CSV_PATH or with --csv-file")
    csv_path = csv_path if csv_path is not None else csv_file
    if csv_path is None:
        fail("no CSV of file names: pass CSV_PATH (or --csv-file)")
    if dataset is not None and ("/" in dataset.rstrip("/") or "\\" in dataset):
        fail(f"--dataset/--output-dir {dataset!r}: a dataset name, not a path (the images go into the workspace)")
    dataset = dataset.rstrip("/") if dataset else None
    if kind is None and dataset and dataset.upper() in ("REAL", "GEN"):  # the seeds' REAL/ and GEN/ folders
        kind = dataset.upper()
    ws = cli_workspace()
    bucket = bucket or ws.settings.download.s3_bucket
    if not bucket:
        fail("no bucket: pass --bucket or set WORKBENCH_DOWNLOAD__S3_BUCKET")
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
    from services.stages.download.s3 import analyze_s3, start_s3_download

    manager = JobManager(ws)
    analysis = analyze_s3(ws, csv_path, bucket, prefix, endpoint_url, header, name_column)
    typer.echo(f"Analysis of {csv_path.name}:")
    _print_analysis(analysis.summary())
    if analysis.available == 0:
        typer.echo("nothing to download")
    if not auto_confirm and not typer.confirm(f"Download {analysis.available} files into dataset {dataset!r}?"):
        typer.echo("not confirmed; nothing downloaded")
        return False
    job_id = start_s3_download(
        ws,
        manager,
        analysis,
        dataset,
        kind=kind,
        has_header=header,
        name_column=name_column,
        resize=resize,
        keep_originals=True,
        placeholder=False,
        workers=workers,
        out=out,
    )
    typer.echo(f"job {job_id} created for dataset {dataset!r}")
    finish_job(manager, job_id, background, executor, raw_csv)
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
    resize: Annotated[int | None, param_option(StoreParams, "resize")] = None,
    workers: Annotated[int | None, param_option(JobParams, "workers")] = None,
) -> None:
    """Every CSV in a drop folder becomes its own dataset, kind and prefix taken from its name."""
    from services.stages.download.s3 import plan_batch

    ws = cli_workspace()
    bucket = bucket or ws.settings.download.s3_bucket
    if not bucket:
        fail("no bucket: pass --bucket or set WORKBENCH_DOWNLOAD__S3_BUCKET")
    entries, skipped = plan_batch(drop_folder, prefix_template or ws.settings.download.s3_prefix_template)
    for path, reason in skipped:
        typer.echo(f"skipped {path.name}: {reason}")
    if not entries:
        fail(f"no KIND_name.csv files in {drop_folder}")
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
        except WorkbenchError as exc:
            say_error(f"{entry.csv_path.name}: {exc}")
            failed.append(entry.csv_path.name)
    if failed:
        fail(f"{len(failed)} of {len(entries)} files did not finish: {', '.join(failed)}", 1)


@download_app.command("folder")
def download_folder(
    folder: Annotated[Path, typer.Argument(help="Folder of images; sub-folder names become tags.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the folder's name).")] = None,
    kind: Annotated[str, typer.Option(help="Dataset kind.")] = "folder",
    workers: Annotated[int | None, param_option(JobParams, "workers")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Import a local folder of images into the workspace as a dataset (stored once per content hash)."""
    from services.stages.download.folder_import import start_folder_import

    ws = cli_workspace()
    manager = JobManager(ws)
    job_id = start_folder_import(ws, manager, folder, dataset, kind=kind, workers=workers)
    typer.echo(f"job {job_id} created for dataset {dataset or folder.resolve().name!r}")
    finish_job(manager, job_id, background, executor, raw_csv)
