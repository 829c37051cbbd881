"""CLI for the Classify stage and the REST API: `classify`, `api`.

Merged into the root app by `services.cli.app`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import ExecutorOpt, RawCsvOpt, cli_workspace, finish_job, param_option
from services.jobs.manager import JobManager
from services.stages.classify.stage import ClassifyParams

commands = typer.Typer()


@commands.command("classify")
def classify(
    source: Annotated[str, typer.Argument(help="An image, a folder, a zip (nested zips read too), or a dataset name.")],
    models: Annotated[
        Path | None, typer.Option("--models", "--model", help="Folder of models (or one .skops); default: all trained.")
    ] = None,
    trained_on: Annotated[str | None, typer.Option(help="Only models trained on this dataset.")] = None,
    bins: Annotated[int, param_option(ClassifyParams, "bins", "Seed 004's output_bins.", ("--output_bins",))] = 10,
    out: Annotated[
        Path | None, typer.Option("--out", "--output", help="Where bins.json, scores.csv and output.json go.")
    ] = None,
    copy: Annotated[bool, typer.Option(help="Copy images into OUT/{type}/{tag}/{bin}/ folders.")] = False,
    dataset: Annotated[str | None, typer.Option(help="Name for the imported images (default classify-NAME).")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Every model on every image in one vectorised pass; stored vectors are reused, new images embedded."""
    from services.stages.classify.stage import export_dir, resolve_models, start_classify

    ws = cli_workspace()
    manager = JobManager(ws)
    chosen = resolve_models(ws, models, trained_on)
    job_id = start_classify(ws, manager, source, chosen, bins=bins, out=out, copy=copy, dataset=dataset)
    typer.echo(f"job {job_id} created: {len(chosen)} models")
    finish_job(manager, job_id, background, executor, raw_csv)
    if not background:
        progress = manager.progress(job_id)
        where = out or export_dir(ws, progress.params["dataset"], job_id)
        typer.echo(f"outputs: {where}")
