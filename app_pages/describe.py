"""Describe & Categorize: planned in issue #4; the page says what it will do and runs nothing yet."""

import streamlit as st

from ui.components import planned_page

st.title("Describe & Categorize")
planned_page(
    4,
    "Structured Gemini descriptions of each image, and one or two categories from your fixed list.",
    [
        "Schema-constrained JSON (summary, objects, scene, style, camera, text, quality) through the google-genai SDK",
        "Request cache, rate budget and a cost estimate before a run",
        " failures retried, never stored as text",
        "Categories validated against the list, `unknown` when nothing fits",
    ],
)
