"""The sign-in gate in front of every page: Streamlit's OIDC login when `[auth]` is configured in
`.streamlit/secrets.toml`, otherwise the workbench's own users (hashed passwords in secrets), otherwise open
(a laptop). Failed attempts are throttled per user name and per client address across every session and
restart (services.core.sign_in_throttle); the password is never kept in the session. The gate also tells the
upload gate (ui/upload_gate.py) whether this session may upload."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from services.core.auth import sign_in_required
from services.core.settings import Settings
from services.core.sign_in_throttle import SignInThrottle, attempt_sign_in, client_address, throttle_folder
from ui.text import md
from ui.upload_gate import mark_session


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return False


@st.cache_resource(show_spinner=False)
def _throttle(folder: str, limits_json: str) -> SignInThrottle:
    """One throttle per workspace and limits per server process (its counters live on disk, shared)."""
    from services.core.settings import SignInSettings

    return SignInThrottle(Path(folder), SignInSettings.model_validate_json(limits_json))


def _client_address(settings: Settings) -> str:
    """The websocket's peer (None on loopback) and X-Forwarded-For, as Streamlit saw them; anything that is not
    text (AppTest's stand-in runtime) counts as loopback."""
    peer = st.context.ip_address
    forwarded = [h for h in st.context.headers.get_all("X-Forwarded-For") if isinstance(h, str)]
    return client_address(peer if isinstance(peer, str) else None, forwarded, settings.sign_in.trusted_proxy_hops)


def _wait_text(seconds: float) -> str:
    minutes = int(seconds // 60) + (1 if seconds % 60 else 0)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def require_sign_in(settings: Settings) -> str | None:
    """The signed-in user's name (None on an open workbench); stops the page until someone signs in."""
    if _oidc_configured():
        mark_session(bool(st.user.is_logged_in), settings.max_upload_mb)
        if not st.user.is_logged_in:
            st.title("Image workbench")
            st.button("Sign in", on_click=st.login, type="primary", icon=":material/login:")
            st.stop()
        with st.sidebar:
            st.button("Sign out", on_click=st.logout, key="sign-out")
        return str(st.user.get("email") or st.user.get("name") or "signed in")
    if not sign_in_required(settings):
        mark_session(True, settings.max_upload_mb)  # an open workbench: anyone may upload
        return None
    user = st.session_state.get("signed-in-user")
    mark_session(user is not None, settings.max_upload_mb)
    if user is None:
        st.title("Image workbench")
        with st.form("sign-in"):
            name = st.text_input("User", key="sign-in-name", max_chars=200)
            password = st.text_input("Password", type="password", key="sign-in-password", max_chars=1024)
            submitted = st.form_submit_button("Sign in", type="primary")
        if submitted:
            throttle = _throttle(str(throttle_folder(settings.workspace)), settings.sign_in.model_dump_json())
            outcome = attempt_sign_in(settings, throttle, name[:200], password[:1024], _client_address(settings))
            if outcome.user is not None:
                st.session_state["signed-in-user"] = outcome.user
                st.session_state.pop("sign-in-password", None)
                st.rerun()
            # the same answers whether the user exists or not
            if outcome.retry_after > 0:
                st.error(f"Too many failed sign-ins. Try again in {_wait_text(outcome.retry_after)}.")
            else:
                st.error("Unknown user or wrong password.")
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as **{md(user)}**")  # an OIDC name is the provider's text
        if st.button("Sign out", key="sign-out"):
            st.session_state.pop("signed-in-user", None)
            mark_session(False, settings.max_upload_mb)
            st.rerun()
    return str(user)


def sign_in_configured(settings: Settings) -> bool:
    """Whether this dashboard has sign-in (OIDC or its own users): a shared server, not a laptop."""
    return _oidc_configured() or sign_in_required(settings)


def current_user() -> str:
    """Who is using this session, for audit trails: the signed-in name, else "dashboard" on an open workbench."""
    if _oidc_configured() and st.user.is_logged_in:
        return str(st.user.get("email") or st.user.get("name") or "signed in")
    user = st.session_state.get("signed-in-user")
    return str(user) if user else "dashboard"
