"""The pages' one way to show an error of ours: `st.error` with its message (which names the item, the cause and
the fix), escaped, never a traceback. Pages catch `WorkbenchError` around a call into services and hand it here."""

from __future__ import annotations

import streamlit as st

from services.core.errors import WorkbenchError
from ui.text import md


def show_error(exc: WorkbenchError, item: str | None = None) -> None:
    """`st.error` with the error's one line, after the item it is about when there is one."""
    message = md(exc.user_message())
    st.error(f"{md(item)}: {message}" if item else message)
