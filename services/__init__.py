"""The workbench's services layer: all logic, no UI. Pages, the CLI and the REST API call into it."""

from pathlib import Path

# The folder holding `services/`, `app.py` and `app_pages/` (a checkout, or site-packages when installed): where
# detached runs start, and a folder the server-path guard never serves.
APP_ROOT = Path(__file__).resolve().parent.parent
