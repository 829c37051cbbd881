"""Classify: score a zip, a folder or a dataset with the trained tag models; histograms, galleries, exports."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from services.core.datasets import list_datasets
from services.core.errors import WorkbenchError
from services.core.server_paths import FOLDER_OR_ZIP
from services.io.clip_models import ClipSpec, ModelUnavailableError, resolve_weights
from services.jobs.params import int_range
from services.stages.classify.scoring import bin_edges, stack_models
from services.stages.classify.stage import (
    ClassifyParams,
    ScoreSummary,
    export_dir,
    image_scores,
    resolve_models,
    score_summary,
    scores_version,
    start_classify_dataset,
    start_classify_path,
    top_scored,
    write_outputs,
)
from services.stages.train.models import list_models
from ui.components import job_panel, launch, save_upload
from ui.errors import show_error
from ui.page_state import BIND, follow_job, followed_job
from ui.server_path import display_path, server_path_input
from ui.state import get_job_manager, get_workspace
from ui.text import code, md, plot_text

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings
GALLERY = 24

st.title("Classify")
st.caption("Every trained tag model on every image in one pass; images already embedded are not embedded again.")

trained_on = sorted({m.manifest["dataset"] for m in list_models(ws)})
if not trained_on:
    st.info("No trained models yet: train some on the Embed & Train page (or `python -m services train`).")
    st.stop()
model_set = st.selectbox("Models trained on", trained_on, bind=BIND, key="cl-models")
try:
    models = resolve_models(ws, None, model_set)
except WorkbenchError as exc:
    show_error(exc)
    st.stop()
st.caption(f"{len(models)} models: " + md(", ".join(sorted({m.tag for m in models}))))  # tags: folder names
made_with = models[0].manifest.get("embedding_spec")
if made_with:
    clip = ClipSpec(**made_with)
    try:
        resolve_weights(clip)
        st.caption(f"New images are embedded with {md(clip.label)}, the CLIP model these models were trained on.")
    except ModelUnavailableError as exc:
        st.warning(f"Images already embedded with {md(clip.label)} can be classified; new ones cannot: {md(exc)}")

# --- what to classify -----------------------------------------------------------------------------------

st.subheader("Classify")
how = st.radio(
    "Images", ["Upload a zip", "Folder or zip on the server", "A dataset"], horizontal=True, bind=BIND, key="cl-how"
)
folder: Path | None = None  # an upload, or a path through the server-path guard
picked: str | None = None  # a dataset, by name only: never read as a path
name: str | None = None
if how == "Upload a zip":
    upload = st.file_uploader(
        "Zip of images (folders and nested zips are read)", type=["zip"], key="cl-upload",
        max_upload_size=settings.max_upload_mb,
    )  # fmt: skip
    if upload is not None:
        folder = save_upload(ws, upload)
        name = f"classify-{Path(upload.name).stem}"
elif how == "Folder or zip on the server":
    folder = server_path_input(ws, "Path", FOLDER_OR_ZIP, "cl-path", placeholder="/data/new-images.zip")
else:
    picked = st.selectbox("Dataset", [d.name for d in list_datasets(ws.catalog)], bind=BIND, key="cl-dataset")
c1, c2 = st.columns(2)
bins = int(c1.number_input("Score bins over [0, 1]", *int_range(ClassifyParams, "bins"), 10, bind=BIND, key="cl-bins"))
copy = c2.checkbox("Also copy images into {type}/{tag}/{bin}/ folders", bind=BIND, key="cl-copy")
if st.button("Classify", type="primary", key="cl-run", icon=":material/label:", disabled=not (folder or picked)):
    try:
        if folder is not None:
            job_id = start_classify_path(ws, manager, folder, models, bins=bins, out=None, copy=copy, dataset=name)
        else:
            job_id = start_classify_dataset(ws, manager, picked or "", models, bins=bins, out=None, copy=copy)
    except WorkbenchError as exc:
        show_error(exc)
    else:
        launch(manager, job_id)
        follow_job("cl-job", job_id)
        st.session_state["cl-shown"] = manager.progress(job_id).params["dataset"]  # show it below
if (cl_job := followed_job(manager, "cl-job", ("classify",))) is not None:
    with st.container(border=True):
        job_panel(manager, cl_job)

# --- results --------------------------------------------------------------------------------------------

st.subheader("Results")
names = [d.name for d in list_datasets(ws.catalog)]
last = ws.catalog.scalar(
    "SELECT json_extract(params, '$.dataset') FROM jobs WHERE kind = 'classify' AND state = 'completed' "
    "ORDER BY id DESC LIMIT 1"
)
shown = st.selectbox(
    "Classified dataset", names, index=names.index(last) if last in names else 0, bind=BIND, key="cl-shown",
    help="Starts at the dataset classified last.",
)  # fmt: skip
stacked = stack_models(models)
pairs = list(zip(stacked.tags, stacked.types, strict=True))
version = scores_version(ws, shown)


@st.cache_data(max_entries=256, show_spinner=False)
def summary_of(dataset: str, sha: str, bins: int, model_threshold: float, threshold: float,
               version: tuple[int, int, str], root: str) -> ScoreSummary:  # fmt: skip
    """One SQL aggregate per model, threshold and classify progress: reruns read it from the cache."""
    return score_summary(ws, dataset, sha, bins, model_threshold, threshold)


if not any(top_scored(ws, shown, sha, 0.0, 1) for sha in stacked.shas):  # an indexed lookup per model
    st.caption(f"No scores yet for {md(shown)} with these models: classify it above (“A dataset”).")
    st.stop()
tags = sorted(set(stacked.tags))
tag = st.selectbox("Tag", tags, bind=BIND, key="cl-tag")
kinds = [k for t, k in pairs if t == tag]
kind = st.radio("Model", kinds, horizontal=True, bind=BIND, key="cl-kind")
model_index = pairs.index((tag, kind))
name, sha = stacked.names[model_index], stacked.shas[model_index]
stored_threshold = float(stacked.thresholds[model_index])
if st.session_state.get("cl-threshold-model") != name:  # a new model: start from its own threshold
    st.session_state["cl-threshold-model"] = name
    st.session_state["cl-threshold"] = float(np.floor(stored_threshold * 1000) / 1000)  # never above it
threshold = st.slider(
    "Show images scoring at least", 0.0, 1.0, step=0.001, format="%.3f", bind=BIND, key="cl-threshold",
    help=f"Starts at the model's decision threshold ({stored_threshold:.3f}, chosen on validation data when it "
    "was trained): images at or above it are the ones the model calls tagged.",
)  # fmt: skip
summary = summary_of(shown, sha, bins, stored_threshold, threshold, version, str(ws.root))
st.metric("Images scored", f"{summary.scored:,}")
labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in bin_edges(bins)]
st.plotly_chart(
    px.bar(
        pd.DataFrame({"score bin": labels, "images": summary.counts}),
        x="score bin",
        y="images",
        title=plot_text(f"{tag}: {kind}"),
    ),
    key="cl-hist",
)
best = top_scored(ws, shown, sha, threshold, 200)
st.caption(
    f"{summary.at_least:,} images at or above {threshold:.3f}; the best {min(GALLERY, len(best))} shown. "
    f"{summary.reach_model_threshold:,} of {summary.scored:,} reach the model's threshold {stored_threshold:.3f}."
)
grid = st.columns(6)
for n, image in enumerate(best[:GALLERY]):
    grid[n % 6].image(str(ws.abspath(image.path)), caption=f"{image.score:.3f} · {md(Path(image.name).name)}")
if best:
    pick = st.selectbox("Image detail", [image.name for image in best], bind=BIND, key="cl-detail")
    image = next((b for b in best if b.name == pick), best[0])
    left, right = st.columns([1, 2])
    left.image(str(ws.abspath(image.path)), caption=image.image_hash[:16])
    scores = image_scores(ws, image.image_hash, stacked.shas)
    right.dataframe(
        pd.DataFrame(
            {"model": stacked.names, "tag": stacked.tags, "score": [scores.get(s, np.nan) for s in stacked.shas]}
        ).sort_values("score", ascending=False),
        hide_index=True,
        key="cl-detail-table",
    )

if st.button("Write exports (bins.json, scores.csv, output.json)", key="cl-export", icon=":material/download:"):
    try:
        out = write_outputs(
            ws, {"dataset": shown, "models": [str(m.path) for m in models], "bins": bins, "copy": False, "out": None},
            export_dir(ws, shown),
        )  # fmt: skip
    except OSError as exc:  # a full disk or a read-only workspace: said here, never a trace
        st.error(f"Could not write the exports: {md(exc.strerror or exc)}. Free space in the workspace and try again.")
    else:
        st.session_state["cl-export-dir"] = str(out)
if st.session_state.get("cl-export-dir"):
    out = Path(st.session_state["cl-export-dir"])
    cols = st.columns(3)
    for col, file in zip(cols, ("scores.csv", "output.json", "bins.json"), strict=True):
        if (out / file).is_file():
            col.download_button(file, (out / file).read_bytes(), file_name=file, key=f"cl-dl-{file}")
    st.caption(f"Written to {code(display_path(ws, out))}")
