"""CLI for running a shared server: `hash-password` (a line for the sign-in users in secrets)."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli import app


@app.command("hash-password")
def hash_password(
    user: Annotated[str, typer.Argument(help="The user name the line is for.")],
) -> None:
    """Prompt for a password (hidden) and print the `[users]` line for .streamlit/secrets.toml."""
    from services.auth import hash_password as make_hash

    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    typer.echo("# add under [users] in .streamlit/secrets.toml (or WORKBENCH_USERS as JSON):")
    typer.echo(f'{user} = "{make_hash(password)}"')


@app.command("demo")
def demo(small: Annotated[bool, typer.Option(help="Fewer images (a quicker build).")] = False) -> None:
    """Build a demo workspace offline (sample photos, generated images, tags, OCR parts, Compare CSVs)."""
    from services.cli import _ws
    from services.demo import build_demo

    made = build_demo(_ws(), small=small, progress=lambda step: typer.echo(f"- {step}"))
    typer.echo(f"demo ready in {made['workspace']}: `make run WORKSPACE={made['workspace']}`")
    typer.echo(f"demo CLIP checkpoint (random weights, colours only): {made['checkpoint']}")
