"""The one widget for a path on the server: a text input whose value goes through services.core.server_paths.

Every page input that names a file or folder on the server uses it, so what a user may read is decided in one
place (the `server_paths` setting, sign-in, and the never-readable list) and refusals read the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from services.core.locators import import_roots, shown_locator
from services.core.server_paths import CHECKPOINT, PathKind, ServerPathError, ServerPaths
from services.core.workspace import Workspace
from ui.auth import sign_in_configured
from ui.page_state import BIND
from ui.text import md


def server_paths(ws: Workspace) -> ServerPaths:
    """This dashboard's policy (shared server or laptop) for the workspace."""
    return ServerPaths.for_workspace(ws.root, ws.settings, sign_in_configured(ws.settings))


def server_path_input(
    ws: Workspace, label: str, kind: PathKind, key: str, placeholder: str = "", show_off: bool = True
) -> Path | None:
    """A checked path of `kind`, or None (nothing typed, or refused: the reason is shown with what to do)."""
    policy = server_paths(ws)
    if not policy.enabled:
        if show_off:
            st.info(
                "Paths on the server are off on this dashboard: upload the file instead, or ask an administrator "
                "to list folders in the `server_paths` setting."
            )
        return None
    text = st.text_input(label, bind=BIND, key=key, placeholder=placeholder)
    if policy.roots:  # a team server: say where (a laptop reads anywhere but the never-readable list)
        st.caption(f"Readable here: {policy.describe()}.")  # the administrator's folders
    if not text.strip():
        return None
    try:
        return policy.check(text, kind)
    except ServerPathError as exc:  # it quotes what was typed
        st.error(f"{label}: {md(exc)}.")
        return None


def checkpoint_input(ws: Workspace, label: str, key: str, container: DeltaGenerator | None = None) -> str | None:
    """A CLIP checkpoint file: the administrator's `clip.checkpoint` as is, anything else through the guard.
    The configured file is shown as `display_path` (on a team server its name, or its place in the workspace,
    never where the server keeps it) and that text stands for it."""
    configured = ws.settings.clip.checkpoint or ""
    shown = display_path(ws, configured) if configured else ""
    text_input = container.text_input if container is not None else st.text_input
    text = text_input(label, value=shown, bind=BIND, key=key)
    if not text.strip():
        return None
    if configured and text in (shown, configured):
        return configured
    try:
        return str(server_paths(ws).check(text, CHECKPOINT))
    except ServerPathError as exc:  # it quotes what was typed
        st.error(f"{label}: {md(exc)}.")
        return None


def display_path(ws: Workspace, path: Path | str) -> str:
    """A path as pages show it: in full on a laptop; on a team server relative to the workspace (`exports/x.csv`)
    or just the file name, never where the server keeps things."""
    path = Path(path)
    if not sign_in_configured(ws.settings):
        return str(path)
    try:
        return str(path.resolve().relative_to(ws.root))
    except ValueError:
        return path.name


def display_locators(ws: Workspace, locators: list[str | None]) -> list[str | None]:
    """Item locators (URLs, s3:// keys, server paths of files and zip members) as pages show them: in full on
    a laptop; on a team server relative to the folder or zip they were imported from (services.core.locators)."""
    if not sign_in_configured(ws.settings):
        return locators
    roots = import_roots(ws.catalog)
    return [shown_locator(loc, roots) if loc else loc for loc in locators]
