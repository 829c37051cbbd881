"""Per-process singletons for the dashboard: the workspace and its job manager, built once per server."""

from __future__ import annotations

import streamlit as st

from services.jobs import JobManager
from services.settings import load_settings
from services.workspace import Workspace


@st.cache_resource(show_spinner=False)
def get_workspace() -> Workspace:
    """The workspace named by WORKBENCH_WORKSPACE (default ./workspace), opened once per server process."""
    settings = load_settings()
    return Workspace.open(settings.workspace, settings)


@st.cache_resource(show_spinner=False)
def get_job_manager() -> JobManager:
    return JobManager(get_workspace())
