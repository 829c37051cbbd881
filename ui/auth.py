"""The sign-in gate in front of every page: Streamlit's OIDC login when `[auth]` is configured in
`.streamlit/secrets.toml`, otherwise the workbench's own users (hashed passwords in secrets), otherwise open
(a laptop). Failed attempts are slowed down; the password is never kept in the session."""

from __future__ import annotations

import time

import streamlit as st

from services.auth import check_credentials, sign_in_required
from services.settings import Settings


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return False


def require_sign_in(settings: Settings) -> str | None:
    """The signed-in user's name (None on an open workbench); stops the page until someone signs in."""
    if _oidc_configured():
        if not st.user.is_logged_in:
            st.title("Image workbench")
            st.button("Sign in", on_click=st.login, type="primary", icon=":material/login:")
            st.stop()
        with st.sidebar:
            st.button("Sign out", on_click=st.logout, key="sign-out")
        return str(st.user.get("email") or st.user.get("name") or "signed in")
    if not sign_in_required(settings):
        return None
    user = st.session_state.get("signed-in-user")
    if user is None:
        st.title("Image workbench")
        with st.form("sign-in"):
            name = st.text_input("User", key="sign-in-name")
            password = st.text_input("Password", type="password", key="sign-in-password")
            submitted = st.form_submit_button("Sign in", type="primary")
        if submitted:
            if check_credentials(settings, name, password):
                st.session_state["signed-in-user"] = name.strip()
                st.session_state.pop("sign-in-password", None)
                st.rerun()
            time.sleep(1.0)  # slows guessing; the same delay whatever was wrong
            st.error("Unknown user or wrong password.")
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as **{user}**")
        if st.button("Sign out", key="sign-out"):
            st.session_state.pop("signed-in-user", None)
            st.rerun()
    return str(user)


def sign_in_configured(settings: Settings) -> bool:
    """Whether this dashboard has sign-in (OIDC or its own users): a shared server, not a laptop."""
    return _oidc_configured() or sign_in_required(settings)
