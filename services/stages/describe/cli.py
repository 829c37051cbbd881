"""CLI for the Describe & Categorize stage: `describe`, `categorize`, `describe-export`, `categories ...`.

Merged into the root app by `services.cli.app`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import RawCsvOpt, cli_workspace, csv_guard, fail, finish_job, param_option
from services.core.datasets import DatasetError
from services.core.workspace import Workspace
from services.io.gemini_client import GeminiError, make_client
from services.jobs.manager import JobManager
from services.stages.describe.categories import (
    CategoryError,
    CategoryList,
    extract_categories,
    load_list,
    parse_category_csv,
)
from services.stages.describe.categories import list_lists as _list_lists
from services.stages.describe.categories import save_list as _save_list
from services.stages.describe.stage import DescribeParams

commands = typer.Typer()

categories_app = typer.Typer(help="Versioned category lists for categorisation.", no_args_is_help=True)
commands.add_typer(categories_app, name="categories")


def _resolve_list(ws: Workspace, categories: Path | None, list_name: str | None) -> CategoryList | None:
    """`--categories FILE` imports (a new version only if it changed); `--list NAME[@vN]` picks a stored one."""
    try:
        if categories is not None:
            cats = parse_category_csv(categories.read_bytes(), categories.name)
            return _save_list(ws, list_name or categories.stem, cats, f"cli:{categories.name}")
        if list_name:
            name, _, version = list_name.partition("@v")
            return load_list(ws, name, int(version) if version else None)
    except (CategoryError, OSError, ValueError) as exc:
        fail(str(exc))
    return None


def _confirm_cost(ws: Workspace, dataset: str, mode: str, category_list: CategoryList | None, yes: bool) -> None:
    from services.stages.describe.stage import estimate_cost

    estimate = estimate_cost(ws, dataset, mode, category_list)
    typer.echo(f"estimate ({estimate.model}): {estimate.describe()}")
    if estimate.to_do and not yes and sys.stdin.isatty() and not typer.confirm("start?", default=True):
        raise typer.Exit(1)


def _check_key(ws: Workspace) -> None:
    try:
        make_client(ws.settings)
    except GeminiError as exc:
        fail(exc.message)


@commands.command("describe")
def describe(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "--images-dir",
            help="Dataset whose images to describe (seed 001's --images-dir: the folder it downloaded into, REAL or "
            "GEN, is that dataset here).",
        ),
    ],
    categories: Annotated[
        Path | None, typer.Option(help="CSV with a `Category` column: describe and categorise in one call.")
    ] = None,
    list_name: Annotated[str | None, typer.Option("--list", help="Or a stored list: NAME or NAME@vN.")] = None,
    concurrency: Annotated[
        int | None, param_option(DescribeParams, "concurrency", "Default from settings.", ("--num-workers",))
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip the cost confirmation.")] = False,
    estimate_only: Annotated[bool, typer.Option(help="Print the cost estimate and stop.")] = False,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """Gemini structured descriptions (the whole JSON is kept); images already described are skipped."""
    from services.stages.describe.stage import start_describe

    ws = cli_workspace()
    category_list = _resolve_list(ws, categories, list_name)
    mode = "both" if category_list is not None else "describe"
    _confirm_cost(ws, dataset, mode, category_list, yes or estimate_only)
    if estimate_only:
        return
    _check_key(ws)
    job_id = start_describe(ws, JobManager(ws), dataset, mode, category_list, concurrency)
    typer.echo(f"job {job_id} created: {mode} {dataset!r} with {ws.settings.caption_model}")
    finish_job(JobManager(ws), job_id, background)


@commands.command("categorize")
def categorize(
    dataset: Annotated[str | None, typer.Option(help="Dataset whose images to categorise.")] = None,
    input_csv: Annotated[
        Path | None,
        typer.Option(
            "--input-csv",
            help="Or a descriptions CSV (image_name,description: the seeds' or describe-export's), categorised "
            "from the text, without the images (Gemini).",
        ),
    ] = None,
    output_csv: Annotated[
        Path | None,
        typer.Option("--output-csv", help="With --input-csv: the categorised CSV (default: INPUT_categorized.csv)."),
    ] = None,
    categories: Annotated[
        Path | None, typer.Option("--categories", "--categories-csv", help="CSV with a `Category` column.")
    ] = None,
    list_name: Annotated[str | None, typer.Option("--list", help="Or a stored list: NAME or NAME@vN.")] = None,
    engine: Annotated[str, typer.Option(help="gemini (uses stored descriptions) or clip (zero-shot, offline).")] = (
        "gemini"
    ),
    model: Annotated[str | None, typer.Option(help="clip: open_clip model name (default from settings).")] = None,
    pretrained: Annotated[str | None, typer.Option(help="clip: pretrained tag, e.g. openai.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="clip: a local checkpoint file instead of a tag.")] = None,
    device: Annotated[str | None, typer.Option(help="clip: auto, cpu, cuda, cuda:1 ...")] = None,
    concurrency: Annotated[int | None, param_option(DescribeParams, "concurrency", "Gemini only.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip the cost confirmation.")] = False,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """One or two categories per image from the list (`unknown` when none fits), validated against it."""
    if (dataset is None) == (input_csv is None):
        fail("give --dataset NAME, or --input-csv FILE (a descriptions CSV)")
    if input_csv is not None and engine != "gemini":
        fail("--input-csv is categorised from the descriptions' text: only --engine gemini reads text")
    ws = cli_workspace()
    category_list = _resolve_list(ws, categories, list_name)
    if category_list is None:
        fail("give --categories FILE or --list NAME")
    manager = JobManager(ws)
    if input_csv is not None:
        from services.stages.describe.csv_categorize import start_csv_categorize

        _check_key(ws)
        out = output_csv or input_csv.with_name(f"{input_csv.stem}_categorized.csv")
        job_id = start_csv_categorize(ws, manager, input_csv, out, category_list, concurrency)
        typer.echo(f"job {job_id} created: categorize {input_csv.name} with gemini ({category_list.label})")
        finish_job(manager, job_id, background)
        if not background and manager.progress(job_id).state == "completed":
            typer.echo(f"written: {out}")
        return
    if dataset is None:  # (checked above: one of the two is given)
        fail("give --dataset NAME")
    if engine == "gemini":
        from services.stages.describe.stage import start_describe

        _confirm_cost(ws, dataset, "categorize", category_list, yes)
        _check_key(ws)
        job_id = start_describe(ws, manager, dataset, "categorize", category_list, concurrency)
    elif engine == "clip":
        from services.io.clip_models import ClipSpec
        from services.stages.describe.categorize_clip import start_zero_shot

        spec = ClipSpec.from_settings(ws.settings, model, pretrained, str(checkpoint) if checkpoint else None, device)
        job_id = start_zero_shot(ws, manager, dataset, category_list, spec)
    else:
        fail(f"engine {engine!r}: use gemini or clip")
    typer.echo(f"job {job_id} created: categorize {dataset!r} with {engine} ({category_list.label})")
    finish_job(manager, job_id, background)


@commands.command("describe-export")
def describe_export(
    dataset: Annotated[str, typer.Option(help="Dataset to export.")],
    fmt: Annotated[
        str, typer.Option("--format", help="descriptions-csv, categories-csv, jsonl or parquet.")
    ] = "descriptions-csv",
    list_name: Annotated[str | None, typer.Option("--list", help="Category list (for categories): NAME[@vN].")] = None,
    out: Annotated[Path | None, typer.Option(help="File to write (default: workspace exports/).")] = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """The seeds' `image_name,description[,categories]` CSVs, or the full JSON per image."""
    from services.stages.describe.results import ResultKeys, export

    ws = cli_workspace()
    category_list = _resolve_list(ws, None, list_name)
    try:
        path, n = export(ws, dataset, ResultKeys.current(ws, category_list), fmt, out, guard=csv_guard(raw_csv))
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{n} images written to {path}")


