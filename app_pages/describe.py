"""Describe & Categorize: Gemini descriptions and categories, CLIP zero-shot beside them, results and exports."""

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from services.core.datasets import DatasetError, entries_page, image_count, list_datasets
from services.core.errors import WorkbenchError
from services.io.gemini_client import GeminiError
from services.stages.describe.categories import (
    MAX_CATEGORIES,
    MAX_CATEGORY_CHARS,
    MAX_CATEGORY_CSV_BYTES,
    extract_categories,
    list_lists,
    load_list,
    parse_category_csv,
    save_list,
)
from services.stages.describe.categorize_clip import CLIP_STAGE, start_zero_shot, zero_shot_settings_hash
from services.stages.describe.csv_categorize import KIND as CSV_KIND
from services.stages.describe.csv_categorize import MAX_CSV_BYTES, categorized_csv, start_csv_categorize_upload
from services.stages.describe.results import (
    COUNT_CAP,
    EXPORT_FORMATS,
    STATUSES,
    ResultKeys,
    agreement,
    answered_by_both,
    export,
    result_counts,
    results_view,
)
from services.stages.describe.stage import estimate_cost, start_describe, try_one
from services.stages.describe.zero_shot_try import try_zero_shot
from ui.clip_picker import clip_model_picker
from ui.components import job_panel, launch
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
from ui.server_path import display_path
from ui.state import get_job_manager, get_workspace
from ui.text import code, md, plot_text

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings
TABLE_LIMIT = 1000
MODES = {
    "Describe (Gemini)": "describe",
    "Categorize (Gemini, from descriptions)": "categorize",
    "Describe + categorize in one call (Gemini)": "both",
    "Categorize offline (CLIP zero-shot)": "clip",
}

st.title("Describe & Categorize")
key_state = "set" if settings.gemini_api_key is not None else "missing"
st.caption(
    f"Model `{settings.caption_model}` · API key {key_state} · {settings.gemini.requests_per_minute:g} requests/min · "
    f"images sent at most {settings.processing.image_max_size}px. Done images are never asked again."
)
if key_state == "missing":
    st.warning(
        "No Gemini API key. Set `WORKBENCH_GEMINI_API_KEY` (or `GEMINI_API_KEY`) in the server's environment, or "
        "`gemini_api_key` in `.streamlit/secrets.toml`. CLIP zero-shot works without one."
    )

names = [d.name for d in list_datasets(ws.catalog)]
if names:
    dataset = st.selectbox("Dataset", names, bind=BIND, key="dc-dataset")
else:
    st.info(
        "No datasets yet: download or import some first. A CSV of descriptions can be categorised below without "
        "any images."
    )

# --- category lists ---------------------------------------------------------------------------------


def save_categories(name: str, read: Callable[[], list[str]], source: str) -> None:
    """Parse, store as a new version when changed, select it; errors name the row or column."""
    try:
        saved = save_list(ws, name, read(), source)
    except WorkbenchError as exc:
        show_error(exc)
        return
    st.session_state["dc-list"] = saved.label
    st.success(f"Saved {md(saved.label)}: {len(saved.categories)} categories: {md(', '.join(saved.categories[:20]))}")


