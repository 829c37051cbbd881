"""Embed & Train: planned in issue #5; the page says what it will do and runs nothing yet."""

import streamlit as st

from ui.components import planned_page

st.title("Embed & Train")
planned_page(
    5,
    "open_clip embeddings cached per image, and one binary classifier per tag.",
    [
        "Tags from folder names or a zip",
        " embeddings keyed by (image hash, model, pretrained)",
        "Logistic regression and SVM per tag with a held-out report",
        "Weights only from an explicit pull or a local path, never implicitly",
    ],
)
