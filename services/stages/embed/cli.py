"""CLI for the Embed stage: `import-tagged`, `embed`, `export-tagged`.

Merged into the root app by `services.cli.app`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import (
    CheckpointOpt,
    ExecutorOpt,
    ModelOpt,
    PretrainedOpt,
    cli_workspace,
    clip_spec,
    fail,
    finish_job,
    param_option,
    run_foreground,
)
from services.io.clip_models import activation_note
from services.jobs.manager import JobManager
from services.jobs.params import ClipJobParams

commands = typer.Typer()


@commands.command("import-tagged")
def import_tagged(
    path: Annotated[Path | None, typer.Argument(help="Folder tree or zip (folder name = tag).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the folder or zip name).")] = None,
    metadata: Annotated[Path | None, typer.Option(help="Or seed 004's input-metadata.json.")] = None,
    tag_to_hash: Annotated[Path | None, typer.Option(help="With --metadata: the tag-to-image-hash JSON.")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """Store every image by content hash with its tags; zips (nested too) are read in place, never extracted."""
    from services.stages.download.folder_import import start_folder_import
    from services.stages.embed.seed_json import metadata_only_count, start_seed_import, store_seed_vectors

    ws = cli_workspace()
    manager = JobManager(ws)
    if (path is None) == (metadata is None):
        fail("give a PATH (folder or zip) or --metadata FILE")
    if metadata is not None and background:
        fail("--metadata runs in the foreground: its vectors are stored when the import ends")
    if metadata is not None:
        job_id = start_seed_import(ws, manager, metadata, tag_to_hash, dataset or metadata.stem)
    else:
        job_id = start_folder_import(ws, manager, path, dataset)  # type: ignore[arg-type]
    typer.echo(f"job {job_id} created")
    if metadata is not None:
        progress = run_foreground(manager, job_id)
        typer.echo(f"job {job_id} [{progress.state}] {progress.done} ok, {progress.failed} failed")
        for key, n in store_seed_vectors(ws, job_id, metadata).items():
            typer.echo(f"{n} vectors stored for {key}")
        absent = metadata_only_count(ws, job_id)
        if absent:
            typer.echo(
                f"{absent} entries without their image file here: kept as metadata-only images (their tags and "
                "vectors train tag models; stages that read image files skip them)"
            )
        return
    finish_job(manager, job_id, background)


@commands.command("embed")
def embed(
    dataset: Annotated[str, typer.Option(help="Dataset to embed.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    batch_size: Annotated[int | None, param_option(ClipJobParams, "batch_size")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    loader_workers: Annotated[int | None, param_option(ClipJobParams, "loader_workers")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
) -> None:
    """CLIP vectors for every image not yet embedded with this model; local weights only."""
    from services.stages.embed.stage import start_embed

    ws = cli_workspace()
    manager = JobManager(ws)
    spec = clip_spec(model, pretrained, checkpoint, device)
    job_id = start_embed(ws, manager, dataset, spec, batch_size, loader_workers)
    typer.echo(f"job {job_id} created: embed {dataset!r} with {spec.label}")
    note = activation_note(spec)
    if note:
        typer.echo(f"note: {note}")
    finish_job(manager, job_id, background, executor)


@commands.command("export-tagged")
def export_tagged(
    dataset: Annotated[str, typer.Option(help="Tagged dataset to export.")],
    out: Annotated[Path, typer.Option(help="Folder for input-metadata.json and input-tag-to-image-hash-list.json.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    vectors: Annotated[bool, typer.Option(help="Include each image's vector.")] = True,
) -> None:
    """Seed 004's metadata and tag-to-hash JSON files for a dataset."""
    from services.io.embedding_store import embedding_key
    from services.stages.embed.seed_json import export_seed_json

    key = embedding_key(clip_spec(model, pretrained, checkpoint)) if vectors else None
    meta, tags_file, n = export_seed_json(cli_workspace(), dataset, key, out)
    typer.echo(f"{n} images: {meta}, {tags_file}")
