"""CLI for the OCR stage: `ocr`, `ocr-engines`, `ocr-socket`, `ocr-rules`.

Registered on the main app by `services.cli`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from services.cli import _fail, _finish, _run_foreground, _ws, app
from services.datasets import DatasetError, get_dataset
from services.jobs import JobManager
from services.ocr_engines import EngineUnavailableError
from services.ocr_rules import OcrRules, RulesError, load_rules_arg
from services.recipes import Recipe, RecipeError
from services.workspace import Workspace

EngineOpt = Annotated[str | None, typer.Option(help="auto, rapidocr, tesseract or trocr (default from settings).")]
RecipeOpt = Annotated[
    str | None, typer.Option(help="A Preprocess recipe applied first: a name (e.g. ocr-line) or a JSON file.")
]
RulesOpt = Annotated[str | None, typer.Option(help="OCR rules: none, seed-003, a saved name or a JSON file.")]


def _recipe_arg(ws: Workspace, value: str | None) -> Recipe | str | None:
    """A recipe name, or (for the person at the shell only) a recipe JSON file read here."""
    from services.names import is_name
    from services.recipes import load_recipe_file

    if value and not is_name(value) and Path(value).expanduser().is_file():
        return load_recipe_file(Path(value).expanduser())
    return value


def _rules_arg(ws: Workspace, value: str | None) -> OcrRules | None:
    from services.ocr_rules import load_rules_arg

    return None if value is None else load_rules_arg(ws.root, value)


@app.command("ocr")
def ocr(
    source: Annotated[str, typer.Argument(help="An image, a folder, a zip, or a dataset name.")],
    engine: EngineOpt = None,
    recipe: RecipeOpt = None,
    rules: RulesOpt = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """Read text: detection, recognition, rules; one image prints its JSON, a set runs as a resumable job."""
    from services.folder_import import start_folder_import
    from services.ocr import OcrSetup, ocr_bytes, ocr_results, start_ocr

    ws = _ws()
    cfg = ws.settings.ocr
    path = Path(source).expanduser()
    try:
        recipe_arg, rules_arg = _recipe_arg(ws, recipe), _rules_arg(ws, rules)
        if path.is_file() and path.suffix.lower() != ".zip":
            setup = OcrSetup.resolve(ws, engine, recipe_arg, rules_arg)
            typer.echo(json.dumps(ocr_bytes(ws, path.read_bytes(), setup)))
            return
        manager = JobManager(ws)
        dataset = source
        if get_dataset(ws.catalog, source) is None or path.exists():
            dataset = f"ocr-{path.stem}"
            imported = _run_foreground(manager, start_folder_import(ws, manager, path, dataset, kind="ocr"))
            typer.echo(f"imported {imported.done} images into dataset {dataset!r}")
        job_id = start_ocr(
            ws,
            manager,
            dataset,
            engine or cfg.engine,
            recipe_arg or cfg.recipe,
            rules_arg or load_rules_arg(ws.root, cfg.rules),
        )
    except (DatasetError, EngineUnavailableError, RulesError, RecipeError) as exc:
        _fail(str(exc))
    typer.echo(f"job {job_id} created: {manager.progress(job_id).title}")
    _finish(manager, job_id, background)
    if not background:
        settings_hash = manager.progress(job_id).params["settings_hash"]
        for row in ocr_results(ws, dataset, settings_hash)[:50]:
            typer.echo(f"{row['image']}\t{row['code'] or '-'}\t{row['raw'] or ''}\t{row['confidence']}")
        typer.echo(f"log: {ws.root / cfg.log_csv}")


@app.command("ocr-engines")
def ocr_engines() -> None:
    """Which OCR engines can run on this machine, and why not when they cannot."""
    from services.ocr_engines import engine_status, resolve_engine

    ws = _ws()
    for name, problem in engine_status(ws.settings).items():
        typer.echo(f"{name}\t{'available' if problem is None else 'unavailable: ' + problem}")
    try:
        typer.echo(f"auto -> {resolve_engine('auto', ws.settings)}")
    except EngineUnavailableError as exc:
        typer.echo(f"auto -> none ({exc})")


@app.command("ocr-socket")
def ocr_socket(
    port: Annotated[int, typer.Option(help="TCP port.")] = 9100,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    engine: EngineOpt = None,
    recipe: RecipeOpt = None,
    rules: RulesOpt = None,
) -> None:
    """Serve OCR over TCP: 4-byte big-endian length + image in, one JSON line out (see services/ocr_socket.py)."""
    from services.ocr import OcrSetup
    from services.ocr_socket import OcrSocketServer

    ws = _ws()
    try:
        setup = OcrSetup.resolve(ws, engine, _recipe_arg(ws, recipe), _rules_arg(ws, rules))
    except (EngineUnavailableError, RulesError, RecipeError) as exc:
        _fail(str(exc))
    server = OcrSocketServer((host, port), ws, setup)
    typer.echo(f"OCR socket on {host}:{server.server_address[1]} with {setup.engine}, rules {setup.rules.name}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("ocr-rules")
def ocr_rules(name: Annotated[str | None, typer.Argument(help="Show one rules set.")] = None) -> None:
    """OCR rules presets and saved rules."""
    from services.ocr_rules import list_rules, load_rules

    ws = _ws()
    if name is None:
        for item in list_rules(ws.root):
            typer.echo(item)
        return
    try:
        typer.echo(load_rules(ws.root, name).model_dump_json(indent=1))
    except RulesError as exc:
        _fail(str(exc))
