"""CLI for the Classify stage and the REST API: `classify`, `api`.

Registered on the main app by `services.cli`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli import ExecutorOpt, RawCsvOpt, _fail, _finish, _ws, app
from services.clip_models import ModelUnavailableError
from services.datasets import DatasetError
from services.jobs import JobManager
from services.tag_models import ModelFileError


@app.command("classify")
def classify(
    source: Annotated[str, typer.Argument(help="A folder, a zip (nested zips read too), or a dataset name.")],
    models: Annotated[Path | None, typer.Option(help="Folder of models (or one .skops); default: all trained.")] = None,
    trained_on: Annotated[str | None, typer.Option(help="Only models trained on this dataset.")] = None,
    bins: Annotated[int, typer.Option(help="Equal score bins over [0, 1] (seed 004's output_bins).")] = 10,
    out: Annotated[Path | None, typer.Option(help="Where bins.json, scores.csv and output.json go.")] = None,
    copy: Annotated[bool, typer.Option(help="Copy images into OUT/{type}/{tag}/{bin}/ folders.")] = False,
    dataset: Annotated[str | None, typer.Option(help="Name for the imported images (default classify-NAME).")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Every model on every image in one vectorised pass; stored vectors are reused, new images embedded."""
    from services.classify import export_dir, resolve_models, start_classify

    ws = _ws()
    manager = JobManager(ws)
    try:
        chosen = resolve_models(ws, models, trained_on)
        job_id = start_classify(ws, manager, source, chosen, bins, out, copy, dataset)
    except (DatasetError, ModelFileError, ModelUnavailableError) as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created: {len(chosen)} models")
    _finish(manager, job_id, background, executor, raw_csv)
    if not background:
        progress = manager.progress(job_id)
        where = out or export_dir(ws, progress.params["dataset"], job_id)
        typer.echo(f"outputs: {where}")


@app.command("api")
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Serve the REST API (token from WORKBENCH_API_TOKEN or api_token in secrets); docs at /docs."""
    import uvicorn

    from services.api import create_app

    ws = _ws()
    token = ws.settings.api_token.get_secret_value() if ws.settings.api_token else ""
    if not token:
        _fail("no API token: set WORKBENCH_API_TOKEN (or api_token in .streamlit/secrets.toml) before serving")
    typer.echo(f"serving {ws.root} on http://{host}:{port} (docs at /docs)")
    uvicorn.run(create_app(ws, token), host=host, port=port, log_level="info")
