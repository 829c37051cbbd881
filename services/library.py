"""The workbench from Python (notebooks, scripts): a few calls that wrap the services the pages and CLI use.

    from services.library import open_workspace, run, classify_main, list_models
    ws = open_workspace("workspace")
    run(ws, start_embed(ws, JobManager(ws), "pets", ClipSpec.from_settings(ws.settings)))

Seed 004's helpers keep their names: `list_models`, `generate_model_path`, `classify_main`. Called with a
workspace first they answer as below; called as the seed called them (a model folder first, or
`classify_main(folder_path=..., model_path=...)`) they answer as the seed did (`services.compat.seed004`).
Every job started here is the same resumable job the dashboard shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.compat import seed004
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager, JobProgress
from services.stages.classify.stage import classification, export_dir, resolve_models, start_classify
from services.stages.train.models import TagModel
from services.stages.train.models import generate_model_path as _generate_model_path
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


def list_models(ws: Workspace | str | Path, dataset: str | None = None) -> list[TagModel] | None:
    """Seed 004's `list_models`: every trained per-tag model (with its manifest and metrics); given a folder
    instead of a workspace, the seed's printed listing (and None)."""
    if not isinstance(ws, Workspace):
        seed004.list_models(ws)
        return None
    return _list_models(ws, dataset)


def generate_model_path(ws: Workspace | str | Path, *args: Any, **kwargs: Any) -> Path | str | None:
    """`generate_model_path(ws, dataset, embedding_key, model_type, tag)`: where that model's file goes; or, as
    the seed called it, `generate_model_path(folder, model_type=..., tag_name=...)`: the file's path or None."""
    if not isinstance(ws, Workspace):
        return seed004.generate_model_path(ws, *args, **kwargs)
    return _generate_model_path(ws, *args, **kwargs)


def classify_main(
    ws: Workspace | str | Path | None = None, source: str | Path | None = None, models: Path | None = None,
    bins: int = 10, output_dir: Path | None = None, trained_on: str | None = None, **seed_call: Any,
) -> dict[str, Any] | None:  # fmt: skip
    """Seed 004's `classify_main`: every model on a folder, zip or dataset; returns the scores as a dict. Called
    as the seed called it (`folder_path=`, `output_dir=`, `json_file_path=`, `bins_number=`, `model_path=`, or
    those five in that order), it runs as the seed's did and returns None."""
    if not isinstance(ws, Workspace):
        if ws is not None:  # the seed's positional order: folder_path, output_dir, json_file_path, bins_number, ...
            seed_call.setdefault("folder_path", ws)
            for name, value in (("output_dir", source), ("json_file_path", models), ("model_path", output_dir)):
                if value is not None:
                    seed_call.setdefault(name, value)
            seed_call.setdefault("bins_number", bins)
        else:
            seed_call.setdefault("bins_number", bins)
            if output_dir is not None:
                seed_call.setdefault("output_dir", output_dir)
        seed004.classify_main(**seed_call)
        return None
    if source is None:
        raise TypeError("classify_main(ws, source, ...): the folder, zip or dataset to classify is missing")
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
