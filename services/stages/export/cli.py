"""The export stage's command: `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import cli_workspace, fail, finish_job, param_option
from services.jobs.manager import JobManager
from services.stages.export.stage import FORMATS, ExportParams

commands = typer.Typer()


@commands.command("export")
def export(
    dataset: Annotated[str, typer.Option(help="Dataset to export.")],
    fmt: Annotated[str, typer.Option("--format", help=f"{', '.join(FORMATS)}.")],
    out: Annotated[Path, typer.Option(help="Folder to write into (made if missing; an earlier export there resumes).")],
    by: Annotated[
        str, typer.Option(help="The label: tag (the folder each image was imported from), column:NAME, or none.")
    ] = "tag",
    shard_size: Annotated[int, param_option(ExportParams, "shard_size")] = 1000,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option(help="With --format hf: then publish it as this Hub dataset (OWNER/NAME; token: HF_TOKEN)."),
    ] = None,
    public: Annotated[bool, typer.Option(help="With --push-to-hub: a public repository (default private).")] = False,
    include_dropped: Annotated[
        bool, typer.Option(help="Also export images chosen to drop as near-duplicates (`duplicates --drop-extras`).")
    ] = False,
) -> None:
    """Write a dataset for the next tool: ImageFolder folders, Hugging Face Parquet (`datasets.load_dataset(OUT)`)
    or WebDataset tar shards. The stored files leave byte for byte, with their labels, input columns and scores."""
    from services.stages.export.stage import start_export

    if push_to_hub is not None and (fmt != "hf" or background):
        fail("--push-to-hub publishes a Hugging Face export: use it with --format hf, in the foreground")
    ws = cli_workspace()
    manager = JobManager(ws)
    job_id = start_export(ws, manager, dataset, fmt, out, by=by, shard_size=shard_size, include_dropped=include_dropped)
    typer.echo(f"job {job_id} created: export {dataset!r} as {fmt} into {out}")
    finish_job(manager, job_id, background)
    if push_to_hub is not None and manager.progress(job_id).state == "completed":
        from services.stages.export.hub import push_to_hub as publish

        typer.echo(f"published: {publish(out, push_to_hub, private=not public)}")
