"""`python -m services [--workspace DIR] <command>` (or `workbench`): every action the pages offer, for headless
boxes and cron. This module assembles the root app: the global options, the job, dataset and workspace
commands, and each stage's command set (`services/stages/<stage>/cli.py`) merged in.

Jobs run in the foreground with a progress bar (Ctrl+C stops them cleanly; `jobs resume` continues), or
detached with `--background`, in which case the dashboard and `jobs list` show their progress.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from services.cli import models as models_cli
from services.cli import server as server_cli
from services.cli.common import (
    RawCsvOpt,
    _state,
    cli_debug,
    cli_workspace,
    cli_workspace_root,
    csv_guard,
    fail,
    finish_job,
    format_progress,
    job_progress,
    root_options,
)
from services.cli.errors import OneLineErrors
from services.core.datasets import export_labelled_csv, list_datasets
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobError, JobManager
from services.stages.classify import cli as classify_cli
from services.stages.clusters import cli as clusters_cli
from services.stages.compare import cli as compare_cli
from services.stages.describe import cli as describe_cli
from services.stages.download import cli as download_cli
from services.stages.embed import cli as embed_cli
from services.stages.explore import cli as explore_cli
from services.stages.export import cli as export_cli
from services.stages.ocr import cli as ocr_cli
from services.stages.preprocess import cli as preprocess_cli
from services.stages.train import cli as train_cli

__all__ = ["app", "cli_debug", "cli_workspace_root"]

app = typer.Typer(
    cls=OneLineErrors,
    help="Image-dataset workbench: download, preprocess, describe, embed, classify, compare.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold keys and tokens; tracebacks show only with --debug
)
app.callback()(root_options)
jobs_app = typer.Typer(help="List, resume, retry, cancel and export jobs.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets in the workspace.", no_args_is_help=True)
workspace_app = typer.Typer(help="The workspace folder.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(datasets_app, name="datasets")
app.add_typer(workspace_app, name="workspace")

# Each stage's commands, in the order `--help` lists them.
for command_set in (
    download_cli.commands,
    preprocess_cli.commands,
    describe_cli.commands,
    embed_cli.commands,
    train_cli.commands,
    classify_cli.commands,
    ocr_cli.commands,
    compare_cli.commands,
    clusters_cli.commands,
    export_cli.commands,
    explore_cli.commands,
    models_cli.commands,
    server_cli.commands,
):
    app.registered_commands.extend(command_set.registered_commands)
    app.registered_groups.extend(command_set.registered_groups)


# --- jobs -------------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(limit: Annotated[int, typer.Option(help="How many of the newest jobs.")] = 20) -> None:
    """Jobs, newest first, with progress."""
    jobs = JobManager(cli_workspace()).list(limit=limit)
    if not jobs:
        typer.echo("no jobs yet")
    for p in jobs:
        typer.echo(f"{format_progress(p)}  {p.title}")


@jobs_app.command("show")
def jobs_show(job_id: int, failures: Annotated[int, typer.Option(help="How many failures to list.")] = 10) -> None:
    """One job: progress, failure classes, the first failures, its log file."""
    manager = JobManager(cli_workspace())
    p = job_progress(manager, job_id)
    typer.echo(format_progress(p))
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
    manager = JobManager(cli_workspace())
    if job_progress(manager, job_id).state == "running":
        fail(f"job {job_id} is running already")
    finish_job(manager, job_id, background)


@jobs_app.command("retry-failed")
def jobs_retry_failed(job_id: int, background: Annotated[bool, typer.Option(help="Run detached.")] = False) -> None:
    """Run only the failed items of a job again."""
    manager = JobManager(cli_workspace())
    count = manager.reset_failed(job_id)
    typer.echo(f"{count} failed items of job {job_id} queued again")
    finish_job(manager, job_id, background)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: int, wait: Annotated[float, typer.Option(help="Seconds to wait for it to stop.")] = 0.0
) -> None:
    """Stop a job after the items in flight; `jobs resume` continues it later."""
    manager = JobManager(cli_workspace())
    try:
        p = manager.cancel(job_id)
        if wait > 0 and p.state == "running":
            p = manager.wait(job_id, timeout=wait)
    except (JobError, TimeoutError) as exc:
        fail(str(exc))
    typer.echo(f"job {job_id}: {'stopping' if p.state == 'running' else p.state}")


@jobs_app.command("run", hidden=True)
def jobs_run(job_id: int) -> None:
    """Run a job in this process (what `--background` launches)."""
    manager = JobManager(cli_workspace())
    p = manager.run(job_id)
    typer.echo(format_progress(p))
    if p.state == "failed":
        raise typer.Exit(1)


@jobs_app.command("export")
def jobs_export(
    job_id: int, out: Annotated[Path, typer.Option(help="CSV file to write.")], raw_csv: RawCsvOpt = False
) -> None:
    """Write the labelled CSV of a download job (all input columns + image_path, image_hash, status, error)."""
    ws = cli_workspace()
    manager = JobManager(ws)
    p = job_progress(manager, job_id)
    if p.dataset_id is None:
        fail(f"job {job_id} has no dataset to export")
    variant = f"border-{p.params['resize']}" if p.params.get("resize") else None
    n = export_labelled_csv(ws.catalog, ws.root, p.dataset_id, job_id, out, variant, guard=csv_guard(raw_csv),
                            unit_map=ws.settings.labels.entity_unit_map)  # fmt: skip
    typer.echo(f"{n} rows written to {out}")


# --- datasets and workspace -------------------------------------------------------------------------


@datasets_app.command("list")
def datasets_list() -> None:
    """Datasets with their row and image counts."""
    rows = list_datasets(cli_workspace().catalog)
    if not rows:
        typer.echo("no datasets yet")
    for d in rows:
        typer.echo(f"{d.name}\tkind={d.kind}\trows={d.rows}\timages={d.images}\tsource={d.source}")


@workspace_app.command("info")
def workspace_info() -> None:
    """Where the workspace is and what it holds."""
    ws = cli_workspace()
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
    from services.core.catalog import CatalogError
    from services.core.workspace import set_aside_catalog

    settings = load_settings(workspace=_state.get("workspace"))
    root = settings.workspace.expanduser().resolve()
    try:
        Workspace(root, settings).close()
    except CatalogError as exc:
        typer.echo(f"problem: {exc}")
    else:
        fail(f"the catalog of {root} opens fine; nothing was changed")
    if not yes and not typer.confirm(f"Set the old catalog aside and start a new, empty one in {root}?"):
        fail("not confirmed; nothing was changed", 1)
    for moved in set_aside_catalog(root):
        typer.echo(f"kept the old file as {moved}")
    Workspace(root, settings, allow_new_catalog=True).close()
    typer.echo(f"new catalog: {root / 'catalog.sqlite'}")


def main() -> None:
    """The `workbench` command (and `python -m services`): the app, with errors ended as one line."""
    from services.cli.errors import run_cli

    run_cli(app, cli_debug, cli_workspace_root)
