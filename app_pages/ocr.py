"""OCR: planned in issue #7; the page says what it will do and runs nothing yet."""

import streamlit as st

from ui.components import planned_page

st.title("OCR")
planned_page(
    7,
    "TrOCR over preprocessed crops, character mapping and code validation.",
    [
        "Configurable recipes instead of one camera's hard-coded geometry",
        '`{"code": ..., "cord": [x1, y1, x2, y2]}` with detected boxes',
        "REST and TCP socket endpoints, results logged to CSV",
    ],
)
