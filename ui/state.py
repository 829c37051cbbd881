"""Per-process singletons for the dashboard: the workspace and its job manager, built once per server."""

from __future__ import annotations

import streamlit as st

from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager


@st.cache_resource(show_spinner=False)
def _open_workspace(root: str) -> Workspace:
    settings = load_settings(workspace=root)
    return Workspace.open(settings.workspace, settings)


@st.cache_resource(show_spinner=False)
def _job_manager(root: str) -> JobManager:
    return JobManager(_open_workspace(root))


def get_workspace() -> Workspace:
    """The workspace named by WORKBENCH_WORKSPACE (default ./workspace), opened once per server process."""
    return _open_workspace(str(load_settings().workspace.expanduser().resolve()))


def get_job_manager() -> JobManager:
    return _job_manager(str(load_settings().workspace.expanduser().resolve()))