@categories_app.command("import")
def categories_import(
    path: Annotated[Path, typer.Argument(help="CSV with a `Category` column.")],
    name: Annotated[str | None, typer.Option(help="List name (default: the file name).")] = None,
) -> None:
    """Store a list (a new version only when the content changed)."""
    try:
        cats = parse_category_csv(path.read_bytes(), path.name)
        saved = _save_list(cli_workspace(), name or path.stem, cats, f"cli:{path.name}")
    except (CategoryError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{saved.label}: {len(saved.categories)} categories")


@categories_app.command("extract")
def categories_extract(
    path: Annotated[Path, typer.Argument(help="A categorised CSV (image_name,description,categories).")],
    name: Annotated[str, typer.Option(help="List name to store them under.")],
) -> None:
    """The unique categories used in a categorised CSV, stored as a list (the seeds' extract_categories)."""
    try:
        saved = _save_list(
            cli_workspace(), name, extract_categories(path.read_bytes(), path.name), f"extract:{path.name}"
        )
    except (CategoryError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{saved.label}: {', '.join(saved.categories)}")


@categories_app.command("list")
def categories_list() -> None:
    """Stored lists, latest version of each."""
    lists = _list_lists(cli_workspace())
    if not lists:
        typer.echo("no category lists yet; import one with `categories import FILE`")
    for item in lists:
        typer.echo(f"{item.label}\t{len(item.categories)} categories\t{item.source}")


@categories_app.command("show")
def categories_show(name: Annotated[str, typer.Argument(help="NAME or NAME@vN")]) -> None:
    """The categories of one list."""
    item = _resolve_list(cli_workspace(), None, name)
    assert item is not None
    typer.echo(f"{item.label} ({item.content_hash})")
    for category in item.categories:
        typer.echo(category)
