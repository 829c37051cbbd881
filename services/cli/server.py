"""CLI for running a shared server: `dashboard` (the dashboard behind its upload gate, with the workspace's
worker), `worker` (the long-lived process that runs handed jobs with its models kept loaded), `hash-password` (a
line for the sign-in users in secrets), `demo`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from services import APP_ROOT
from services.cli.common import cli_workspace, fail
from services.core.workspace import Workspace
from services.jobs.manager import JobManager

commands = typer.Typer()

# The dashboard's Streamlit options, given on the command line so that they hold from any working folder (an
# installed `workbench dashboard` has no .streamlit/config.toml beside it; the checkout's file says the same and
# a test keeps the two equal). showErrorDetails "none": an uncaught error never shows its traceback in a browser.
DASHBOARD_OPTIONS: dict[str, str] = {
    "server.headless": "true",
    "server.runOnSave": "false",
    "server.fileWatcherType": "none",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
    "client.showErrorDetails": "none",
    "theme.base": "light",
}


@commands.command("hash-password")
def hash_password(
    user: Annotated[str, typer.Argument(help="The user name the line is for.")],
) -> None:
    """Prompt for a password (hidden) and print the `[users]` line for .streamlit/secrets.toml."""
    from services.core.auth import hash_password as make_hash

    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    typer.echo("# add under [users] in .streamlit/secrets.toml (or WORKBENCH_USERS as JSON):")
    typer.echo(f'{user} = "{make_hash(password)}"')


@commands.command("demo")
def demo(small: Annotated[bool, typer.Option(help="Fewer images (a quicker build).")] = False) -> None:
    """Build a demo workspace offline (sample photos, generated images, tags, OCR parts, Compare CSVs)."""
    from services.cli.common import cli_workspace
    from services.demo.builder import build_demo

    made = build_demo(cli_workspace(), small=small, progress=lambda step: typer.echo(f"- {step}"))
    typer.echo(f"demo ready in {made['workspace']}: `make run WORKSPACE={made['workspace']}`")
    typer.echo(f"demo CLIP checkpoint (random weights, colours only): {made['checkpoint']}")


@commands.command("dashboard")
def dashboard(
    port: Annotated[int, typer.Option(help="Port.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "localhost",
    worker: Annotated[
        bool, typer.Option(help="Start the workspace's worker too (unless one runs): page jobs reuse its models.")
    ] = True,
) -> None:
    """Start the dashboard on this workspace, behind the upload gate, with Streamlit's upload limit
    (server.maxUploadSize) set from max_upload_mb. Replaces this process with `streamlit run dashboard.py`."""
    from services.cli.common import cli_workspace

    ws = cli_workspace()
    if worker:
        typer.echo(start_worker_process(ws))
    argv = [
        sys.executable, "-m", "streamlit", "run", str(APP_ROOT / "dashboard.py"),
        "--server.port", str(port), "--server.address", host,
        "--server.maxUploadSize", str(ws.settings.max_upload_mb),
        *(arg for key, value in DASHBOARD_OPTIONS.items() for arg in (f"--{key}", value)),
    ]  # fmt: skip
    ws.close()
    typer.echo(f"dashboard on http://{host}:{port} over {ws.root} (uploads up to {ws.settings.max_upload_mb} MB)")
    sys.stdout.flush()
    os.execve(sys.executable, argv, {**os.environ, "WORKBENCH_WORKSPACE": str(ws.root)})


def start_worker_process(ws: Workspace) -> str:
    """The workspace's worker as a detached process, unless one serves it already. It watches this process (the
    dashboard, once `execve` has made it Streamlit): when that ends, the worker finishes its job and stops."""
    from services.jobs.worker_status import live_worker

    running = live_worker(ws)
    if running is not None:
        return f"worker already running (pid {running.pid})"
    out = ws.root / "logs" / "worker.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "--workspace", str(ws.root), "worker", "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(APP_ROOT),
        )  # fmt: skip
    return f"worker started (pid {proc.pid}; its log: {ws.shown_name(out)})"


def _model_counts() -> tuple[int, list[str]]:
    """Model loads in the worker so far, and the models it holds now: CLIP and the OCR engines."""
    from services.jobs.worker import clip_model_counts
    from services.stages.ocr.engines import engine_load_count, resident_engines

    loads, held = clip_model_counts()
    return loads + engine_load_count(), held + resident_engines()


@commands.command("worker")
def worker(
    status: Annotated[bool, typer.Option("--status", help="Say whether a worker serves the workspace, and exit.")] = (
        False
    ),
    max_jobs: Annotated[int | None, typer.Option(help="Exit after this many jobs (default: run until stopped).")] = (
        None
    ),
    parent: Annotated[
        int | None, typer.Option(help="Stop, once idle, when this process ends (the dashboard that started it).")
    ] = None,
) -> None:
    """Serve the workspace: run the jobs handed to it (from pages, and `--background` at the CLI) in this
    process, in order, several at once and those that load a model one at a time, so the models stay loaded. A
    job a killed worker left resumes first. Ctrl+C or SIGTERM stops it: running jobs stop after their items in
    flight and go back to the front of the queue."""
    from services.jobs.worker import Worker
    from services.jobs.worker_status import live_worker, worker_summary

    ws = cli_workspace()
    if status:
        typer.echo(worker_summary(ws))
        queued = JobManager(ws).worker_queue()
        typer.echo(f"queue: {', '.join(f'job {p.id}' for p in queued) or 'empty'}")
        return
    running = live_worker(ws)
    if running is not None:
        fail(f"a worker already serves this workspace (pid {running.pid} on {running.host})")
    from services.stages.classify.upload_scoring import CLASSIFY_OP, classify_upload_handler
    from services.stages.describe.zero_shot_try import TRY_OP, zero_shot_handler
    from services.stages.explore.search import SEARCH_OP, search_handler
    from services.stages.ocr.preview import PREVIEW_OP, READ_OP, preview_handler, read_handler

    serving = Worker(
        ws,
        parent=parent,
        model_counts=_model_counts,
        request_handlers={
            PREVIEW_OP: preview_handler(ws.settings),
            READ_OP: read_handler(ws),
            TRY_OP: zero_shot_handler(ws.settings),
            CLASSIFY_OP: classify_upload_handler(ws),
            SEARCH_OP: search_handler(ws),
        },
    )
    typer.echo(f"worker pid {os.getpid()} serving {ws.root} (Ctrl+C stops it)")
    try:
        ran = serving.serve(max_jobs=max_jobs, on_job=lambda p: typer.echo(f"job {p.id} [{p.state}] {p.title}"))
    except KeyboardInterrupt:
        ran = serving.status.jobs_run
    typer.echo(f"worker stopped after {ran} jobs")


@commands.command("api")
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Serve the REST API (token from WORKBENCH_API_TOKEN or api_token in secrets); docs at /docs."""
    import uvicorn

    from services.api.app import create_app

    ws = cli_workspace()
    token = ws.settings.api_token.get_secret_value() if ws.settings.api_token else ""
    if not token:
        fail("no API token: set WORKBENCH_API_TOKEN (or api_token in .streamlit/secrets.toml) before serving")
    typer.echo(f"serving {ws.root} on http://{host}:{port} (docs at /docs)")
    uvicorn.run(create_app(ws, token), host=host, port=port, log_level="info")