with st.expander("Category lists", expanded=not list_lists(ws)):
    upload_tab, edit_tab, extract_tab = st.tabs(["Upload CSV", "Edit", "Extract from a categorised CSV"])
    with upload_tab:
        upload = st.file_uploader(
            "CSV with a `Category` column", type=["csv"], key="dc-cat-upload",
            max_upload_size=max(1, MAX_CATEGORY_CSV_BYTES // 2**20),
            help=f"At most {MAX_CATEGORIES} categories of up to {MAX_CATEGORY_CHARS} characters, in a file of at most "
            f"{MAX_CATEGORY_CSV_BYTES // 2**20} MB.",
        )  # fmt: skip
        upload_name = st.text_input("Save as list", value="categories", bind=BIND, key="dc-cat-upload-name")
        if st.button("Save list", key="dc-cat-upload-save") and upload is not None:
            uploaded = upload
            save_categories(
                upload_name, lambda: parse_category_csv(uploaded.getvalue(), uploaded.name), f"upload:{uploaded.name}"
            )
    with edit_tab:
        lists = list_lists(ws)
        base = st.selectbox("Start from", ["(empty)"] + [x.name for x in lists], bind=BIND, key="dc-cat-edit-base")
        start = [] if base == "(empty)" else list(load_list(ws, base).categories)
        edited = st.data_editor(
            pd.DataFrame({"Category": start or [""]}), num_rows="dynamic", key=f"dc-cat-editor-{base}"
        )
        edit_name = st.text_input(
            "Save as list", value="" if base == "(empty)" else base, bind=BIND, key="dc-cat-edit-name"
        )
        if st.button("Save as a new version", key="dc-cat-edit-save", disabled=not edit_name):
            save_categories(edit_name, lambda: [str(c) for c in edited["Category"].dropna()], "edit")
    with extract_tab:
        source = st.file_uploader("`image_name,description,categories` CSV", type=["csv"], key="dc-cat-extract")
        extract_name = st.text_input("Save as list", value="extracted", bind=BIND, key="dc-cat-extract-name")
        if st.button("Extract and save", key="dc-cat-extract-save") and source is not None:
            extract_from = source
            save_categories(
                extract_name,
                lambda: extract_categories(extract_from.getvalue(), extract_from.name),
                f"extract:{extract_from.name}",
            )

all_versions = list_lists(ws, all_versions=True)
labels = [x.label for x in all_versions]
chosen_label = st.selectbox("Category list", ["(none)"] + labels, index=1 if labels else 0, bind=BIND, key="dc-list")
category_list = next((x for x in all_versions if x.label == chosen_label), None)
if category_list is not None:
    st.caption(f"{len(category_list.categories)} categories: " + md(", ".join(category_list.categories)))

# --- a descriptions CSV, without images ---------------------------------------------------------------

with st.expander("Categorize a CSV of descriptions (no images needed)", expanded=not names):
    st.caption(
        "An `image_name,description` CSV (the seeds' `*_descriptions.csv` or a `describe-export`) categorised by "
        "Gemini from the text alone into the category list above, written as `image_name,description,categories`, "
        "which Compare imports. The same text is asked once; answers are cached."
    )
    descriptions = st.file_uploader(
        "Descriptions CSV", type=["csv"], key="dc-csv-upload", max_upload_size=MAX_CSV_BYTES // 2**20
    )
    csv_blocked = descriptions is None or category_list is None or key_state == "missing"
    csv_help = (
        "Choose a category list above first." if category_list is None
        else "Needs a Gemini API key." if key_state == "missing" else None
    )  # fmt: skip
    clicked = st.button("Categorize the CSV", key="dc-csv-run", disabled=csv_blocked, help=csv_help)
    if clicked and descriptions is not None and category_list is not None:
        try:
            csv_job = start_csv_categorize_upload(
                ws, manager, descriptions.getvalue(), descriptions.name, category_list
            )
        except WorkbenchError as exc:
            show_error(exc)
        else:
            launch(manager, csv_job)
            follow_job("dc-csv-job", csv_job)
    if (csv_job_id := followed_job(manager, "dc-csv-job", (CSV_KIND,))) is not None:
        job_panel(manager, csv_job_id)
        if (written := categorized_csv(manager, csv_job_id)) is not None:
            st.download_button(
                f"Download {written.name}", written.read_bytes(), file_name=written.name, mime="text/csv",
                key="dc-csv-download", icon=":material/download:",
            )  # fmt: skip
            st.caption(f"Also kept on the server as {code(display_path(ws, written))}.")

if not names:
    st.stop()

# --- CLIP model ----------------------------------------------------------------------------------------

clip_mode_chosen = MODES.get(st.session_state.get("dc-mode", "")) == "clip"
with st.expander("CLIP model for zero-shot categories", expanded=clip_mode_chosen):
    picked = clip_model_picker(ws, "dc-clip")
spec, clip_error = picked.spec, picked.error
clip_key = (CLIP_STAGE, zero_shot_settings_hash(spec, category_list)) if category_list and not clip_error else None

n_images = image_count(ws, dataset)
if not n_images:
    st.warning(f"Dataset {md(repr(dataset))} has no stored images yet.")
    st.stop()

# --- try one image -------------------------------------------------------------------------------------

with st.expander("Try one image"):
    index = st.number_input("Image number", 1, n_images, 1, bind=BIND, key="dc-try-index")
    picked_entry = entries_page(ws, dataset, int(index) - 1, 1) or entries_page(ws, dataset, 0, 1)
    image_hash, rel, _ = picked_entry[0]
    left, right = st.columns([1, 2])
    left.image(str(ws.abspath(rel)), caption=image_hash[:12])
    try_mode = "both" if category_list is not None else "describe"
    ask_gemini, ask_clip = right.columns(2)
    if ask_gemini.button("Ask Gemini about this image", key="dc-try", disabled=key_state == "missing"):
        try:
            right.json(try_one(ws, image_hash, rel, try_mode, category_list))
        except GeminiError as exc:
            right.error(f"{exc.error_class}: {md(exc.message)}")
    clip_help = "Choose a category list and a usable CLIP model above first." if not clip_key else None
    if ask_clip.button("Score with CLIP zero-shot", key="dc-try-clip", disabled=not clip_key, help=clip_help):
        try:
            tried, where = try_zero_shot(ws, ws.abspath(rel).read_bytes(), spec, category_list)  # type: ignore[arg-type]
        except (WorkbenchError, OSError, ValueError) as exc:
            right.error(f"Could not score image {image_hash[:12]} with CLIP: {md(exc)}", icon=":material/error:")
        else:
            ranked = pd.DataFrame(tried.scores.items(), columns=["category", "probability"])
            ranked = ranked.sort_values("probability", ascending=False)
            right.markdown(f"**CLIP zero-shot:** {md(', '.join(tried.categories))}")
            right.plotly_chart(px.bar(ranked.head(20), x="category", y="probability"), key="dc-try-scores")
            place = "the workspace's worker, on its loaded model" if where == "worker" else "this dashboard's process"
            right.caption(f"{md(tried.model)} · scored in {tried.seconds:.2f} s by {place}")

# --- run -----------------------------------------------------------------------------------------------

st.subheader("Run")
mode_label = st.radio("What to run", list(MODES), bind=BIND, key="dc-mode")
mode = MODES[mode_label]
needs_list = mode != "describe"
if needs_list and category_list is None:
    st.info("Choose or create a category list above first.")
elif mode == "clip":
    if clip_error:
        st.error(md(clip_error))
    else:
        st.caption(f"{md(spec.label)} on {settings.clip.device}; runs on this server, no API calls.")
else:
    try:
        st.info(estimate_cost(ws, dataset, mode, category_list).describe(), icon=":material/payments:")
    except WorkbenchError as exc:
        show_error(exc)
blocked = (needs_list and category_list is None) or (mode == "clip" and bool(clip_error))
blocked = blocked or (mode != "clip" and key_state == "missing")
if st.button(f"Start: {mode_label}", type="primary", key="dc-run", disabled=blocked, icon=":material/play_arrow:"):
    try:
        if mode == "clip":
            job_id = start_zero_shot(ws, manager, dataset, category_list, spec)  # type: ignore[arg-type]
        else:
            job_id = start_describe(ws, manager, dataset, mode, category_list)
    except WorkbenchError as exc:
        show_error(exc)
    else:
        launch(manager, job_id)
        follow_job("dc-job", job_id)
if (dc_job := followed_job(manager, "dc-job", ("describe", "categorize_clip"))) is not None:
    with st.container(border=True):
        job_panel(manager, dc_job)

# --- results -------------------------------------------------------------------------------------------

st.subheader("Results")
keys = ResultKeys.current(ws, category_list, clip_key)
f1, f2, f3 = st.columns(3)
category_filter = f1.selectbox(  # one filter per list: a list's categories are its own options (and URL value)
    "Category", ["(any)"] + (list(category_list.allowed) if category_list else []), bind=BIND,
    key=f"dc-filter-cat-{category_list.name}-v{category_list.version}" if category_list else "dc-filter-cat",
)  # fmt: skip
text_filter = f2.text_input("Description contains", bind=BIND, key="dc-filter-text")
status_filter = f3.selectbox("Show", list(STATUSES), bind=BIND, key="dc-filter-status")
shown, matching = results_view(
    ws, dataset, keys, None if category_filter == "(any)" else category_filter, text_filter, status_filter, TABLE_LIMIT
)
tally = result_counts(ws, dataset, keys)
counts = st.columns(5)
counts[0].metric("Images", f"{tally.images:,}")
counts[1].metric("Described", f"{tally.described:,}")
counts[2].metric("Categorised (Gemini)", f"{tally.categorized:,}")
counts[3].metric(
    "Categorised (CLIP)",
    f"{tally.clip:,}",
    help=None if clip_key else "CLIP's categories are shown for the category list and CLIP model chosen above.",
)
counts[4].metric("Failed", f"{tally.failed:,}")
table = pd.DataFrame(
    [
        {
            "image": r.name,
            "summary": r.summary,
            "gemini": ", ".join(r.categories or []),
            "clip": ", ".join(r.clip_categories or []),
            "agree": r.agrees,
            "error": r.describe_error or r.categorize_error or "",
        }
        for r in shown
    ],
    columns=["image", "summary", "gemini", "clip", "agree", "error"],
)
st.dataframe(table, hide_index=True, key="dc-table")
if matching > len(shown):
    of = f"{COUNT_CAP:,}+" if matching > COUNT_CAP else f"{matching:,}"
    st.caption(f"Showing the first {len(shown):,} of {of}; narrow the filters or export.")

if shown:
    st.markdown("**Image detail**")
    pick = st.selectbox("Image", [r.name for r in shown], bind=BIND, key="dc-detail")
    r = next(x for x in shown if x.name == pick)
    left, right = st.columns([1, 2])
    left.image(str(ws.abspath(r.path)), caption=r.image_hash[:12])
    gemini_cats, clip_cats = ", ".join(r.categories or ["-"]), ", ".join(r.clip_categories or ["-"])
    left.markdown(f"**Gemini:** {md(gemini_cats)}  \n**CLIP:** {md(clip_cats)}")  # model answers: text
    if r.rejected:
        left.caption("Rejected (not in the list): " + md(", ".join(r.rejected)))
    if r.description:
        right.json(r.description)
    elif r.describe_error:
        right.error(md(r.describe_error))
    if r.clip_scores:
        scores = pd.DataFrame(
            {"category": [plot_text(c) for c in r.clip_scores], "probability": list(r.clip_scores.values())}
        )
        right.plotly_chart(px.bar(scores, x="category", y="probability", title="CLIP zero-shot"), key="dc-scores")

if category_list is not None and clip_key is not None:
    rows, overall = agreement(answered_by_both(ws, dataset, keys), category_list)
    if rows:
        st.markdown("**Gemini vs CLIP zero-shot**")
        if overall is not None:
            st.metric("Images where CLIP's top category is one of Gemini's", f"{overall:.0%}")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "category": a.category,
                        "gemini": a.gemini,
                        "clip top": a.clip,
                        "both": a.both,
                        "agreement": a.agreement,
                    }
                    for a in rows
                ]
            ),  # fmt: skip
            hide_index=True,
            key="dc-agreement",
            column_config={"agreement": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0)},
        )

st.markdown("**Export**")
fmt = st.selectbox(
    "Format", [f for f in EXPORT_FORMATS if f != "categories-csv" or category_list], bind=BIND, key="dc-fmt"
)
if st.button("Write export", key="dc-export", icon=":material/download:"):
    try:
        path, n = export(ws, dataset, keys, fmt)
        st.session_state["dc-export-file"] = (str(path), n, dataset, fmt)
    except (ValueError, DatasetError) as exc:
        st.error(md(exc))
    except OSError as exc:  # a full disk or a read-only workspace: said here, never a trace
        st.error(f"Could not write the export: {md(exc.strerror or exc)}. Free space in the workspace and try again.")
written = st.session_state.get("dc-export-file")
if written and tuple(written[2:]) == (dataset, fmt):  # the file of what is picked now, not of an earlier pick
    path_str, n = written[0], written[1]
    path = Path(path_str)
    if path.is_file():
        st.download_button(
            f"{md(path.name)} ({n:,} images)", data=path.read_bytes(), file_name=path.name, key="dc-export-download"
        )
        st.caption(f"Written to {code(display_path(ws, path))}")
