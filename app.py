"""The dashboard's entry point: the sign-in gate, navigation over the stage pages, workspace facts."""

from __future__ import annotations

import streamlit as st

from services.core.catalog import CatalogError
from services.core.log_setup import quiet_third_party_loggers
from services.core.settings import load_settings
from ui.auth import require_sign_in, sign_in_configured
from ui.components import executor_setting
from ui.state import get_job_manager, get_workspace

st.set_page_config(page_title="Image workbench", page_icon=":material/photo_library:", layout="wide")
quiet_third_party_loggers()

PAGES = {
    "Workspace": [st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Stages": [
        st.Page("app_pages/download.py", title="Download", icon=":material/download:", url_path="download"),
        st.Page("app_pages/preprocess.py", title="Preprocess", icon=":material/tune:", url_path="preprocess"),
        st.Page(
            "app_pages/describe.py", title="Describe & Categorize", icon=":material/description:", url_path="describe"
        ),
        st.Page("app_pages/embed_train.py", title="Embed & Train", icon=":material/hub:", url_path="embed"),
        st.Page("app_pages/classify.py", title="Classify", icon=":material/label:", url_path="classify"),
        st.Page("app_pages/ocr.py", title="OCR", icon=":material/document_scanner:", url_path="ocr"),
        st.Page("app_pages/compare.py", title="Compare REAL vs GEN", icon=":material/compare:", url_path="compare"),
    ],
    "Browse": [st.Page("app_pages/explore.py", title="Explore", icon=":material/image_search:", url_path="explore")],
}

settings = load_settings()
require_sign_in(settings)  # every page is behind this when sign-in is configured
navigation = st.navigation(PAGES)

try:
    ws = get_workspace()
except CatalogError as exc:  # a missing, emptied or damaged catalog over existing content: say so, change nothing
    st.error(str(exc))
    st.stop()
with st.sidebar:
    # a shared server names its workspace, never where it lives on the server
    st.caption(f"Workspace `{ws.root.name if sign_in_configured(settings) else ws.root}`")
    active = get_job_manager().list(limit=20, active_only=True)
    st.caption(f"{len(active)} job{'' if len(active) == 1 else 's'} running" if active else "No job running")
executor_setting()

navigation.run()
