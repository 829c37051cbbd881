"""What every command shares: the global options, the workspace it opens, how a job runs in the foreground
and how its end is reported, the one-line failure. Stage command modules import this; `services.cli.app`
assembles them (nothing here imports a stage, so there is no import cycle)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from tqdm import tqdm

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.io.clip_models import ClipSpec
from services.jobs.manager import JobManager, JobProgress
from services.jobs.params import field_bounds, field_help

_state: dict[str, Any] = {}


def root_options(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace folder (default: $WORKBENCH_WORKSPACE or ./workspace)."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (it is always in logs/cli.log).")
    ] = False,
) -> None:
    _state["workspace"] = workspace
    _state["debug"] = debug


def cli_debug() -> bool:
    """Whether `--debug` was given (read by the entry point's error handler)."""
    return bool(_state.get("debug"))


def cli_workspace_root() -> Path | None:
    """The workspace this command used or named, for the error log (None if it cannot be told)."""
    if "ws" in _state:
        return Path(_state["ws"].root)
    try:
        return load_settings(workspace=_state.get("workspace")).workspace.expanduser().resolve()
    except Exception:
        return None


def cli_workspace() -> Workspace:
    """The workspace named by `--workspace` (or the settings), opened once per command."""
    if "ws" not in _state:
        settings = load_settings(workspace=_state.get("workspace"))
        _state["ws"] = Workspace.open(settings.workspace, settings)
    result: Workspace = _state["ws"]
    return result


def say_error(message: str) -> None:
    """`error: <message>` on stderr, on one line (what the entry point prints for a `WorkbenchError`)."""
    typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with `error: <message>` and the exit code (2: a usage or input error)."""
    say_error(message)
    raise typer.Exit(code)


def job_progress(manager: JobManager, job_id: int) -> JobProgress:
    """The job's progress, or exit 2 with a clear message if there is no such job."""
    return manager.progress(job_id)


def format_progress(p: JobProgress) -> str:
    eta = f", ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
    return f"job {p.id} [{p.state}] {p.done} ok, {p.failed} failed, {p.total} total, {p.rate:.1f}/s{eta}"


def run_foreground(manager: JobManager, job_id: int) -> JobProgress:
    bar = tqdm(total=0, unit="img", desc=f"job {job_id}", dynamic_ncols=True, file=sys.stderr)

    def on_progress(p: JobProgress) -> None:
        bar.total = p.total
        bar.n = p.done + p.failed
        bar.set_postfix(ok=p.done, failed=p.failed, refresh=False)
        bar.refresh()

    try:
        result = manager.run(job_id, on_progress=on_progress)
    finally:
        bar.close()
    return result


ExecutorOpt = Annotated[
    str | None, typer.Option(help="local (default) or dask://HOST:PORT: run the chunks on a Dask cluster.")
]
RawCsvOpt = Annotated[
    bool,
    typer.Option(
        "--raw-csv", help="Write CSV cells as they are, without the spreadsheet formula guard (machine consumers)."
    ),
]


def csv_guard(raw_csv: bool) -> bool:
    """Whether this command's CSVs are formula-guarded: the setting, unless `--raw-csv` was given."""
    return not raw_csv and cli_workspace().settings.csv_formula_guard


def finish_job(
    manager: JobManager, job_id: int, background: bool, executor: str | None = None, raw_csv: bool = False
) -> None:
    """Run the job here (or detached) and report how it ended; exit 1 if it failed or was interrupted (disk
    full), 130 if cancelled. `raw_csv` is stored in the job, so a resumed run writes its CSVs the same way."""
    if raw_csv:
        from services.core.csv_safety import RAW_CSV_PARAM

        manager.update_params(job_id, {RAW_CSV_PARAM: True})
    if executor:
        manager.set_executor(job_id, executor)
    if background:
        from services.jobs.worker_status import live_worker

        pid = manager.start_background(job_id)
        worker = live_worker(manager.ws)
        how = (
            "handed to the workspace's worker"
            if worker is not None and worker.pid == pid
            else "started in the background"
        )
        typer.echo(f"job {job_id} {how} (pid {pid}); follow it with `jobs show {job_id}`")
        return
    p = run_foreground(manager, job_id)
    typer.echo(format_progress(p))
    counts = manager.failure_counts(job_id)
    if counts:
        typer.echo("failures by class: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if manager.retryable_failures(job_id):  # not for classes no retry can fix (a misfit recipe, a bad image)
            typer.echo(f"retry them with: python -m services jobs retry-failed {job_id}")
    if p.state == "completed" and p.kind.startswith("download"):
        from services.stages.download.urls import labelled_csv_path

        typer.echo(f"labelled CSV: {labelled_csv_path(manager.ws, job_id, p.params)}")
    if p.state == "failed":
        fail(f"job {job_id} failed: {p.error}", 1)
    if p.state == "interrupted":
        fail(f"job {job_id} interrupted: {p.error or 'its run stopped'}", 1)
    if p.state == "cancelled":
        typer.echo(f"job {job_id} cancelled; continue with `jobs resume {job_id}`")
        raise typer.Exit(130)


ModelOpt = Annotated[str | None, typer.Option(help="open_clip model name (default from settings: ViT-B-32).")]
PretrainedOpt = Annotated[str | None, typer.Option(help="Pretrained tag (default from settings: openai).")]
CheckpointOpt = Annotated[Path | None, typer.Option(help="A local checkpoint file instead of a pretrained tag.")]


def clip_spec(
    model: str | None, pretrained: str | None, checkpoint: Path | None, device: str | None = None
) -> ClipSpec:
    """The CLIP model the options name, checked (names are safe names), defaults from the settings."""
    settings = cli_workspace().settings
    return ClipSpec.from_settings(settings, model, pretrained, str(checkpoint) if checkpoint else None, device)


def clip_spec_if_named(model: str | None, pretrained: str | None, checkpoint: Path | None) -> ClipSpec | None:
    """The CLIP model the options name, or None when none was named (the command picks the stored one)."""
    return clip_spec(model, pretrained, checkpoint) if (model or pretrained or checkpoint) else None


def param_option(model: type[BaseModel], name: str, more: str = "", seed_flags: tuple[str, ...] = ()) -> Any:
    """A typer option for a field of a job's params model: its help and its range are the model's, so the
    CLI refuses what the job would (`--workers -1: not in the range x>=0`) and says what the model says.
    `seed_flags`: the seed scripts' names for the same option (`--output_bins`), accepted too."""
    low, high = field_bounds(model, name)
    flags = (f"--{name.replace('_', '-')}", *seed_flags) if seed_flags else ()
    return typer.Option(*flags, help=f"{field_help(model, name)} {more}".strip(), min=low, max=high)
