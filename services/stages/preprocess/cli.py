"""`preprocess` and `recipes list|show|save`: the Preprocess stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import ExecutorOpt, RawCsvOpt, cli_workspace, fail, finish_job, param_option, run_foreground
from services.jobs.manager import JobManager
from services.jobs.params import JobParams

commands = typer.Typer()
recipes_app = typer.Typer(help="Preprocessing recipes (presets and the workspace's own).", no_args_is_help=True)
commands.add_typer(recipes_app, name="recipes")


@commands.command("preprocess")
def preprocess(
    recipe: Annotated[
        str, typer.Option(help="Recipe name: a preset (ocr-128, ocr-line) or one saved in the workspace.")
    ],
    dataset: Annotated[str | None, typer.Option(help="Dataset to preprocess.")] = None,
    folder: Annotated[Path | None, typer.Option(help="Or a folder: imported as a dataset first.")] = None,
    workers: Annotated[int | None, param_option(JobParams, "workers", "Default: all cores.")] = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
    executor: ExecutorOpt = None,
    raw_csv: RawCsvOpt = False,
) -> None:
    """Run a recipe over every image of a dataset (or folder); skips images already done with the same recipe."""
    from services.stages.download.folder_import import start_folder_import
    from services.stages.preprocess.stage import start_preprocess

    ws = cli_workspace()
    manager = JobManager(ws)
    if (dataset is None) == (folder is None):
        fail("give exactly one of --dataset or --folder")
    if folder is not None:
        dataset = dataset_name = folder.resolve().name
        import_job = start_folder_import(ws, manager, folder, dataset_name, workers=workers)
        typer.echo(f"importing {folder} as dataset {dataset_name!r} (job {import_job})")
        if run_foreground(manager, import_job).state != "completed":
            fail(f"import job {import_job} did not complete; see `jobs show {import_job}`", 1)
    job_id = start_preprocess(ws, manager, dataset or "", recipe, workers)
    typer.echo(f"job {job_id} created: recipe {recipe!r} over dataset {dataset!r}")
    finish_job(manager, job_id, background, executor, raw_csv)


@recipes_app.command("list")
def recipes_list() -> None:
    """Recipe names with version, settings hash and description."""
    from services.stages.preprocess.recipes import is_builtin, list_recipes, load_recipe, recipe_versions

    ws = cli_workspace()
    for name in list_recipes(ws.root):
        r = load_recipe(ws.root, name)
        kind = "built-in" if is_builtin(name) else f"{len(recipe_versions(ws.root, name))} saved version(s)"
        typer.echo(f"{r.name}\tv{r.version}\t{r.settings_hash[:10]}\t{len(r.ops)} ops\t{kind}\t{r.description}")


@recipes_app.command("show")
def recipes_show(
    name: str, version: Annotated[int | None, typer.Option(help="An older saved version (default: the latest).")] = None
) -> None:
    """A recipe as JSON (edit it and `recipes save` it back)."""
    from services.stages.preprocess.recipes import load_recipe

    typer.echo(load_recipe(cli_workspace().root, name, version).model_dump_json(indent=2))


@recipes_app.command("save")
def recipes_save(path: Annotated[Path, typer.Argument(help="Recipe JSON file.")]) -> None:
    """Validate and save a recipe into the workspace (its version goes up when its operations change)."""
    from services.stages.preprocess.recipes import RecipeError, parse_recipe, save_recipe

    try:
        recipe = save_recipe(cli_workspace().root, parse_recipe(path.read_text(encoding="utf-8")))
    except (RecipeError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"saved {recipe.name} v{recipe.version} ({recipe.settings_hash[:10]})")
