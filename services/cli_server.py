"""CLI for running a shared server: `dashboard` (the dashboard behind its upload gate), `hash-password` (a line
for the sign-in users in secrets), `demo`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
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


@app.command("dashboard")
def dashboard(
    port: Annotated[int, typer.Option(help="Port.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "localhost",
) -> None:
    """Start the dashboard on this workspace, behind the upload gate, with Streamlit's upload limit
    (server.maxUploadSize) set from max_upload_mb. Replaces this process with `streamlit run dashboard.py`."""
    from services.cli import _ws

    ws = _ws()
    root = Path(__file__).resolve().parent.parent
    argv = [
        sys.executable, "-m", "streamlit", "run", str(root / "dashboard.py"),
        "--server.port", str(port), "--server.address", host,
        "--server.maxUploadSize", str(ws.settings.max_upload_mb),
    ]  # fmt: skip
    ws.close()
    typer.echo(f"dashboard on http://{host}:{port} over {ws.root} (uploads up to {ws.settings.max_upload_mb} MB)")
    sys.stdout.flush()
    os.execve(sys.executable, argv, {**os.environ, "WORKBENCH_WORKSPACE": str(ws.root)})
