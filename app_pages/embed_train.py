"""Embed & Train: import a tagged folder or zip, embed it with open_clip, train per-tag classifiers."""

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from services.clip_models import ClipSpec, ModelUnavailableError, pull_weights, resolve_weights
from services.datasets import DatasetError, list_datasets
from services.embed import start_embed
from services.embeddings import EmbeddingStore, embedding_key
from services.folder_import import start_folder_import
from services.server_paths import FOLDER_OR_ZIP
from services.tag_models import MODEL_TYPES, list_models
from services.tag_training import start_training, trainable_tags
from ui.components import job_panel, launch, save_upload
from ui.server_path import checkpoint_input, display_path, server_path_input
from ui.state import get_job_manager, get_workspace

ws = get_workspace()
manager = get_job_manager()
settings = ws.settings

st.title("Embed & Train")
st.caption("CLIP embeddings stored once per image and model; one logistic regression and one calibrated linear "
           "SVM per tag, trained against the `other-training` negatives.")  # fmt: skip


def start(label: str, key: str, create: Callable[[], int]) -> None:
    """Create a job (errors shown, nothing queued), run it detached and follow it below."""
    try:
        job_id = create()
    except (DatasetError, ModelUnavailableError) as exc:
        st.error(str(exc))
        return
    launch(manager, job_id)
    st.session_state[key] = job_id
    st.toast(f"{label}: job {job_id} started")


def follow(key: str) -> None:
    if st.session_state.get(key):
        with st.container(border=True):
            job_panel(manager, int(st.session_state[key]))


# --- import ---------------------------------------------------------------------------------------------

st.subheader("1. Import a tagged dataset")
st.caption("Folder name = tag. Zips (and zips inside them, two levels deep) are read in place; members with "
           "`..`, symlinks, encryption or absurd compression are refused with the reason.")  # fmt: skip
how = st.radio("From", ["Folder or zip on the server", "Upload a zip"], horizontal=True, key="et-how")
source: Path | None = None
default_name = "the folder or zip name"
if how == "Upload a zip":
    upload = st.file_uploader(
        "Zip of tag folders", type=["zip"], key="et-upload", max_upload_size=settings.max_upload_mb
    )
    if upload is not None:
        source = save_upload(ws, upload)
        default_name = Path(upload.name).stem
else:
    source = server_path_input(ws, "Folder or .zip path", FOLDER_OR_ZIP, "et-path", placeholder="/data/tagged-images")
name = st.text_input(
    "Dataset name",
    key="et-name",
    placeholder=f"default: {source.stem if source and how != 'Upload a zip' else default_name}",
)
if st.button("Import", key="et-import", icon=":material/drive_folder_upload:", disabled=source is None):
    chosen_name = name or (default_name if how == "Upload a zip" else None)
    start("Import", "et-import-job", lambda: start_folder_import(ws, manager, source, chosen_name))  # type: ignore[arg-type]
follow("et-import-job")

names = [d.name for d in list_datasets(ws.catalog)]
if not names:
    st.info("No datasets yet.")
    st.stop()
dataset = st.selectbox("Dataset", names, key="et-dataset")

# --- model ----------------------------------------------------------------------------------------------

st.subheader("2. Embed")
c1, c2, c3 = st.columns([2, 2, 3])
model = c1.text_input("open_clip model", value=settings.clip.model, key="et-model")
pretrained = c2.text_input("Pretrained tag", value=settings.clip.pretrained or "", key="et-pretrained")
checkpoint = checkpoint_input(ws, "Or a local checkpoint file", "et-checkpoint", c3)
spec = ClipSpec.from_settings(settings, model, pretrained or None, checkpoint or None)
try:
    weights, _ = resolve_weights(spec)
    st.caption(f"Weights: `{weights}`")
    weights_ok = True
except ModelUnavailableError as exc:
    st.warning(str(exc))
    weights_ok = False
    if not checkpoint and st.button(f"Pull {spec.model}/{spec.pretrained}", key="et-pull", icon=":material/download:"):
        with st.status(
            f"Downloading {spec.model}/{spec.pretrained} (timeout {settings.clip.pull_timeout_seconds:.0f}s)"
        ):
            try:
                st.write(f"Saved to `{pull_weights(spec, settings.clip.pull_timeout_seconds)}`")
                st.rerun()
            except ModelUnavailableError as pull_error:
                st.error(str(pull_error))
