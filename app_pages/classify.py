"""Classify: planned in issue #6; the page says what it will do and runs nothing yet."""

import streamlit as st

from ui.components import planned_page

st.title("Classify")
planned_page(
    6,
    "Score new folders or uploaded zips with every tag classifier at once.",
    [
        "Scores per image per tag, browsable by tag and score",
        "Zip paths and sizes checked before extraction",
        "The same from the CLI and a small authenticated REST API",
    ],
)
