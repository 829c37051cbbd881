"""Compare REAL vs GEN: planned in issue #8; the page says what it will do and runs nothing yet."""

import streamlit as st

from ui.components import planned_page

st.title("Compare REAL vs GEN")
planned_page(
    8,
    "Category distributions of two datasets side by side, with statistics and drill-down.",
    [
        "Interactive plotly charts: counts, percentages (multi-label), categories present in only one set",
        "Confidence intervals and tests per category",
        "Embedding-space comparison (FD, KID, domain-classifier AUC)",
    ],
)
