"""CLI for the OCR stage: `ocr`, `ocr-engines`, `ocr-socket`, `ocr-rules`.

Merged into the root app by `services.cli.app`; shares its workspace, job runner and error handling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.cli.common import cli_workspace, fail, finish_job, run_foreground
from services.core.datasets import get_dataset
from services.core.workspace import Workspace
from services.jobs.manager import JobManager

if TYPE_CHECKING:  # the OCR modules need the `ocr` extra; they are imported when a command runs
    from services.stages.ocr.rules import OcrRules
    from services.stages.preprocess.recipes import Recipe

commands = typer.Typer()

EngineOpt = Annotated[str | None, typer.Option(help="auto, rapidocr, tesseract or trocr (default from settings).")]
RecipeOpt = Annotated[
    str | None, typer.Option(help="A Preprocess recipe applied first: a name (e.g. ocr-line) or a JSON file.")
]
RulesOpt = Annotated[str | None, typer.Option(help="OCR rules: none, seed-003, a saved name or a JSON file.")]
TruthOpt = Annotated[Path | None, typer.Option(help="Ground-truth CSV (image_name,text): CER/WER per image, overall.")]
OutOpt = Annotated[Path | None, typer.Option(help="Write the accuracy report here (.json or .csv); needs --truth.")]


def _recipe_arg(ws: Workspace, value: str | None) -> Recipe | str | None:
    """A recipe name, or (for the person at the shell only) a recipe JSON file read here."""
    from services.core.names import is_name
    from services.stages.preprocess.recipes import load_recipe_file

    if value and not is_name(value) and Path(value).expanduser().is_file():
        return load_recipe_file(Path(value).expanduser())
    return value


def _rules_arg(ws: Workspace, value: str | None) -> OcrRules | None:
    from services.stages.ocr.rules import load_rules_arg

    return None if value is None else load_rules_arg(ws.root, value)


@commands.command("ocr")
def ocr(
    source: Annotated[str, typer.Argument(help="An image, a folder, a zip, or a dataset name.")],
    engine: EngineOpt = None,
    recipe: RecipeOpt = None,
    rules: RulesOpt = None,
    truth: TruthOpt = None,
    out: OutOpt = None,
    background: Annotated[bool, typer.Option(help="Run detached.")] = False,
) -> None:
    """Read text: detection, recognition, rules; one image prints its JSON, a set runs as a resumable job."""
    from services.io.imaging import ImageCheckError
    from services.stages.download.folder_import import start_folder_import
    from services.stages.ocr.rules import load_rules_arg
    from services.stages.ocr.stage import OcrSetup, RecipeMisfitError, ocr_bytes, ocr_results, start_ocr

    truth_rows = _read_truth(truth, out, background)
    ws = cli_workspace()
    cfg = ws.settings.ocr
    path = Path(source).expanduser()
    recipe_arg, rules_arg = _recipe_arg(ws, recipe), _rules_arg(ws, rules)
    if path.is_file() and path.suffix.lower() != ".zip":
        setup = OcrSetup.resolve(ws, engine, recipe_arg, rules_arg)
        try:
            result = ocr_bytes(ws, path.read_bytes(), setup)
        except RecipeMisfitError as exc:
            fail(f"{path.name}: {exc}", 1)
        except ImageCheckError as exc:
            fail(f"{path.name}: {exc.error_class}: {exc.message}", 1)
        typer.echo(json.dumps(result))
        if truth_rows is not None:
            _report_accuracy(truth_rows, [{"image": path.name, **result}], out)
        return
    manager = JobManager(ws)
    dataset = source
    if get_dataset(ws.catalog, source) is None or path.exists():
        dataset = f"ocr-{path.stem}"
        imported = run_foreground(manager, start_folder_import(ws, manager, path, dataset, kind="ocr"))
        typer.echo(f"imported {imported.done} images into dataset {dataset!r}")
    job_id = start_ocr(
        ws,
        manager,
        dataset,
        engine or cfg.engine,
        recipe_arg or cfg.recipe,
        rules_arg or load_rules_arg(ws.root, cfg.rules),
    )
    typer.echo(f"job {job_id} created: {manager.progress(job_id).title}")
    finish_job(manager, job_id, background)
    if not background:
        settings_hash = manager.progress(job_id).params["settings_hash"]
        rows = [r for r in ocr_results(ws, dataset, settings_hash) if r["raw"] is not None or r["error"]]
        for row in rows[:50]:
            if row["error"]:
                typer.echo(f"{row['image']}\tfailed: {row['error']}")
            else:
                typer.echo(f"{row['image']}\t{row['code'] or '-'}\t{row['raw']}\t{row['confidence']}")
        if len(rows) > 50:
            typer.echo(f"... {len(rows) - 50} more; all of them: jobs export {job_id}")
        typer.echo(f"log: {ws.root / cfg.log_csv}")
        if truth_rows is not None:
            _report_accuracy(truth_rows, rows, out)


def _read_truth(truth: Path | None, out: Path | None, background: bool) -> dict[str, str] | None:
    """The ground truth, read before any OCR runs so a bad file costs nothing."""
    from services.stages.ocr.accuracy import read_ground_truth

    if truth is None:
        if out is not None:
            fail("--out writes the accuracy report: give --truth CSV too")
        return None
    if background:
        fail("--truth needs the results: run without --background (or score later with --truth on the same set)")
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        fail(f"--out {out}: the accuracy report is written as .json or .csv")
    try:
        return read_ground_truth(truth.expanduser().read_bytes())
    except OSError as exc:
        fail(f"--truth {truth}: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"--truth {truth}: {exc}")


def _report_accuracy(truth: dict[str, str], rows: list[dict[str, Any]], out: Path | None) -> None:
    """The per-image table and the overall line; exit 1 when no ground-truth name matched an image."""
    from services.stages.ocr.accuracy import score_against_truth, write_truth_report

    report = score_against_truth(truth, rows)
    if report.images:
        typer.echo("image\treference\tprediction\tCER\tWER")
        for s in report.images:
            cer = "-" if s.cer is None else f"{s.cer:.2%}"
            wer = "-" if s.wer is None else f"{s.wer:.2%}"
            failed = f"\t({s.error})" if s.error else ""
            typer.echo(f"{s.image}\t{s.reference}\t{s.prediction}\t{cer}\t{wer}{failed}")
    if out is not None:
        typer.echo(f"accuracy report: {write_truth_report(report, out.expanduser())}")
    if report.overall is None:
        fail(report.summary(), 1)
    typer.echo(report.summary())
    if report.unmatched:
        shown = ", ".join(report.unmatched[:5]) + (" ..." if len(report.unmatched) > 5 else "")
        typer.echo(f"{len(report.unmatched)} ground-truth names matched no image: {shown}")


@commands.command("ocr-engines")
def ocr_engines() -> None:
    """Which OCR engines can run on this machine, and why not when they cannot."""
    from services.stages.ocr.engines import EngineUnavailableError, engine_status, resolve_engine

    ws = cli_workspace()
    for name, problem in engine_status(ws.settings).items():
        typer.echo(f"{name}\t{'available' if problem is None else 'unavailable: ' + problem}")
    try:
        typer.echo(f"auto -> {resolve_engine('auto', ws.settings)}")
    except EngineUnavailableError as exc:
        typer.echo(f"auto -> none ({exc})")


@commands.command("ocr-socket")
def ocr_socket(
    port: Annotated[int, typer.Option(help="TCP port.")] = 9100,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    engine: EngineOpt = None,
    recipe: RecipeOpt = None,
    rules: RulesOpt = None,
) -> None:
    """Serve OCR over TCP: 4-byte big-endian length + image in, one JSON line out."""
    from services.stages.ocr.socket_server import OcrSocketServer
    from services.stages.ocr.stage import OcrSetup

    ws = cli_workspace()
    setup = OcrSetup.resolve(ws, engine, _recipe_arg(ws, recipe), _rules_arg(ws, rules))
    server = OcrSocketServer((host, port), ws, setup)
    typer.echo(f"OCR socket on {host}:{server.server_address[1]} with {setup.engine}, rules {setup.rules.name}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@commands.command("ocr-rules")
def ocr_rules(name: Annotated[str | None, typer.Argument(help="Show one rules set.")] = None) -> None:
    """OCR rules presets and saved rules."""
    from services.stages.ocr.rules import list_rules, load_rules

    ws = cli_workspace()
    if name is None:
        for item in list_rules(ws.root):
            typer.echo(item)
        return
    typer.echo(load_rules(ws.root, name).model_dump_json(indent=1))
