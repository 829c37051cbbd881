"""Preprocess: planned in issue #3; the page says what it will do and runs nothing yet."""

import streamlit as st

from ui.components import planned_page

st.title("Preprocess")
planned_page(
    3,
    "OCR-ready copies of a dataset's images from configurable recipes, with a before/after view.",
    [
        "Recipes: resize and pad to N x N (seed 000's 128 x 128), denoise, contrast, rotate, crop",
        "Runs as a resumable job over a dataset",
        " results keyed by image hash and recipe settings",
        "Before/after gallery and the same recipe from `python -m services preprocess`",
    ],
)
