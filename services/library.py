"""The workbench from Python (notebooks, scripts): a few calls that wrap the services the pages and CLI use.

    from services.library import open_workspace, run, classify_main, list_models
    ws = open_workspace("workspace")
    run(ws, start_embed(ws, JobManager(ws), "pets", ClipSpec.from_settings(ws.settings)))

Seed 004's helpers keep their names: `list_models`, `generate_model_path`, `classify_main`. Every job started
here is the same resumable job the dashboard shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager, JobProgress
from services.stages.classify.stage import classification, export_dir, resolve_models, start_classify
from services.stages.train.models import TagModel, generate_model_path
from services.stages.train.models import list_models as _list_models

__all__ = ["classify_main", "generate_model_path", "list_models", "open_workspace", "run"]


def open_workspace(path: str | Path = "workspace", **settings: Any) -> Workspace:
    """The workspace at `path` with settings from the environment and config files, plus `settings` overrides."""
    return Workspace(Path(path), load_settings(workspace=str(path), **settings))


def run(ws: Workspace, job_id: int) -> JobProgress:
    """Run (or resume) a job here until it ends; raises if it failed."""
    progress = JobManager(ws).run(job_id)
    if progress.state == "failed":
        raise RuntimeError(f"job {job_id} failed: {progress.error}")
    return progress


def list_models(ws: Workspace, dataset: str | None = None) -> list[TagModel]:
    """Seed 004's `list_models`: every trained per-tag model (with its manifest and metrics)."""
    return _list_models(ws, dataset)


def classify_main(
    ws: Workspace, source: str | Path, models: Path | None = None, bins: int = 10, output_dir: Path | None = None,
    trained_on: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Seed 004's `classify_main`: every model on a folder, zip or dataset; returns the scores as a dict."""
    chosen = resolve_models(ws, models, trained_on)
    manager = JobManager(ws)
    job_id = start_classify(ws, manager, str(source), chosen, bins=bins, out=output_dir)
    progress = run(ws, job_id)
    result = classification(ws, progress.params["dataset"], chosen)
    return {
        "dataset": progress.params["dataset"],
        "models": result.stacked.names,
        "images": result.names,
        "scores": result.scores,
        "outputs": str(output_dir or export_dir(ws, progress.params["dataset"], job_id)),
    }
