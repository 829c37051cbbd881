"""CLI for model weights: `models pull` is the only command that downloads; `models list` shows what is local."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.common import cli_workspace, fail

commands = typer.Typer()

models_app = typer.Typer(help="Model weights: pull explicitly, list what is on this machine.", no_args_is_help=True)
commands.add_typer(models_app, name="models")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="open_clip MODEL/TAG, e.g. ViT-B-32/openai.")],
    timeout: Annotated[float | None, typer.Option(help="Seconds before giving up (default from settings).")] = None,
) -> None:
    """Download weights into the Hugging Face cache, where pages and jobs find them offline.
    open_clip: MODEL/TAG (ViT-B-32/openai); TrOCR: trocr:HUB_ID (trocr:microsoft/trocr-base-printed)."""
    from services.io.clip_models import ClipSpec, ModelUnavailableError, pull_weights

    limit = timeout if timeout is not None else cli_workspace().settings.clip.pull_timeout_seconds
    if name.startswith("trocr:"):
        from services.stages.ocr.engines import EngineUnavailableError, pull_trocr

        typer.echo(f"pulling {name[6:]} (timeout {limit:.0f}s) ...")
        try:
            typer.echo(f"weights at {pull_trocr(name[6:], limit)}")
        except EngineUnavailableError as exc:
            fail(str(exc), 1)
        return
    model, _, tag = name.partition("/")
    if not tag:
        fail(f"{name!r}: give MODEL/TAG, e.g. ViT-B-32/openai")
    typer.echo(f"pulling {model}/{tag} (timeout {limit:.0f}s) ...")
    try:
        path = pull_weights(ClipSpec(model=model, pretrained=tag), limit)
    except ModelUnavailableError as exc:
        fail(str(exc), 1)
    typer.echo(f"weights at {path}")


@models_app.command("list")
def models_list(
    model: Annotated[str | None, typer.Option(help="Only this open_clip model.")] = None,
) -> None:
    """Models whose weights are on this machine (the workspace's checkpoints too), then every open_clip
    MODEL/TAG pair and whether its weights are here."""
    import open_clip

    from services.io.clip_models import ClipSpec, ModelUnavailableError, local_clip_models, resolve_weights

    ws = cli_workspace()
    for local in local_clip_models(ws.settings, ws.root):
        if local.spec.checkpoint and (not model or local.spec.model == model):
            typer.echo(f"{local.spec.model} --checkpoint {local.spec.checkpoint}\tlocal: {local.origin}")
    for name, tag in open_clip.list_pretrained():
        if model and name != model:
            continue
        try:
            path, _ = resolve_weights(ClipSpec(model=name, pretrained=tag))
            where = f"local: {path}"
        except ModelUnavailableError:
            where = "not downloaded"
        typer.echo(f"{name}/{tag}\t{where}")