key = embedding_key(spec)
b1, b2 = st.columns(2)
batch_size = b1.number_input("Batch size", 1, 1024, settings.clip.batch_size, key="et-batch")
loader_workers = b2.number_input(
    "Decoding processes (empty: chosen for the device)", 0, 32, settings.clip.loader_workers, key="et-workers"
)
workers = None if loader_workers is None else int(loader_workers)
if st.button("Embed", type="primary", key="et-embed", icon=":material/memory:", disabled=not weights_ok):
    start("Embed", "et-embed-job", lambda: start_embed(ws, manager, dataset, spec, int(batch_size), workers))
follow("et-embed-job")
st.caption(f"{len(EmbeddingStore(ws, key).stored_hashes()):,} vectors stored for `{key}`.")

# --- train ----------------------------------------------------------------------------------------------

st.subheader("3. Train")
try:
    available = trainable_tags(ws, dataset)
except DatasetError as exc:
    st.info(str(exc))
    available = {}
if available:
    tags = st.multiselect(
        "Tags", list(available), default=list(available), key="et-tags",
        format_func=lambda t: f"{t} ({available[t]:,})",
    )  # fmt: skip
    t1, t2, t3, t4 = st.columns(4)
    types = t1.multiselect("Models", list(MODEL_TYPES), default=list(MODEL_TYPES), key="et-types",
                           format_func=lambda t: MODEL_TYPES[t])  # fmt: skip
    test_size = t2.slider("Test share", 0.05, 0.5, 0.1, 0.05, key="et-test")
    seed = t3.number_input("Seed", 0, 2**31 - 1, 0, key="et-seed")
    cv = t4.number_input("CV folds (0: none)", 0, 10, 0, key="et-cv")
    if st.button("Train", type="primary", key="et-train", icon=":material/model_training:", disabled=not tags):
        options = (tags, types, test_size, int(seed), int(cv))
        start("Train", "et-train-job", lambda: start_training(ws, manager, dataset, key, *options))
    follow("et-train-job")

# --- results --------------------------------------------------------------------------------------------

models = list_models(ws, dataset, key)
st.subheader("Models")
if not models:
    st.caption(f"No models for {dataset} on `{key}` yet.")
else:
    rows = []
    for m in models:
        metrics = m.manifest["metrics"]
        rows.append({
            "tag": m.tag, "model": m.model_type, "AP": metrics["average_precision"], "ROC AUC": metrics["roc_auc"],
            "F1": metrics["f1"], "precision": metrics["precision"], "recall": metrics["recall"],
            "tp": metrics["tp"], "fp": metrics["fp"], "tn": metrics["tn"], "fn": metrics["fn"],
            "CV AP": metrics.get("cv_ap_mean"), "test tagged": metrics["n_test_positive"],
            "test negative": metrics["n_test_negative"],
        })  # fmt: skip
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="et-metrics")
    tag = st.selectbox("PR curve for", sorted({m.tag for m in models}), key="et-pr-tag")
    figure = go.Figure()
    for m in models:
        if m.tag == tag:
            curve = m.manifest["metrics"]["pr_curve"]
            figure.add_scatter(x=curve["recall"], y=curve["precision"], mode="lines", name=m.model_type)
    figure.update_layout(xaxis_title="recall", yaxis_title="precision", title=f"Precision-recall: {tag}",
                         xaxis_range=[0, 1.02], yaxis_range=[0, 1.02])  # fmt: skip
    st.plotly_chart(figure, key="et-pr")
with st.expander("Every model in the workspace"):
    everything = list_models(ws)
    st.dataframe(
        pd.DataFrame([{"model": m.name, "dataset": m.manifest["dataset"], "embedding": m.manifest["embedding_key"],
                       "AP": m.manifest["metrics"]["average_precision"], "file": display_path(ws, m.path)}
                      for m in everything]),
        hide_index=True, key="et-all-models",
    )  # fmt: skip
