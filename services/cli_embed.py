"""CLI for the Embed & Train stage: `import-tagged`, `embed`, `train`, `tag-models`, `export-tagged`.

Registered on the main app by `services.cli`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli import ExecutorOpt, _fail, _finish, _run_foreground, _ws, app
from services.clip_models import ClipSpec, ModelUnavailableError, activation_note
from services.datasets import DatasetError
from services.jobs import JobManager

ModelOpt = Annotated[str | None, typer.Option(help="open_clip model name (default from settings: ViT-B-32).")]
PretrainedOpt = Annotated[str | None, typer.Option(help="Pretrained tag (default from settings: openai).")]
CheckpointOpt = Annotated[Path | None, typer.Option(help="A local checkpoint file instead of a pretrained tag.")]


def _spec(model: str | None, pretrained: str | None, checkpoint: Path | None, device: str | None = None) -> ClipSpec:
    settings = _ws().settings
    return ClipSpec.from_settings(settings, model, pretrained, str(checkpoint) if checkpoint else None, device)


@app.command("import-tagged")
def import_tagged(
    path: Annotated[Path | None, typer.Argument(help="Folder tree or zip (folder name = tag).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (default: the folder or zip name).")] = None,
    metadata: Annotated[Path | None, typer.Option(help="Or seed 004's input-metadata.json.")] = None,
    tag_to_hash: Annotated[Path | None, typer.Option(help="With --metadata: the tag-to-image-hash JSON.")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """Store every image by content hash with its tags; zips (nested too) are read in place, never extracted."""
    from services.folder_import import start_folder_import
    from services.seed_json import start_seed_import, store_seed_vectors

    ws = _ws()
    manager = JobManager(ws)
    if (path is None) == (metadata is None):
        _fail("give a PATH (folder or zip) or --metadata FILE")
    try:
        if metadata is not None:
            job_id = start_seed_import(ws, manager, metadata, tag_to_hash, dataset or metadata.stem)
        else:
            job_id = start_folder_import(ws, manager, path, dataset)  # type: ignore[arg-type]
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created")
    if metadata is not None and not background:
        progress = _run_foreground(manager, job_id)
        typer.echo(f"job {job_id} [{progress.state}] {progress.done} ok, {progress.failed} failed")
        for key, n in store_seed_vectors(ws, job_id, metadata).items():
            typer.echo(f"{n} vectors stored for {key}")
        return
    _finish(manager, job_id, background)


@app.command("embed")
def embed(
    dataset: Annotated[str, typer.Option(help="Dataset to embed.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    loader_workers: Annotated[int | None, typer.Option(help="Processes decoding images for the model.")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
) -> None:
    """CLIP vectors for every image not yet embedded with this model; local weights only."""
    from services.embed import start_embed

    ws = _ws()
    manager = JobManager(ws)
    spec = _spec(model, pretrained, checkpoint, device)
    try:
        job_id = start_embed(ws, manager, dataset, spec, batch_size, loader_workers)
    except (DatasetError, ModelUnavailableError) as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created: embed {dataset!r} with {spec.label}")
    note = activation_note(spec)
    if note:
        typer.echo(f"note: {note}")
    _finish(manager, job_id, background, executor)


@app.command("train")
def train(
    dataset: Annotated[str, typer.Option(help="Tagged dataset (embedded with the same model).")],
    tags: Annotated[str | None, typer.Option(help="Comma-separated tags (default: all but negatives).")] = None,
    types: Annotated[str, typer.Option(help="Model types: lr, svm or lr,svm.")] = "lr,svm",
    test_size: Annotated[float, typer.Option(help="Fraction held out for testing.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Split and model seed.")] = 0,
    cv: Annotated[
        int | None,
        typer.Option(help="Cross-validation folds; default: 5 when a tag has under 30 tagged test images; 0: none."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Fixed decision threshold (default: the F1-best one on validation folds).")
    ] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """One logistic regression and one calibrated linear SVM per tag (standardised features, balanced
    classes, C and threshold chosen on validation folds), with metrics, 95% intervals and a report each."""
    from services.embeddings import embedding_key
    from services.tag_training import start_training

    ws = _ws()
    manager = JobManager(ws)
    key = embedding_key(_spec(model, pretrained, checkpoint))
    try:
        job_id = start_training(
            ws, manager, dataset, key, [t.strip() for t in tags.split(",")] if tags else None,
            [t.strip() for t in types.split(",") if t.strip()], test_size, seed, cv, threshold,
        )  # fmt: skip
    except (DatasetError, ModelUnavailableError) as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created: train {dataset!r} on {key}")
    _finish(manager, job_id, background)
    _print_models(dataset, key)


def _ci(interval: list[float] | None) -> str:
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def _print_models(dataset: str | None, key: str | None = None) -> None:
    """One line per model: the headline metrics (cross-validated when the test split was small) with their
    bootstrap 95% intervals, the threshold and where they come from; warnings on an indented line below."""
    from services.tag_models import headline_metrics, list_models

    warned = 0
    for m in list_models(_ws(), dataset, key):
        h = headline_metrics(m.manifest)
        typer.echo(
            f"{m.name}\tAP {h.average_precision:.3f}{_ci(h.ap_ci)}\tF1 {h.f1:.3f}{_ci(h.f1_ci)}\t"
            f"ROC AUC {h.roc_auc:.3f}\tthreshold {h.threshold:.3f}\t{h.source}, {h.n_positive} tagged\t{m.path}"
        )
        if h.warning:
            warned += 1
            typer.echo(f"  warning: {h.warning}")
    if warned:
        typer.echo(f"{warned} models with small test splits; intervals are bootstrap 95%")


@app.command("tag-models")
def tag_models(dataset: Annotated[str | None, typer.Option(help="Only this dataset's models.")] = None) -> None:
    """Trained per-tag models with their metrics and 95% intervals (seed 004's list_models)."""
    _print_models(dataset)


@app.command("export-tagged")
def export_tagged(
    dataset: Annotated[str, typer.Option(help="Tagged dataset to export.")],
    out: Annotated[Path, typer.Option(help="Folder for input-metadata.json and input-tag-to-image-hash-list.json.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    vectors: Annotated[bool, typer.Option(help="Include each image's vector.")] = True,
) -> None:
    """Seed 004's metadata and tag-to-hash JSON files for a dataset."""
    from services.embeddings import embedding_key
    from services.seed_json import export_seed_json

    key = embedding_key(_spec(model, pretrained, checkpoint)) if vectors else None
    try:
        meta, tags_file, n = export_seed_json(_ws(), dataset, key, out)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"{n} images: {meta}, {tags_file}")
