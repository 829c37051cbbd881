"""Entry point for `python -m services`: errors end as one line (services/cli_errors.py)."""

from services.cli import app, cli_debug, cli_workspace_root
from services.cli_errors import run_cli

if __name__ == "__main__":
    run_cli(app, cli_debug, cli_workspace_root)
