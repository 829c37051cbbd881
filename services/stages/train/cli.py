"""CLI for the Train stage: `train` (one classifier per tag) and `tag-models` (what was trained, with metrics)."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.common import (
    CheckpointOpt,
    ModelOpt,
    PretrainedOpt,
    cli_workspace,
    clip_spec,
    finish_job,
    param_option,
)
from services.jobs.manager import JobManager
from services.stages.train.stage import TrainParams

commands = typer.Typer()


@commands.command("train")
def train(
    dataset: Annotated[str, typer.Option(help="Tagged dataset (embedded with the same model).")],
    tags: Annotated[str | None, typer.Option(help="Comma-separated tags (default: all but negatives).")] = None,
    types: Annotated[str, typer.Option(help="Model types: lr, svm or lr,svm.")] = "lr,svm",
    test_size: Annotated[
        float, param_option(TrainParams, "test_size", "Seed 004's --test_per.", ("--test_per",))
    ] = 0.1,
    seed: Annotated[int, param_option(TrainParams, "seed")] = 0,
    cv: Annotated[
        int | None, param_option(TrainParams, "cv_folds", "Default: 5 when a tag has under 30 tagged test images.")
    ] = None,
    threshold: Annotated[
        float | None, param_option(TrainParams, "threshold", "Default: the F1-best one on validation folds.")
    ] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """One logistic regression and one calibrated linear SVM per tag (standardised features, balanced
    classes, C and threshold chosen on validation folds), with metrics, 95% intervals and a report each."""
    from services.io.embedding_store import embedding_key
    from services.stages.train.stage import start_training

    ws = cli_workspace()
    manager = JobManager(ws)
    key = embedding_key(clip_spec(model, pretrained, checkpoint))
    job_id = start_training(
        ws, manager, dataset, key, tags=[t.strip() for t in tags.split(",")] if tags else None,
        types=[t.strip() for t in types.split(",") if t.strip()], test_size=test_size, seed=seed, cv_folds=cv,
        threshold=threshold,
    )  # fmt: skip
    typer.echo(f"job {job_id} created: train {dataset!r} on {key}")
    finish_job(manager, job_id, background)
    _print_models(dataset, key)


def _ci(interval: list[float] | None) -> str:
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def _print_models(dataset: str | None, key: str | None = None) -> None:
    """One line per model: the headline metrics (cross-validated when the test split was small) with their
    bootstrap 95% intervals, the threshold and where they come from; warnings on an indented line below."""
    from services.stages.train.models import headline_metrics, list_models

    warned = 0
    for m in list_models(cli_workspace(), dataset, key):
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


@commands.command("tag-models")
def tag_models(dataset: Annotated[str | None, typer.Option(help="Only this dataset's models.")] = None) -> None:
    """Trained per-tag models with their metrics and 95% intervals (seed 004's list_models)."""
    _print_models(dataset)
