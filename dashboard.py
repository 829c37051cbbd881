"""The dashboard's server: `app.py` served through Streamlit's `st.App` with the upload gate in front
(ui/upload_gate.py), which refuses uploads from sessions with no signed-in user, and uploads over
`max_upload_mb`, before their bodies are read.

Start it with `python -m services dashboard` (or `make run`), which also sets Streamlit's
`server.maxUploadSize` from the same setting; `streamlit run dashboard.py --server.maxUploadSize N` works too.
Plain `streamlit run app.py` still runs the app, with the gate's second layer only (see ui/upload_gate.py).
"""

import streamlit as st
from starlette.middleware import Middleware

from ui.upload_gate import UploadGate

app = st.App("app.py", middleware=[Middleware(UploadGate)])
