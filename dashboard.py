"""The dashboard's server: `app.py` served through Streamlit's supported `st.App`, with middleware in front
that a shared server needs before Streamlit's own routes see a request:

- ui/private_routes.py: 404 on `/_stcore/metrics`, and no absolute script path in the session-start message;
- ui/upload_gate.py: uploads refused from sessions with no signed-in user, over `max_upload_mb`, or past what
  one session may hold, before their bodies are read;
- ui/session_limit.py: at most `sign_in.max_anonymous_sessions_per_address` open sessions per client address
  that have not signed in (with sign-in configured).

Start it with `python -m services dashboard` (or `make run`), which also sets Streamlit's
`server.maxUploadSize` from the same setting; `streamlit run dashboard.py --server.maxUploadSize N` works too.
Plain `streamlit run app.py` still runs the app, with the upload gate's second layer only (ui/upload_gate.py)
and without the private routes hidden.
"""

import streamlit as st
from starlette.middleware import Middleware

from ui.private_routes import HideInternalRoutes, HideScriptPath
from ui.session_limit import AnonymousSessionLimit
from ui.upload_gate import UploadGate

app = st.App(
    "app.py",
    middleware=[
        Middleware(HideInternalRoutes),
        Middleware(HideScriptPath),
        Middleware(AnonymousSessionLimit),
        Middleware(UploadGate),
    ],
)
